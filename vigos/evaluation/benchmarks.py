"""The benchmark registry (one data-driven entry per benchmark of docs/evaluation.md) and its loader.

    spec = get_benchmark("cv-bench")
    loaded = load_benchmark("cv-bench", source=None, max_examples=8)     # Hub; or a local folder in the Hub's schema
    for item in loaded.items:
        item.problem, item.images, item.reference, item.answer_type, item.options, item.meta

Every entry says where the data lives (HF id(s), config, split), which fields hold the problem, the images and the
answer, how rows become items (`layout`), the answer type (fixed, or per row from `vigos.data.answers.answer_type`),
whether rows can carry several images, the grader the benchmark is meant for, and the samples per question (None:
`EvalConfig.n_samples`; 1 for ViLP).

Layouts:
- `problem`: the `zli12321/*` schema: `problem` (options already inside it), `answer`, `images` (list). Options are
  read back out of the problem text where they are written one per line (`A. ...` / `(A) ...`) or after an
  `Options:` / `Choices:` marker, so that the grader can match an answer given as the option's text.
- `cv-bench`: `idx`, `type`, `task`, `source`, `image`, `question`, `choices`, `answer` ("(B)"), `prompt` (question
  + choices, ready to use). The problem is `prompt`; the reference is "(B) <choice text>"; options are `choices`;
  `meta` keeps `type`, `task`, `idx` and `source` (ADE20K / COCO / Omni3D: CV-Bench's official overall averages per
  source, `vigos.evaluation.metrics`). A row without a source value is kept, without `meta["source"]`.
- `vilp`: item i -> row i // 3, position p = i % 3 + 1, fields `question`, `image{p}`, `answer{p}`; the problem is
  "Please answer with one word: " + question; with `drop_fact` (ViLP-P) only the text after the question's first
  "." is kept (the fact sentence removed).

Local copies: `EvalConfig.sources` entries `name=path` point a benchmark at a folder in the same schema (anything
`vigos.data.load.load_source` reads: a `save_to_disk` folder, parquet in the Hub's layout, JSONL). MMMU-Pro's folder
holds its two subsets as `standard/` and `vision/`.

Bad rows (decision): a row whose problem or answer is empty, whose image cannot be decoded, or whose CV-Bench
answer does not name one of its choices is SKIPPED and COUNTED (`LoadedBenchmark.skipped`, each with benchmark,
row, field and reason; `vigos eval run` writes them to `responses/eval_run.json` and logs a warning), because one
broken image in a 1,000-item Hub set should not abort a GPU job after it has started. `strict=True` raises a
`VigosError` naming benchmark, row and field instead. A missing COLUMN is always an error (wrong schema).

Images are kept as their encoded bytes (validated by one full decode at load time) and decoded again on access
(`EvalItem.images`, RGB), so a benchmark of a thousand multi-image items does not hold every decoded bitmap in memory.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image as PILImage

from vigos.data.answers import ANSWER_TYPES, answer_type, normalize_answer
from vigos.errors import VigosError

if TYPE_CHECKING:  # pragma: no cover
    import datasets

log = logging.getLogger(__name__)

Layout = Literal["problem", "cv-bench", "vilp"]
Grader = Literal["rules", "judge"]

VILP_PREFIX = "Please answer with one word: "
VILP_POSITIONS = (1, 2, 3)
VISION_ONLY_PROBLEM = "Please answer the question shown in the image."
"""The problem of a row that has none (MMMU-Pro vision: the question is in the screenshot)."""


@dataclass(frozen=True)
class Subset:
    """One dataset a benchmark reads (most have one; MMMU-Pro has `standard` and `vision`)."""

    name: str
    """Subset name: `meta["subset"]` of its items and its folder in a local copy (when the benchmark has several)."""
    hf_id: str
    split: str = "test"
    config: str | None = None
    """HF config name (None / "default": the default config)."""
    empty_problem: str | None = None
    """Problem used when a row's problem field is empty (None: such a row is bad)."""


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    subsets: tuple[Subset, ...]
    layout: Layout = "problem"
    problem_field: str = "problem"
    """For `vilp`: the question field."""
    images_field: str = "images"
    """A list-of-images field, or a single-image field; for `vilp` the prefix of `image1..3`."""
    answer_field: str = "answer"
    """For `vilp`: the prefix of `answer1..3`."""
    options_field: str | None = None
    answer_type: str | None = None
    """Fixed answer type of every item, or None: per row (`answer_type(reference, options)`)."""
    multi_image: bool = False
    default_grader: Grader = "rules"
    """The grader the benchmark is meant for (`EvalConfig.grader` decides what runs)."""
    samples: int | None = None
    """Samples per question (None: `EvalConfig.n_samples`)."""
    drop_fact: bool = False
    """ViLP-P: keep only the question text after its first "."."""
    description: str = ""
    items: int | None = None
    """Questions in the public set, all subsets together, approximate (the published sizes; for run-time
    projections: benchmarks/full_run.py); None: not known."""

    def __post_init__(self) -> None:
        if self.answer_type is not None and self.answer_type not in ANSWER_TYPES:
            raise ValueError(f"{self.name}: answer_type {self.answer_type!r} is not one of {ANSWER_TYPES}")

    @property
    def hf_ids(self) -> tuple[str, ...]:
        return tuple(s.hf_id for s in self.subsets)

    def n_samples(self, default: int) -> int:
        return self.samples if self.samples is not None else default


