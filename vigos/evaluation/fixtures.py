"""Tiny local copies of the evaluation benchmarks, in each benchmark's real Hub schema, for the CPU demo and the tests.

    sources = write_benchmark_fixtures(root, ["mmmu", "cv-bench", "vilp-f"], n=4, seed=0)
    cfg.eval.sources = sources       # ["mmmu=<root>/mmmu", "cv-bench=<root>/cv-bench", "vilp-f=<root>/vilp"]

Layouts (what `vigos.data.load.load_source` reads for a local folder, as on the Hub):
- the `zli12321/*` sets: `data/test-00000-of-00001.parquet` with `problem` (options inside), `answer`, `images`
  (list of `{bytes, path}`); MMMU and MMSI rows carry several images; MMMU-Pro's folder holds `standard/` and
  `vision/`, one such dataset each;
- CV-Bench: `data/test-00000-of-00001.parquet` with `idx`, `type`, `task`, `image`, `question`, `choices`, `answer`
  ("(B)"), `prompt`, `filename`, `source` (2D rows alternate ADE20K / COCO, 3D rows Omni3D), `source_dataset`;
- ViLP: `ViLP.parquet` (the Hub file) with `question_id`, `question`, `image1..3`, `answer1..3`; ViLP-F and ViLP-P
  read the same folder (`vilp/`).

`fmt="disk"` writes `save_to_disk` folders instead. Images are drawn with PIL (coloured shapes on 48-96 px canvases;
answers follow from the picture). Output is a pure function of (benchmarks, n, seed); writing all ten takes well
under a second.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from PIL import Image as PILImage
from PIL import ImageDraw

from vigos.data.synthetic import COLOURS, SHAPES, draw_shape, png_bytes
from vigos.evaluation.benchmarks import BENCHMARKS, get_benchmark

FixtureFormat = Literal["parquet", "disk"]

_BG = (250, 250, 245)


def _picture(rng: random.Random, items: Sequence[tuple[str, str]], size: tuple[int, int] | None = None) -> bytes:
    """A canvas with the given (shape, colour) items drawn left to right; returns PNG bytes."""
    w, h = size or (rng.randint(56, 96), rng.randint(48, 80))
    img = PILImage.new("RGB", (w, h), _BG)
    draw = ImageDraw.Draw(img)
    n = max(1, len(items))
    cell = w // n
    for k, (shape, colour) in enumerate(items):
        r = max(4, min(cell, h) // 3)
        cx, cy = k * cell + cell // 2, h // 2 + rng.randint(-3, 3)
        draw_shape(draw, shape, (cx - r, cy - r, cx + r, cy + r), colour)
    return png_bytes(img)


def _image(data: bytes) -> dict[str, Any]:
    return {"bytes": data, "path": None}


def _letters(n: int) -> str:
    return "ABCDEFGHIJ"[:n]


def _mc(rng: random.Random, correct: str, pool: Sequence[str], n_options: int) -> tuple[list[str], str]:
    """Options (shuffled, containing `correct`) and the correct letter."""
    others = [p for p in pool if p != correct]
    rng.shuffle(others)
    options = [correct, *others[: n_options - 1]]
    rng.shuffle(options)
    return options, _letters(len(options))[options.index(correct)]


def _option_lines(options: Sequence[str]) -> str:
    return "\n".join(f"{letter}. {text}" for letter, text in zip(_letters(len(options)), options, strict=False))


# --- one row per schema -------------------------------------------------------------------------------------


def _mm_vet_row(rng: random.Random, i: int) -> dict[str, Any]:
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    if i % 2:
        count = rng.randint(1, 4)
        return {"problem": f"<image>How many {shape}s are in the image?", "answer": str(count),
                "images": [_image(_picture(rng, [(shape, colour)] * count))]}
    return {"problem": f"<image>What colour is the {shape}?", "answer": colour,
            "images": [_image(_picture(rng, [(shape, colour)]))]}


def _mmmu_row(rng: random.Random, i: int) -> dict[str, Any]:
    n_images = 2 if i % 3 == 2 else 1
    items = [(rng.choice(SHAPES), rng.choice(list(COLOURS))) for _ in range(n_images)]
    target = items[-1][1]
    options, letter = _mc(rng, target, list(COLOURS), 4)
    refs = " ".join(f"<image {k + 1}>" for k in range(n_images))
    problem = f"{refs} What is the colour of the shape in the last image?\nOptions:\n{_option_lines(options)}"
    return {"problem": problem, "answer": letter, "images": [_image(_picture(rng, [it])) for it in items]}


def _mmmu_pro_standard_row(rng: random.Random, i: int) -> dict[str, Any]:
    count = rng.randint(1, 5)
    options, letter = _mc(rng, str(count), [str(k) for k in range(1, 11)], 10)
    problem = f"<image 1> How many shapes are shown?\n{_option_lines(options)}"
    shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
    return {"problem": problem, "answer": letter, "images": [_image(_picture(rng, [(shape, colour)] * count))]}


def _mmmu_pro_vision_row(rng: random.Random, i: int) -> dict[str, Any]:
    # The real subset's question lives in the screenshot; the problem text is an instruction (empty in some rows).
    shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
    letter = rng.choice(_letters(10))
    problem = "" if i % 2 else "<image> Answer the question in the image with the option's letter."
    return {"problem": problem, "answer": letter, "images": [_image(_picture(rng, [(shape, colour)], (96, 72)))]}


def _mathverse_row(rng: random.Random, i: int) -> dict[str, Any]:
    a = rng.randint(2, 9)
    answers = (f"{a}\\sqrt{{2}}", f"\\frac{{{a}}}{{2}}", f"{a}^2")
    problem = f"<image>The square in the figure has side {a}. Find the requested length or area."
    return {"problem": problem, "answer": answers[i % len(answers)],
            "images": [_image(_picture(rng, [("square", rng.choice(list(COLOURS)))]))]}


def _mathvista_row(rng: random.Random, i: int) -> dict[str, Any]:
    count = rng.randint(1, 4)
    shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
    answer = str(count) if i % 2 == 0 else f"{count / 2:.1f}"
    problem = f"<image>There are {count} {shape}s. What is the count{' divided by 2' if i % 2 else ''}?"
    return {"problem": problem, "answer": answer, "images": [_image(_picture(rng, [(shape, colour)] * count))]}


def _mmsi_row(rng: random.Random, i: int) -> dict[str, Any]:
    n_images = 2 + i % 2
    colours = rng.sample(list(COLOURS), n_images)
    images = [_image(_picture(rng, [(rng.choice(SHAPES), c)])) for c in colours]
    options, letter = _mc(rng, colours[0], list(COLOURS), 4)
    inline = ", ".join(f"{lt}: {t}" for lt, t in zip(_letters(4), options, strict=True))
    problem = f"Which colour does the object in the first image have? Options: {inline}"
    return {"problem": problem, "answer": letter, "images": images}


def _realworldqa_row(rng: random.Random, i: int) -> dict[str, Any]:
    colour = rng.choice(list(COLOURS))
    image = [_image(_picture(rng, [("circle", colour)], (96, 64)))]
    if i % 2:
        other = rng.choice([c for c in COLOURS if c != colour])
        return {"problem": f"Is the circle {other}? Please answer directly with only the correct answer.",
                "answer": "No", "images": image}
    options, letter = _mc(rng, colour, list(COLOURS), 3)
    lines = "\n".join(f"{lt}. {t}" for lt, t in zip(_letters(3), options, strict=True))
    return {"problem": f"What colour is the circle?\n\n{lines}\nPlease answer directly with only the letter.",
            "answer": letter, "images": image}


# (type, task, source): the 2D rows alternate ADE20K / COCO so that every source of CV-Bench's official overall
# appears as soon as n >= 3.
_CV_TASKS = (("2D", "Count", "ADE20K"), ("2D", "Relation", "COCO"), ("3D", "Depth", "Omni3D"),
             ("3D", "Distance", "Omni3D"))


def _cv_bench_row(rng: random.Random, i: int) -> dict[str, Any]:
    kind, task, source = _CV_TASKS[i % len(_CV_TASKS)]
    a, b = rng.sample(list(COLOURS), 2)
    if task == "Count":
        count = rng.randint(1, 4)
        choices = [str(k) for k in range(0, 6)]
        question = f"How many {a} circles are in the image?"
        correct = str(count)
        items = [("circle", a)] * count
    elif task == "Relation":
        choices = ["left", "right"]
        question = f"Considering the relative positions of the {a} shape and the {b} shape, where is the {a} shape?"
        correct = "left"
        items = [("square", a), ("square", b)]
    else:
        choices = [f"{a} shape", f"{b} shape"]
        what = "closer to the camera" if task == "Depth" else "closer to the red marker"
        question = f"Which object is {what}, the {a} shape or the {b} shape?"
        correct = rng.choice(choices)
        items = [("triangle", a), ("circle", b)]
    letters = _letters(len(choices))
    answer = f"({letters[choices.index(correct)]})"
    prompt = question + " Select from the following choices.\n" + "\n".join(
        f"({lt}) {c}" for lt, c in zip(letters, choices, strict=True)
    )
    return {
        "idx": i, "type": kind, "task": task, "image": _image(_picture(rng, items)), "question": question,
        "choices": choices, "answer": answer, "prompt": prompt, "filename": f"img/{kind}/{task.lower()}/{i:06d}.png",
        "source": source, "source_dataset": f"{source} Test", "source_filename": f"{i:06d}.jpg",
        "target_class": None, "target_size": None, "bbox": None,
    }


_VILP_FACTS = (
    ("Bananas are usually yellow.", "What colour is this fruit?", ("yellow", "red", "blue")),
    ("Stop signs are red.", "What colour is this sign?", ("red", "green", "purple")),
    ("Grass is green.", "What colour is the grass here?", ("green", "orange", "blue")),
)


def _vilp_row(rng: random.Random, i: int) -> dict[str, Any]:
    fact, question, answers = _VILP_FACTS[i % len(_VILP_FACTS)]
    row: dict[str, Any] = {"question_id": i, "question": f"{fact} {question}"}
    for p, colour in enumerate(answers, start=1):
        row[f"image{p}"] = _image(_picture(rng, [(rng.choice(SHAPES), colour)], (72, 72)))
        row[f"answer{p}"] = colour
    return row


# --- writing ------------------------------------------------------------------------------------------------


def _features(kind: str):
    from datasets import Features, Image, List, Value

    if kind == "zli":
        return Features({"problem": Value("string"), "answer": Value("string"), "images": List(Image())})
    if kind == "cv-bench":
        return Features({
            "idx": Value("int32"), "type": Value("string"), "task": Value("string"), "image": Image(),
            "question": Value("string"), "choices": List(Value("string")), "answer": Value("string"),
            "prompt": Value("string"), "filename": Value("string"), "source": Value("string"),
            "source_dataset": Value("string"), "source_filename": Value("string"), "target_class": Value("string"),
            "target_size": Value("int64"), "bbox": List(Value("int64")),
        })
    features = {"question_id": Value("int64"), "question": Value("string")}
    for p in (1, 2, 3):
        features[f"image{p}"] = Image()
        features[f"answer{p}"] = Value("string")
    return Features(features)


# benchmark (or "mmmu-pro/<subset>") -> (row maker, schema kind)
_MAKERS = {
    "mm-vet": (_mm_vet_row, "zli"),
    "mmmu": (_mmmu_row, "zli"),
    "mmmu-pro/standard": (_mmmu_pro_standard_row, "zli"),
    "mmmu-pro/vision": (_mmmu_pro_vision_row, "zli"),
    "mathverse": (_mathverse_row, "zli"),
    "mathvista": (_mathvista_row, "zli"),
    "mmsi": (_mmsi_row, "zli"),
    "realworldqa": (_realworldqa_row, "zli"),
    "cv-bench": (_cv_bench_row, "cv-bench"),
    "vilp": (_vilp_row, "vilp"),
}


def _write(out: Path, key: str, n: int, seed: int, fmt: FixtureFormat) -> None:
    import datasets

    maker, kind = _MAKERS[key]
    rng = random.Random(f"vigos-eval-fixture:{key}:{seed}")
    rows = [maker(rng, i) for i in range(n)]
    ds = datasets.Dataset.from_list(rows, features=_features(kind))
    if fmt == "disk":
        ds.save_to_disk(str(out))
        return
    target = out / "ViLP.parquet" if kind == "vilp" else out / "data" / "test-00000-of-00001.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(target))


def write_benchmark_fixtures(
    root: str | Path,
    benchmarks: Sequence[str] | None = None,
    n: int = 6,
    seed: int = 0,
    fmt: FixtureFormat = "parquet",
) -> list[str]:
    """Write `n` rows per benchmark (per subset for MMMU-Pro; ViLP: n rows = 3n items) under `root`; return the
    `name=path` entries for `EvalConfig.sources`, in the order of `benchmarks` (default: every registered one)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if fmt not in ("parquet", "disk"):
        raise ValueError(f"unknown format {fmt!r}; choose parquet or disk")
    import datasets

    root = Path(root)
    names = list(benchmarks) if benchmarks is not None else list(BENCHMARKS)
    written: dict[str, Path] = {}
    sources: list[str] = []
    progress = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        for name in names:
            spec = get_benchmark(name)
            folder = "vilp" if spec.layout == "vilp" else name
            out = root / folder
            if folder not in written:
                if len(spec.subsets) > 1:
                    for subset in spec.subsets:
                        _write(out / subset.name, f"{name}/{subset.name}", n, seed, fmt)
                else:
                    _write(out, folder, n, seed, fmt)
                written[folder] = out
            sources.append(f"{name}={out}")
    finally:
        if progress:
            datasets.enable_progress_bars()
    return sources
