"""Synthetic training data in Vision-SR1-47K's schema, for the CPU demo, tests and benchmarks.

Every image is drawn with PIL (shapes, colours, counts, bar charts; 56-112 px) and every answer is determined
by the image: an option letter, a count, a bar value, a colour or shape name, yes/no. About a third of the
answers arrive wrapped the way real data wraps them (`\\boxed{3}`, `<answer>red</answer>`, "Answer: B", code
fences, quotes) so that data prep's normalisation is exercised. Output is a pure function of (n, seed).

`bad_rows=True` also plants rows that data prep must drop, one kind per drop reason; `PLANTED_DROPS` says how
many of each, so a test can assert exact drop counts.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from PIL import Image as PILImage
from PIL import ImageDraw

if TYPE_CHECKING:
    import datasets

# `datasets` is imported inside the functions that need it: the CLI imports this module for FORMATS and
# DEFAULT_ROWS on every `vigos` start, and importing datasets costs most of a second.

Format = Literal["disk", "parquet", "jsonl"]
FORMATS: tuple[str, ...] = get_args(Format)
SPLIT = "train"
"""The one split the synthetic dataset has (file names of the parquet and JSONL layouts carry it)."""
DEFAULT_ROWS = 64

PLANTED_DROPS: dict[str, int] = {
    "no_image": 1,
    "unreadable_image": 2,  # garbage bytes, and a PNG cut off halfway (passes Image.open, fails load)
    "tiny_image": 1,
    "empty_problem": 1,
    "empty_answer": 2,  # "<answer> </answer>" and "\boxed{}": empty only after normalisation
    "duplicate": 1,
}
"""Rows planted by `bad_rows=True`, by the drop reason data prep must give them."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 150, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 195, 20),
    "purple": (140, 50, 170),
    "orange": (245, 130, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
_BACKGROUNDS = ((255, 255, 255), (245, 245, 240), (235, 240, 250), (250, 240, 235))

Row = dict[str, Any]


# --- drawing -------------------------------------------------------------------------------------------------


def _canvas(rng: random.Random) -> PILImage.Image:
    w, h = rng.randint(56, 112), rng.randint(56, 112)
    return PILImage.new("RGB", (w, h), rng.choice(_BACKGROUNDS))


def png_bytes(img: PILImage.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: str) -> None:
    x0, y0, x1, y1 = box
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def _scatter(rng: random.Random, img: PILImage.Image, items: list[tuple[str, str]]) -> None:
    """Draw (shape, colour) items in distinct cells of a 3x3 grid, so none overlap and every one can be counted."""
    w, h = img.size
    cw, ch = w // 3, h // 3
    draw = ImageDraw.Draw(img)
    for (shape, colour), cell in zip(items, rng.sample(range(9), len(items)), strict=True):
        side = max(6, int(min(cw, ch) * rng.uniform(0.55, 0.8)))
        cx = (cell % 3) * cw + rng.randint(0, cw - side)
        cy = (cell // 3) * ch + rng.randint(0, ch - side)
        draw_shape(draw, shape, (cx, cy, cx + side, cy + side), colour)


# --- question kinds: each returns (image, problem, answer, options) ------------------------------------------

Example = tuple[PILImage.Image, str, str, list[str] | None]


def _count(rng: random.Random) -> Example:
    target = rng.choice(SHAPES)
    n = rng.randint(1, 5)
    others = [s for s in SHAPES if s != target]
    items = [(target, rng.choice(list(COLOURS))) for _ in range(n)]
    items += [(rng.choice(others), rng.choice(list(COLOURS))) for _ in range(rng.randint(0, 3))]
    rng.shuffle(items)
    img = _canvas(rng)
    _scatter(rng, img, items)
    return img, f"How many {target}s are in the image?", str(n), None


def _colour(rng: random.Random) -> Example:
    shapes = rng.sample(SHAPES, rng.randint(1, 3))
    colours = rng.sample(list(COLOURS), len(shapes))
    img = _canvas(rng)
    _scatter(rng, img, list(zip(shapes, colours, strict=True)))
    return img, f"What colour is the {shapes[0]}? Answer with one word.", colours[0], None


def _which_shape(rng: random.Random) -> Example:
    shape = rng.choice(SHAPES)
    img = _canvas(rng)
    _scatter(rng, img, [(shape, rng.choice(list(COLOURS)))])
    names = list(SHAPES) + ["star"]
    rng.shuffle(names)
    options = [f"{letter}. {name}" for letter, name in zip("ABCD", names, strict=True)]
    letter = "ABCD"[names.index(shape)]
    problem = "Which shape is shown in the image?\nOptions:\n" + "\n".join(options)
    return img, problem, letter, options


def _yes_no(rng: random.Random) -> Example:
    items = [(rng.choice(SHAPES), rng.choice(list(COLOURS))) for _ in range(rng.randint(1, 4))]
    img = _canvas(rng)
    _scatter(rng, img, items)
    shape, colour = rng.choice(items) if rng.random() < 0.5 else (rng.choice(SHAPES), rng.choice(list(COLOURS)))
    answer = "yes" if (shape, colour) in items else "no"
    return img, f"Is there a {colour} {shape} in the image? Answer yes or no.", answer, None


def _bars(rng: random.Random) -> Example:
    """A bar chart on a grid with one line per unit, so every bar's value can be read off the image."""
    k = rng.randint(3, 5)
    top = rng.randint(5, 9)
    values = rng.sample(range(1, top + 1), k)  # distinct, so "tallest" is unique
    colours = rng.sample(list(COLOURS), k)
    img = _canvas(rng)
    w, h = img.size
    draw = ImageDraw.Draw(img)
    margin = 4
    unit = (h - 2 * margin) / top
    for v in range(top + 1):
        y = round(h - margin - v * unit)
        draw.line([(margin, y), (w - margin, y)], fill=(200, 200, 200))
    slot = (w - 2 * margin) / k
    for i, (v, c) in enumerate(zip(values, colours, strict=True)):
        x0 = round(margin + i * slot + slot * 0.2)
        x1 = round(margin + (i + 1) * slot - slot * 0.2)
        draw.rectangle([x0, round(h - margin - v * unit), x1, h - margin], fill=COLOURS[c])
    ask = rng.randrange(3)
    if ask == 0:
        return img, "The grid lines are one unit apart. What is the value of the tallest bar?", str(max(values)), None
    if ask == 1:
        i = rng.randrange(k)
        problem = f"The grid lines are one unit apart. What is the value of the {colours[i]} bar?"
        return img, problem, str(values[i]), None
    return img, "How many bars are in the chart?", str(k), None


_KINDS: dict[str, Callable[[random.Random], Example]] = {
    "count": _count,
    "colour": _colour,
    "shape": _which_shape,
    "yes_no": _yes_no,
    "bar_chart": _bars,
}

# The wrappers real answers (and model outputs) come in; normalize_answer must see through every one.
_WRAPPERS: tuple[Callable[[str], str], ...] = (
    lambda a: f"\\boxed{{{a}}}",
    lambda a: f"<answer>{a}</answer>",
    lambda a: f"Answer: {a}",
    lambda a: f"```\n{a}\n```",
    lambda a: f'"{a}"',
    lambda a: f"<answer> \\boxed{{{a}}} </answer>",
)


def _row(seed: int, i: int) -> Row:
    # One generator per row, seeded by (seed, i): a row does not depend on how many rows come before it.
    rng = random.Random(f"vigos-synthetic:{seed}:{i}")
    kind = rng.choice(list(_KINDS))
    img, problem, answer, options = _KINDS[kind](rng)
    if rng.random() < 0.7:
        problem = "<image>" + problem
    solution = f"Reading the image, the answer is {answer}. \\boxed{{{answer}}}" if rng.random() < 0.5 else None
    if rng.random() < 0.35:
        answer = rng.choice(_WRAPPERS)(answer)
    return {
        "problem": problem,
        "images": [{"bytes": png_bytes(img), "path": None}],
        "answer": answer,
        "problem_id": f"synthetic-{seed}-{i:06d}",
        "data_source": f"synthetic/{kind}",
        "options": options,
        "solution": solution,
    }


def _bad_rows(seed: int, good: list[Row]) -> list[Row]:
    """One row per planted problem (see PLANTED_DROPS), each otherwise valid so it has exactly one reason.

    The last one is a copy of `good[0]`."""
    base = _row(seed, 10**6)  # a valid row outside the range of the good ones, as a template

    def variant(tag: str, **changes: Any) -> Row:
        return {**base, "problem": f"{base['problem']} [{tag}]", "problem_id": f"bad-{tag}", **changes}

    png = base["images"][0]["bytes"]
    tiny = png_bytes(PILImage.new("RGB", (1, 1), (255, 0, 0)))
    dup = dict(good[0])
    dup["problem_id"] = f"{dup['problem_id']}-dup"
    return [
        variant("no-image", images=[]),
        variant("garbage-bytes", images=[{"bytes": b"this is not an image", "path": None}]),
        variant("truncated-png", images=[{"bytes": png[: len(png) // 2], "path": None}]),
        variant("tiny", images=[{"bytes": tiny, "path": None}]),
        variant("empty-problem", problem="   "),
        variant("empty-answer-tag", answer="<answer> </answer>"),
        variant("empty-boxed", answer="\\boxed{}"),
        dup,
    ]


def make_synthetic(n: int, seed: int, bad_rows: bool = False) -> datasets.Dataset:
    """`n` valid rows in Vision-SR1-47K's schema (plus `sum(PLANTED_DROPS.values())` bad ones if `bad_rows`)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    import datasets
    from datasets import Features, Image, List, Value

    features = Features(
        {
            "problem": Value("string"),
            "images": List(Image()),
            "answer": Value("string"),
            "problem_id": Value("string"),
            "data_source": Value("string"),
            "options": List(Value("string")),
            "solution": Value("string"),
        }
    )
    rows = [_row(seed, i) for i in range(n)]
    if bad_rows:
        rng = random.Random(f"vigos-synthetic-bad:{seed}")
        first = rows[0]
        *others, dup = _bad_rows(seed, rows)
        for bad in others:
            rows.insert(rng.randint(0, len(rows)), bad)
        # The duplicate goes after the row it copies, so it is the copy that prep drops.
        after = next(j for j, r in enumerate(rows) if r is first) + 1
        rows.insert(rng.randint(after, len(rows)), dup)
    return datasets.Dataset.from_list(rows, features=features)


def write_synthetic(output: str | Path, n: int, seed: int, fmt: Format = "disk", bad_rows: bool = False) -> Path:
    """Write `make_synthetic(n, seed, bad_rows)` to `output`, a folder, in one of three layouts:

    - `disk`: `Dataset.save_to_disk`;
    - `parquet`: the Hub's layout, `data/train-00000-of-00001.parquet`, images as `{bytes, path}` structs
      (if `output` ends in `.parquet`, that single file instead);
    - `jsonl`: `train.jsonl` with image paths relative to it, and the PNG files under `images/`.
    Returns the path to give data prep as its source (the folder, or the single parquet file).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(output)
    ds = make_synthetic(n, seed, bad_rows=bad_rows)
    if fmt == "disk":
        ds.save_to_disk(str(out))
    elif fmt == "parquet":
        target = out if out.suffix == ".parquet" else out / "data" / f"{SPLIT}-00000-of-00001.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(target))
        return target if out.suffix == ".parquet" else out
    else:
        _write_jsonl(ds, out)
    return out


def prepared_synthetic(root: str | Path, n: int, seed: int = 1) -> Path:
    """`n` synthetic rows written to `root`/src and run through data prep into `root`/prepared (returned): the
    small training set of the trainer tests and the fault benchmarks."""
    from vigos.config import DataConfig
    from vigos.data.prepare import prepare

    root = Path(root)
    src = write_synthetic(root / "src", n, seed, fmt="disk")
    prepare(DataConfig(source=str(src)), root / "prepared", progress=False)
    return root / "prepared"


def _write_jsonl(ds: datasets.Dataset, out: Path) -> None:
    from datasets import Image, List

    (out / "images").mkdir(parents=True, exist_ok=True)
    # Undecoded, so planted bad bytes are written out as they are rather than failing to decode here.
    ds = ds.cast_column("images", List(Image(decode=False)))
    with open(out / f"{SPLIT}.jsonl", "w") as f:
        for i, row in enumerate(ds):
            paths = []
            for j, image in enumerate(row["images"]):
                rel = f"images/{i:06d}-{j}.png"
                (out / rel).write_bytes(image["bytes"])
                paths.append(rel)
            f.write(json.dumps({**row, "images": paths}) + "\n")


# --- well-formed answers (the demo's warm-up) ------------------------------------------------------------------
# A randomly initialised model never writes the ViGOS format, so the demo warms its tiny model on short answers
# in that format first (vigos/modeling/warmup.py). The texts below are per question kind, not per image: they only
# have to teach the shape of an answer (description, reasoning, box), and building them draws nothing from a row's
# random generator, so the rows themselves stay exactly as they were.

SCENE_DESCRIPTIONS: dict[str, str] = {
    "count": "Some coloured shapes on a plain background.",
    "colour": "One or more coloured shapes.",
    "shape": "A single coloured shape.",
    "yes_no": "A few coloured shapes.",
    "bar_chart": "A bar chart on a grid.",
}
"""A one-line scene description per question kind (`data_source` is `synthetic/<kind>`)."""

REASONING_STEPS: dict[str, str] = {
    "count": "I count the matching shapes.",
    "colour": "I look at the shape's colour.",
    "shape": "I match the shape to an option.",
    "yes_no": "I check each shape and colour.",
    "bar_chart": "I read the bars against the grid.",
}
"""A one-line reasoning per question kind."""


def row_kind(row: Row) -> str:
    """The question kind of a synthetic row (`count`, `colour`, `shape`, `yes_no`, `bar_chart`)."""
    return str(row["data_source"]).split("/", 1)[1]


def synthetic_rows(n: int, seed: int) -> list[Row]:
    """The `n` valid rows of `make_synthetic(n, seed)` as plain dicts (images as PNG bytes), without `datasets`."""
    return [_row(seed, i) for i in range(n)]