def _zli(name: str, hf_id: str, *, multi_image: bool = False, grader: Grader = "rules", description: str = "",
         items: int | None = None):
    return BenchmarkSpec(name, (Subset(name, hf_id),), multi_image=multi_image, default_grader=grader,
                         description=description, items=items)


_VILP = Subset("vilp", "ViLP/ViLP", split="train")

BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        _zli("mm-vet", "zli12321/mm-vet", grader="judge", description="218 open-ended items", items=218),
        _zli("mmmu", "zli12321/MMMU", multi_image=True, description="options inside the problem, some multi-image",
             items=895),
        BenchmarkSpec(
            "mmmu-pro",
            (
                Subset("standard", "zli12321/mmmu_pro_10options"),
                Subset("vision", "zli12321/mmmu-pro-vision", empty_problem=VISION_ONLY_PROBLEM),
            ),
            multi_image=True,
            description="two subsets (standard: 10 options; vision: the question in a screenshot)",
            items=2 * 1730,
        ),
        _zli("mathverse", "zli12321/mathverse", items=3940),  # the public testmini: 788 problems x 5 versions
        _zli("mathvista", "zli12321/mathvista", description="1000 items", items=1000),
        _zli("mmsi", "zli12321/MMSI", multi_image=True, description="1000 multi-image items", items=1000),
        _zli("realworldqa", "zli12321/realWorldQA", description="765 items", items=765),
        BenchmarkSpec(
            "cv-bench",
            (Subset("cv-bench", "nyu-visionx/CV-Bench", config="default"),),
            layout="cv-bench",
            problem_field="prompt",
            images_field="image",
            answer_field="answer",
            options_field="choices",
            answer_type="multiple_choice",
            description="2638 items; reference '(L) choice'; 2D/3D breakdown",
            items=2638,
        ),
        BenchmarkSpec(
            "vilp-f", (_VILP,), layout="vilp", problem_field="question", images_field="image",
            answer_field="answer", samples=1, description="300 rows x 3 images; with the fact sentence",
            items=900,
        ),
        BenchmarkSpec(
            "vilp-p", (_VILP,), layout="vilp", problem_field="question", images_field="image",
            answer_field="answer", samples=1, drop_fact=True,
            description="300 rows x 3 images; fact sentence removed", items=900,
        ),
    )
}


def get_benchmark(name: str) -> BenchmarkSpec:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise VigosError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}") from None


# --------------------------------------------------------------------------------------------------------------
# Items


@dataclass
class EvalItem:
    """One question of one benchmark, ready to prompt and grade."""

    benchmark: str
    example_id: str
    """Stable id within the benchmark: the source row index (`subset/row` for MMMU-Pro, `row-position` for ViLP)."""
    problem: str
    """The question as the student prompt shows it (options included)."""
    reference: str
    answer_type: str
    options: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    image_bytes: list[bytes] = field(default_factory=list, repr=False)
    """Encoded images in order (at most `max_images`); `images` decodes them."""
    image_sizes: list[tuple[int, int]] = field(default_factory=list, repr=False)

    @property
    def images(self) -> list[PILImage.Image]:
        """The images, decoded now, as RGB PIL images, in order."""
        out = []
        for data in self.image_bytes:
            with PILImage.open(io.BytesIO(data)) as img:
                out.append(img.convert("RGB"))
        return out

    @property
    def n_images(self) -> int:
        return len(self.image_bytes)


