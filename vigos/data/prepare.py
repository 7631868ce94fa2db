"""Data prep: raw Vision-SR1-style rows -> a validated, filtered, deduplicated training set + stats.json.

Per row (in parallel, `datasets.map(num_proc=...)`): find the images, fully decode the first one (the student sees
only the first), normalise the answer, classify it, and either keep the row or mark it with one drop reason.
Then, in one sequential pass, drop marked rows and duplicates, optionally sample `max_samples` rows with a seeded
shuffle, and write the result atomically (a scratch folder beside `output_dir`, renamed into place at the end; removed
on every exit, and a killed prep's is removed by the next one).

Bad input never raises here: every row that cannot be used is dropped and counted under one of `DROP_REASONS`
(checked in that order; the first that applies is the row's reason) and listed in `drops.jsonl`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
from datasets import Features, Image, List, Value
from PIL import Image as PILImage

from vigos.config import DataConfig
from vigos.data.answers import ANSWER_TYPES, answer_type, normalize_answer
from vigos.data.load import load_source
from vigos.errors import VigosError, disk_writes, sigterm_exits

logger = logging.getLogger(__name__)

DROP_REASONS: tuple[str, ...] = (
    "no_image",
    "huge_image",  # judged from the header alone: a bomb is never decoded, readable or not
    "unreadable_image",
    "tiny_image",
    "empty_problem",
    "empty_answer",
    "duplicate",
)
REQUIRED_COLUMNS: tuple[str, ...] = ("problem", "images", "answer")
STATS_FILE = "stats.json"
DROPS_FILE = "drops.jsonl"

OUTPUT_FEATURES = Features(
    {
        "problem": Value("string"),
        "images": List(Image()),
        "answer": Value("string"),
        "answer_raw": Value("string"),
        "answer_type": Value("string"),
        "problem_id": Value("string"),
        "data_source": Value("string"),
        "options": List(Value("string")),
        "solution": Value("string"),
    }
)
# Per-row results the sequential pass needs; removed before writing.
_WORK_FEATURES = Features(
    {
        **OUTPUT_FEATURES,
        "_drop": Value("string"),
        "_key": Value("string"),
        "_width": Value("int32"),
        "_height": Value("int32"),
        "_images_removed": Value("int32"),
    }
)
_OPTIONAL_TEXT = ("problem_id", "data_source", "solution")
_TEXT_DTYPES = ("string", "large_string", "null")  # null: an all-empty column, dropped row by row as empty
_IMAGE_TOKEN = re.compile(r"<image>", re.IGNORECASE)


def prepare(cfg: DataConfig, output_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Run data prep for `cfg` and write the dataset (`save_to_disk` format), `stats.json` and `drops.jsonl` to
    `output_dir` (replaced if it exists). Returns the stats. Raises VigosError for bad options, an unreadable
    source, a missing required column, or when no row survives filtering."""
    _check_options(cfg)
    out = Path(output_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise VigosError(f"output {out} exists and is not a folder; choose another --output")
    start = time.perf_counter()
    phases: dict[str, float] = {}
    # every phase writes beside `out` (the Arrow copy of the source, the checked rows, the result)
    with disk_writes(out.parent), _scratch_folder(out) as scratch, _progress_bars(progress):
        t = time.perf_counter()
        raw = load_source(cfg.source, cfg.split, cache_dir=str(scratch / "cache"))
        image_column = _check_columns(raw, cfg.source)
        phases["load"] = time.perf_counter() - t

        t = time.perf_counter()
        work = raw.map(
            _process_batch,
            batched=True,
            batch_size=128,
            writer_batch_size=128,
            fn_kwargs={"image_column": image_column, "min_image_size": cfg.min_image_size,
                       "max_image_pixels": cfg.max_image_pixels},
            remove_columns=raw.column_names,
            features=_WORK_FEATURES,
            num_proc=cfg.num_proc if cfg.num_proc > 1 else None,
            cache_file_name=str(scratch / "cache" / "rows.arrow"),
            load_from_cache_file=False,
            desc="Checking rows",
        )
        phases["process"] = time.perf_counter() - t

        t = time.perf_counter()
        keep, dropped, drop_log = _filter(work)
        kept = work.select(keep)
        rows_valid = len(kept)
        if cfg.max_samples is not None:
            kept = kept.shuffle(seed=cfg.seed).select(range(min(cfg.max_samples, len(kept))))
        stats = _stats(cfg, len(raw), rows_valid, kept, dropped, work)
        phases["filter"] = time.perf_counter() - t
        if len(kept) == 0:
            raise VigosError(
                f"no rows left from {cfg.source} ({len(raw)} in; dropped: {_drops_line(dropped)}); "
                "check the source, --split, --min-image-size and --max-samples"
            )

        t = time.perf_counter()
        staged = scratch / "out"
        kept.remove_columns([c for c in _WORK_FEATURES if c.startswith("_")]).save_to_disk(str(staged))
        with open(staged / DROPS_FILE, "w") as f:
            f.writelines(json.dumps(entry) + "\n" for entry in drop_log)
        phases["save"] = time.perf_counter() - t
        stats["seconds"] = round(time.perf_counter() - start, 3)
        stats["seconds_by_phase"] = {k: round(v, 3) for k, v in phases.items()}
        (staged / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
        _publish(staged, out, scratch)
    logger.info("data prep: %d rows in, %d out; dropped: %s", stats["rows_in"], stats["rows_out"], _drops_line(dropped))
    return stats


def _check_options(cfg: DataConfig) -> None:
    if cfg.num_proc < 1:
        raise VigosError(f"num_proc must be >= 1, got {cfg.num_proc}")
    if cfg.min_image_size < 0:
        raise VigosError(f"min_image_size must be >= 0, got {cfg.min_image_size}")
    if cfg.max_samples is not None and cfg.max_samples < 1:
        raise VigosError(f"max_samples must be >= 1 (or unset to keep every row), got {cfg.max_samples}")


def _check_columns(ds: datasets.Dataset, source: str) -> str:
    """The name of the image column; a VigosError naming every missing required column otherwise."""
    columns = ds.column_names
    image_column = "images" if "images" in columns else "image" if "image" in columns else None
    missing = [c for c in REQUIRED_COLUMNS if c not in columns and not (c == "images" and image_column)]
    if missing:
        names = ", ".join(f"'{c}'" + (" (or 'image')" if c == "images" else "") for c in missing)
        raise VigosError(
            f"{source}: missing required column{'s' if len(missing) > 1 else ''} {names}; "
            f"columns found: {', '.join(columns) or '(none)'}"
        )
    assert image_column is not None
    for column in ("problem", "answer"):
        feature = ds.features[column]
        # anything but text would reach the rows as str(value): b'...' for bytes, "0" for an int, silently
        if not (isinstance(feature, Value) and feature.dtype in _TEXT_DTYPES):
            kind = feature.dtype if isinstance(feature, Value) else type(feature).__name__
            fix = ("decode it as UTF-8 text" if "binary" in kind
                   else f"cast it to strings, e.g. ds.cast_column('{column}', Value('string'))")
            raise VigosError(f"{source}: column '{column}' holds {kind} values, not text; {fix}, and run again")
    return image_column


# --- per-row work (runs in worker processes: module-level, no shared state) ---------------------------------


def _process_batch(batch: dict[str, list[Any]], image_column: str, min_image_size: int,
                   max_image_pixels: int | None = None) -> dict[str, list[Any]]:
    n = len(batch["problem"])
    out: dict[str, list[Any]] = {name: [] for name in _WORK_FEATURES}
    for i in range(n):
        row = _process_row(
            problem=batch["problem"][i],
            images=batch[image_column][i],
            answer=batch["answer"][i],
            options=batch["options"][i] if "options" in batch else None,
            extra={k: batch[k][i] if k in batch else None for k in _OPTIONAL_TEXT},
            min_image_size=min_image_size,
            max_image_pixels=max_image_pixels,
        )
        for name, value in row.items():
            out[name].append(value)
    return out


def _process_row(
    problem: Any, images: Any, answer: Any, options: Any, extra: dict[str, Any], min_image_size: int,
    max_image_pixels: int | None = None,
) -> dict[str, Any]:
    problem_text = "" if problem is None else str(problem)
    answer_raw = "" if answer is None else answer if isinstance(answer, str) else str(answer)
    answer_norm = normalize_answer(answer_raw)
    option_list = options_list(options)
    row: dict[str, Any] = {
        "problem": problem_text,
        "images": [],
        "answer": answer_norm,
        "answer_raw": answer_raw,
        "answer_type": answer_type(answer_norm, option_list),
        "problem_id": _text_or_none(extra["problem_id"]),
        "data_source": _text_or_none(extra["data_source"]),
        "options": option_list,
        "solution": _text_or_none(extra["solution"]),
        "_drop": None,
        "_key": None,
        "_width": None,
        "_height": None,
        "_images_removed": 0,
    }
    found = [image_bytes(v) for v in as_image_list(images)]
    if not found or found[0] is None:
        row["_drop"] = "no_image"
        return row
    first, first_name = found[0]
    if first is None:
        row["_drop"] = "unreadable_image"
        return row
    size, reason = probe_image(first, max_image_pixels)
    if reason is not None:
        row["_drop"] = reason
        return row
    if min(size) < min_image_size:
        row["_drop"] = "tiny_image"
        return row
    if not _IMAGE_TOKEN.sub("", problem_text).strip():
        row["_drop"] = "empty_problem"
        return row
    if not answer_norm:
        row["_drop"] = "empty_answer"
        return row
    # Extra images are passed through undecoded (only the first is shown to the student); one whose bytes
    # cannot be read at all is left out rather than costing the row.
    kept = [{"bytes": first, "path": first_name}]
    kept += [{"bytes": f[0], "path": f[1]} for f in found[1:] if f is not None and f[0] is not None]
    row["images"] = kept
    row["_images_removed"] = len(found) - len(kept)
    row["_width"], row["_height"] = size
    image_digest = hashlib.sha1(first).digest()
    row["_key"] = hashlib.sha1(problem_text.strip().encode("utf-8") + b"\0" + image_digest).hexdigest()
    return row


def as_image_list(images: Any) -> list[Any]:
    if images is None:
        return []
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


def image_bytes(value: Any) -> tuple[bytes | None, str | None] | None:
    """(encoded bytes or None if unreadable, file name) for one image in any accepted form; None for no image.

    Accepted: raw bytes, a `{bytes, path}` dict (the Hub's parquet layout), a path string, a PIL image. The
    original bytes are kept as they are: re-encoding would change them (and cost time) for nothing.
    """
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), None
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is not None:
            return bytes(data), path
        if path is None:
            return None
        return _read_file(path), os.path.basename(path)
    if isinstance(value, (str, Path)):
        return _read_file(str(value)), os.path.basename(str(value))
    if isinstance(value, PILImage.Image):
        filename = getattr(value, "filename", "") or ""
        if filename and os.path.isfile(filename):
            return _read_file(filename), os.path.basename(filename)
        buf = io.BytesIO()
        try:
            value.save(buf, format="PNG")  # an in-memory image has no original bytes to keep
        except (OSError, ValueError):
            return None, None
        return buf.getvalue(), None
    return None, None


def _read_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def probe_image(data: bytes, max_pixels: int | None = None) -> tuple[tuple[int, int] | None, str | None]:
    """((width, height), None) for a usable image, else (size or None, "huge_image" / "unreadable_image").

    The pixel count comes from the header, before any decoding, so an image over `max_pixels` costs no memory.
    Under the cap the image is fully decoded: truncated files pass `Image.open` and only fail when the pixels are
    read, which would otherwise happen in the middle of training. PIL's own bomb guard becomes a drop reason,
    not a warning per row (its hard limit, twice `Image.MAX_IMAGE_PIXELS`, is the highest cap RANGES allow).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data)) as img:
                if max_pixels is not None and img.width * img.height > max_pixels:
                    return img.size, "huge_image"
                img.load()
                return img.size, None
    except PILImage.DecompressionBombError:
        return None, "huge_image"
    # PIL raises OSError, SyntaxError, ValueError...: all mean the image is unusable.
    except Exception:  # noqa: BLE001
        return None, "unreadable_image"


def decoded_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a fully decodable image (no pixel cap beyond PIL's own), or None."""
    size, reason = probe_image(data)
    return size if reason is None else None


def options_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            parsed = json.loads(value)  # some datasets store the option list as a JSON string
        except json.JSONDecodeError:
            parsed = None
        value = parsed if isinstance(parsed, list) else [value] if value.strip() else []
    if not isinstance(value, (list, tuple)):
        value = [value]
    options = [str(o) for o in value if o is not None]
    return options or None


def _text_or_none(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


# --- sequential pass ----------------------------------------------------------------------------------------


def _filter(work: datasets.Dataset) -> tuple[list[int], dict[str, int], list[dict[str, Any]]]:
    """Indices to keep, drop counts for every reason, and one log entry per dropped row (first copy wins)."""
    cols = work.select_columns(["_drop", "_key", "problem_id"]).to_dict()
    dropped = dict.fromkeys(DROP_REASONS, 0)
    seen: set[str] = set()
    keep: list[int] = []
    log: list[dict[str, Any]] = []
    for i, (reason, key, problem_id) in enumerate(zip(cols["_drop"], cols["_key"], cols["problem_id"], strict=True)):
        if reason is None and key in seen:
            reason = "duplicate"
        if reason is not None:
            dropped[reason] += 1
            log.append({"row": i, "problem_id": problem_id, "reason": reason})
            logger.debug("dropped row %d (problem_id=%s): %s", i, problem_id, reason)
            continue
        seen.add(key)
        keep.append(i)
    return keep, dropped, log


def _stats(
    cfg: DataConfig,
    rows_in: int,
    rows_valid: int,
    kept: datasets.Dataset,
    dropped: dict[str, int],
    work: datasets.Dataset,
) -> dict[str, Any]:
    cols = kept.select_columns(["answer_type", "_width", "_height"]).to_dict()
    types = Counter(cols["answer_type"])
    return {
        "source": cfg.source,
        "split": cfg.split,
        "rows_in": rows_in,
        "rows_valid": rows_valid,
        "rows_out": len(kept),
        "dropped": dropped,
        "images_removed": int(sum(work.select_columns(["_images_removed"]).to_dict()["_images_removed"])),
        "answer_types": {t: types.get(t, 0) for t in ANSWER_TYPES},
        "image_size": {"width": _percentiles(cols["_width"]), "height": _percentiles(cols["_height"])},
        "config": {
            "min_image_size": cfg.min_image_size,
            "max_image_pixels": cfg.max_image_pixels,
            "max_samples": cfg.max_samples,
            "seed": cfg.seed,
            "num_proc": cfg.num_proc,
        },
    }


def _percentiles(values: list[int]) -> dict[str, float | None]:
    import numpy as np

    if not values:
        return {"p5": None, "p50": None, "p95": None}
    p5, p50, p95 = np.percentile(np.asarray(values), [5, 50, 95])
    return {"p5": float(p5), "p50": float(p50), "p95": float(p95)}


def _drops_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none"


def summary_lines(stats: dict[str, Any]) -> list[str]:
    """A few human lines about a `prepare` result (the CLI prints them; a pipeline step can log them)."""
    return [
        f"rows in {stats['rows_in']}, out {stats['rows_out']} ({stats['seconds']:.1f}s)",
        f"dropped: {_drops_line(stats['dropped'])}",
        f"answer types: {_drops_line(stats['answer_types'])}",
    ]


# --- output -------------------------------------------------------------------------------------------------


def _publish(staged: Path, out: Path, scratch: Path) -> None:
    """Move the finished dataset into place; an existing `out` is replaced (KFP hands a fresh path anyway)."""
    if out.exists():
        try:
            out.rename(scratch / "previous")  # removed with the scratch folder
        except OSError:
            # `out` is a mount point or otherwise cannot move: empty it and move the files in instead.
            for child in out.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
            for child in staged.iterdir():
                shutil.move(str(child), out / child.name)
            return
    staged.rename(out)


_LOCK = ".lock"


@contextlib.contextmanager
def _scratch_folder(out: Path) -> Iterator[Path]:
    """A scratch folder beside `out` (same filesystem: the final rename is atomic), removed on every exit.

    An exception or Ctrl-C runs the `finally`; so does SIGTERM (a cancelled or evicted pod), turned into SystemExit
    while data prep runs. A SIGKILL runs nothing: the folder holds an flock for as long as its process lives, and the
    next prep beside `out` removes every scratch folder whose lock it can take (a concurrent prep keeps its own).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out.name}.prep-"
    for stale in out.parent.glob(f"{prefix}*"):
        _remove_if_unlocked(stale)
    scratch = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
    lock = open(scratch / _LOCK, "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        with sigterm_exits():
            yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        lock.close()


def _remove_if_unlocked(folder: Path) -> None:
    try:
        lock = open(folder / _LOCK)
    except OSError:  # no lock yet (being created this instant) or not ours: leave it
        return
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # a live prep holds it
        logger.info("removing %s, left by a data prep that was killed", folder)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Hide datasets' progress bars for the duration when not `enabled`, then restore the caller's setting.
    (`enabled` does not force them on: HF_DATASETS_DISABLE_PROGRESS_BARS still wins.)"""
    if enabled or not datasets.is_progress_bar_enabled():
        yield
        return
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.enable_progress_bars()