@dataclass
class LoadedBenchmark:
    name: str
    items: list[EvalItem]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    """One entry per bad row: benchmark, subset, row, field, reason."""
    images_truncated: int = 0
    """Items that had more than `max_images` images (the first `max_images` are kept)."""
    sources: dict[str, str] = field(default_factory=dict)
    """subset -> what was loaded (Hub id or local path)."""


class _BadRow(Exception):
    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field_name
        self.reason = reason


# --------------------------------------------------------------------------------------------------------------
# Sources


def parse_sources(sources: Sequence[str]) -> dict[str, str]:
    """`["cv-bench=/data/cv", ...]` -> {"cv-bench": "/data/cv"}; unknown names and bad entries are errors."""
    out: dict[str, str] = {}
    for entry in sources:
        name, sep, path = str(entry).partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise VigosError(f"eval.sources entry {entry!r} is not of the form benchmark=path (e.g. cv-bench=/data/cv)")
        get_benchmark(name)
        if name in out and out[name] != path:
            raise VigosError(f"eval.sources names {name!r} twice ({out[name]} and {path})")
        out[name] = path
    return out


def _subset_source(spec: BenchmarkSpec, subset: Subset, local: str | None) -> str:
    if local is None:
        return subset.hf_id
    root = Path(local).expanduser()
    if not root.exists():
        raise VigosError(f"local source of {spec.name} does not exist: {local}")
    if len(spec.subsets) == 1:
        return str(root)
    sub = root / subset.name
    if not sub.exists():
        raise VigosError(
            f"local source of {spec.name} ({local}) has no {subset.name}/ folder; it must hold one folder per subset: "
            f"{', '.join(s.name + '/' for s in spec.subsets)}"
        )
    return str(sub)


def _load_rows(source: str, subset: Subset, cache_dir: str | None) -> datasets.Dataset:
    """The subset's split with every image column left undecoded (`{bytes, path}` dicts)."""
    from vigos.data.load import load_source, undecoded_features

    if subset.config not in (None, "default") and not Path(source).expanduser().exists():
        import datasets

        try:
            ds = datasets.load_dataset(source, subset.config, split=subset.split)
        except Exception as e:  # network, auth, missing config: the user's to fix
            raise VigosError(
                f"could not load {source!r} (config {subset.config!r}, split {subset.split!r}): {e}"
            ) from e
    else:
        ds = load_source(source, subset.split, cache_dir=cache_dir)
    for column, feature in ds.features.items():
        undecoded = undecoded_features(feature)
        if undecoded != feature:
            ds = ds.cast_column(column, undecoded)
    return ds


# --------------------------------------------------------------------------------------------------------------
# Loading


def load_benchmark(
    name: str,
    *,
    source: str | None = None,
    max_examples: int | None = None,
    max_images: int = 16,
    cache_dir: str | None = None,
    strict: bool = False,
) -> LoadedBenchmark:
    """Items of benchmark `name` from the Hub (`source=None`) or a local copy, in source order.

    `max_examples` caps the items (split evenly over MMMU-Pro's subsets; ViLP counts items, not rows); bad rows do
    not count towards it. `strict`: a bad row raises instead of being skipped.
    """
    spec = get_benchmark(name)
    if max_images < 1:
        raise VigosError(f"eval.max_images must be >= 1, got {max_images}")
    loaded = LoadedBenchmark(name, [])
    quotas = _quotas(max_examples, len(spec.subsets))
    for subset, quota in zip(spec.subsets, quotas, strict=True):
        if quota == 0:
            continue
        src = _subset_source(spec, subset, source)
        loaded.sources[subset.name] = src
        ds = _load_rows(src, subset, cache_dir)
        _check_columns(spec, ds, src)
        before = len(loaded.items)
        for row_index, position, row in _iter_rows(spec, ds):
            if quota is not None and len(loaded.items) - before >= quota:
                break
            try:
                item, truncated = _make_item(spec, subset, row, row_index, position, max_images)
            except _BadRow as bad:
                where = f"row {row_index}" + (f" position {position}" if position else "")
                if strict:
                    raise VigosError(
                        f"{name} ({src}) {where}, field {bad.field!r}: {bad.reason}; fix or remove that row, or "
                        "run without strict checking to skip it"
                    ) from None
                loaded.skipped.append(
                    {"benchmark": name, "subset": subset.name, "row": row_index, "position": position,
                     "field": bad.field, "reason": bad.reason}
                )
                continue
            loaded.items.append(item)
            loaded.images_truncated += truncated
    if loaded.skipped:
        log.warning("%s: skipped %d bad row(s), e.g. %s", name, len(loaded.skipped), loaded.skipped[0])
    if loaded.images_truncated:
        log.warning("%s: %d item(s) had more than %d images; kept the first %d", name, loaded.images_truncated,
                    max_images, max_images)
    return loaded


def _quotas(max_examples: int | None, n: int) -> list[int | None]:
    if max_examples is None:
        return [None] * n
    if max_examples < 0:
        raise VigosError(f"eval.max_examples must be >= 0 (or null for all), got {max_examples}")
    base, extra = divmod(max_examples, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


def _required_columns(spec: BenchmarkSpec) -> list[str]:
    if spec.layout == "vilp":
        return [spec.problem_field] + [f"{f}{p}" for p in VILP_POSITIONS for f in (spec.images_field,
                                                                                      spec.answer_field)]
    cols = [spec.problem_field, spec.images_field, spec.answer_field]
    if spec.options_field:
        cols.append(spec.options_field)
    if spec.layout == "cv-bench":
        cols += ["type", "task"]
    return cols


def _check_columns(spec: BenchmarkSpec, ds: datasets.Dataset, source: str) -> None:
    missing = [c for c in _required_columns(spec) if c not in ds.column_names]
    if missing:
        raise VigosError(
            f"{spec.name} ({source}) lacks column(s) {', '.join(missing)}; its columns: {', '.join(ds.column_names)}. "
            f"A local copy must keep the Hub schema of {', '.join(spec.hf_ids)}"
        )


def _iter_rows(spec: BenchmarkSpec, ds: datasets.Dataset):
    """(row index, ViLP position or None, row) in item order."""
    for row_index, row in enumerate(ds):
        if spec.layout == "vilp":
            for position in VILP_POSITIONS:
                yield row_index, position, row
        else:
            yield row_index, None, row


def _make_item(
    spec: BenchmarkSpec, subset: Subset, row: dict[str, Any], row_index: int, position: int | None, max_images: int
) -> tuple[EvalItem, int]:
    meta: dict[str, Any] = {}
    options: list[str] | None = None
    if spec.layout == "vilp":
        assert position is not None
        question = _text(row.get(spec.problem_field))
        if not question:
            raise _BadRow(spec.problem_field, "empty question")
        problem = VILP_PREFIX + (vilp_drop_fact(question) if spec.drop_fact else question)
        image_field, answer_field = f"{spec.images_field}{position}", f"{spec.answer_field}{position}"
        reference = normalize_answer(row.get(answer_field))
        if not reference:
            raise _BadRow(answer_field, "empty answer")
        example_id = f"{row_index}-{position}"
        meta = {"position": position, "row": row_index}
    else:
        image_field, answer_field = spec.images_field, spec.answer_field
        problem = _text(row.get(spec.problem_field))
        if not problem:
            if subset.empty_problem is None:
                raise _BadRow(spec.problem_field, "empty problem")
            problem = subset.empty_problem
        if spec.layout == "cv-bench":
            from vigos.data.prepare import options_list

            options = options_list(row.get(spec.options_field)) if spec.options_field else None
            reference = cv_bench_reference(row.get(answer_field), options)
            if reference is None:
                raise _BadRow(answer_field, f"answer {row.get(answer_field)!r} does not name one of the choices")
            meta = {"type": _text(row.get("type")), "task": _text(row.get("task"))}
            if row.get("idx") is not None:
                meta["idx"] = row["idx"]
            # Not a required column: the item is still gradable without it; only the official overall needs it.
            if _text(row.get("source")):
                meta["source"] = _text(row.get("source"))
        else:
            reference = normalize_answer(row.get(answer_field))
            if not reference:
                raise _BadRow(answer_field, "empty answer")
            options = options_from_problem(problem)
            for key in ("id", "problem_id", "pid", "question_id"):
                if row.get(key) is not None:
                    meta["source_id"] = str(row[key])
                    break
        example_id = f"{subset.name}/{row_index}" if len(spec.subsets) > 1 else str(row_index)
        if len(spec.subsets) > 1:
            meta["subset"] = subset.name
    images, sizes, truncated = _decode_images(row.get(image_field), image_field, max_images,
                                              single=spec.layout != "problem")
    kind = spec.answer_type or answer_type(reference, options)
    item = EvalItem(spec.name, example_id, problem, reference, kind, options, meta, images, sizes)
    return item, truncated


def _text(value: Any) -> str:
    if value is None:
        return ""
    return (value if isinstance(value, str) else str(value)).strip()


def _decode_images(
    value: Any, field_name: str, max_images: int, single: bool
) -> tuple[list[bytes], list[tuple[int, int]], int]:
    """Encoded bytes and sizes of the images in `value` (PIL, `{bytes, path}`, bytes, path, or a list of those).

    A single-image field must hold an image; a list field may be empty (a text-only question). Every image is fully
    decoded once here so that a broken one is found at load time, not in the middle of a generation batch.
    """
    from vigos.data.prepare import as_image_list, decoded_size, image_bytes

    values = as_image_list(value)
    if single and not values:
        raise _BadRow(field_name, "no image")
    truncated = int(len(values) > max_images)
    out: list[bytes] = []
    sizes: list[tuple[int, int]] = []
    for k, v in enumerate(values[:max_images]):
        found = image_bytes(v)
        if found is None:
            raise _BadRow(field_name, f"image {k} is missing (null)")
        data = found[0]
        size = decoded_size(data) if data is not None else None
        if data is None or size is None:
            raise _BadRow(field_name, f"image {k} cannot be read or decoded")
        out.append(data)
        sizes.append(size)
    return out, sizes, truncated


def vilp_drop_fact(question: str) -> str:
    """ViLP-P: the question without its leading fact sentence (the text after the first "."); unchanged if none."""
    head, dot, rest = question.partition(".")
    return rest.strip() if dot and rest.strip() else question.strip()


_LETTER = re.compile(r"^\(?\s*([A-Za-z])\s*\)?\.?$")


def cv_bench_reference(answer: Any, choices: Sequence[str] | None) -> str | None:
    """CV-Bench's answer "(B)" + its choices -> "(B) <choice text>" (docs/evaluation.md); None if it names no choice."""
    m = _LETTER.match(_text(answer))
    if not m or not choices:
        return None
    index = ord(m.group(1).upper()) - ord("A")
    if not 0 <= index < len(choices):
        return None
    return f"({m.group(1).upper()}) {str(choices[index]).strip()}"


_OPTION_LINE = re.compile(r"^\s*\(?([A-J])\s*[).:：]\s*(\S.*?)\s*$")
_OPTIONS_MARKER = re.compile(r"(?:options|choices)\s*[:：]", re.IGNORECASE)
_INLINE_LABEL = re.compile(r"(?:^|(?<=[\s,;]))\(?([A-J])[).:：]\s+")


def options_from_problem(problem: str) -> list[str] | None:
    """Option texts written inside a problem (MMMU-style), in letter order, or None when there are none.

    Recognised: one option per line (`A. text`, `(A) text`, `A: text`), letters consecutive from A, at least two (the
    last such run wins); otherwise, after the last `Options:` / `Choices:` marker, inline labels `A. x B. y` /
    `A: x, B: y`.
    """
    runs: list[list[str]] = []
    current: list[str] = []
    for line in problem.splitlines():
        m = _OPTION_LINE.match(line)
        if m and ord(m.group(1)) - ord("A") == len(current):
            current.append(m.group(2))
            continue
        if len(current) >= 2:
            runs.append(current)
        current = [m.group(2)] if m and m.group(1) == "A" else []
    if len(current) >= 2:
        runs.append(current)
    if runs:
        return runs[-1]
    markers = list(_OPTIONS_MARKER.finditer(problem))
    if not markers:
        return None
    tail = problem[markers[-1].end():]
    labels = [m for m in _INLINE_LABEL.finditer(tail)]
    picked = []
    for m in labels:
        if ord(m.group(1)) - ord("A") == len(picked):
            picked.append(m)
    if len(picked) < 2:
        return None
    texts = []
    for i, m in enumerate(picked):
        end = picked[i + 1].start() if i + 1 < len(picked) else len(tail)
        texts.append(tail[m.end():end].strip().rstrip(",;").strip())
    return texts if all(texts) else None
