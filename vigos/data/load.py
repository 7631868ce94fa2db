"""Load a raw training set from the Hub or a local path, images left undecoded.

A source is a local path when it exists: a `save_to_disk` folder (a DatasetDict gives the requested split), a
parquet file or a folder of parquet files in the Hub's layout (`data/train-00000-of-00001.parquet`, images as
`{bytes, path}` structs), or a JSONL file (or a folder of them) whose image paths are relative to the file.
Anything else that does not look like a path is a Hub dataset id.

Images stay undecoded (`{bytes, path}` dicts, or path strings from JSONL): decoding here would make one corrupt
image fail the whole load, while data prep can drop and count that row instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
from datasets import Image, LargeList, List
from datasets.data_files import DataFilesDict, get_data_patterns

from vigos.errors import VigosError

IMAGE_COLUMNS: tuple[str, ...] = ("images", "image")
_PARQUET = (".parquet",)
_JSONL = (".jsonl", ".json")


def load_source(source: str, split: str, cache_dir: str | None = None) -> datasets.Dataset:
    """The `split` of `source` (Hub id or local path) as a `datasets.Dataset` with undecoded images.

    `cache_dir` is where `datasets` puts the Arrow copy it makes of parquet files (default: the HF cache);
    data prep points it at its scratch space so a one-off conversion does not pile up in the user's cache.
    """
    path = Path(source).expanduser()
    if path.exists():
        ds = _load_local(path, split, cache_dir)
    elif _looks_like_path(source):
        raise VigosError(
            f"data source {source!r} does not exist; give an existing folder or file (save_to_disk folder, "
            "parquet, JSONL) or a Hub dataset id such as LMMs-Lab-Turtle/Vision-SR1-47K"
        )
    else:
        ds = _load_hub(source, split)
    return _undecode_images(ds)


def _looks_like_path(source: str) -> bool:
    # Hub ids are "name" or "owner/name"; more slashes, a leading ./ or /, or a file extension mean a path.
    return (
        source.startswith(("/", ".", "~"))
        or "\\" in source
        or source.count("/") > 1
        or Path(source).suffix.lower() in (*_PARQUET, *_JSONL, ".arrow")
    )


def _load_hub(source: str, split: str) -> datasets.Dataset:
    try:
        return datasets.load_dataset(source, split=split)
    except ValueError as e:
        if "split" in str(e).lower():
            raise VigosError(f"Hub dataset {source!r} has no split {split!r}: {e}") from e
        raise VigosError(f"could not load Hub dataset {source!r} (split {split!r}): {e}") from e
    except Exception as e:  # network, auth, missing repo: all fixable by the user, all with their own message
        raise VigosError(
            f"could not load Hub dataset {source!r} (split {split!r}): {type(e).__name__}: {e}; check the id, "
            "the network and HF_TOKEN, or pass a local path"
        ) from e


def _load_local(path: Path, split: str, cache_dir: str | None) -> datasets.Dataset:
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return _load_saved(path, split)
        files = _split_files(path, split)
    else:
        files = [path]
    suffixes = {f.suffix.lower() for f in files}
    if suffixes <= set(_PARQUET):
        try:
            return datasets.load_dataset(
                "parquet", data_files=[str(f) for f in files], split="train", cache_dir=cache_dir
            )
        except Exception as e:  # a truncated or foreign file: name it rather than show pyarrow's internals
            bad = _unreadable_parquet(files)
            if bad is not None:
                file, err = bad
                raise VigosError(f"{file}: not a readable parquet file ({type(err).__name__}: {err}); re-download "
                                 "or remove that file") from e
            raise VigosError(f"{path}: could not read parquet: {type(e).__name__}: {e}") from e
    if suffixes <= set(_JSONL):
        return _load_jsonl(files)
    raise VigosError(
        f"{path}: cannot read {', '.join(sorted(suffixes))} files as a dataset; give a save_to_disk folder, "
        "parquet files or JSONL files (not a mix)"
    )


def _unreadable_parquet(files: list[Path]) -> tuple[Path, Exception] | None:
    """The first file pyarrow cannot read, with its error (`datasets` names no file in what it raises). Footers
    first (cheap, and what a truncated or foreign file fails), then whole files; only called after a failure."""
    import pyarrow.parquet as pq

    for read in (lambda f: pq.ParquetFile(f).metadata, pq.read_table):
        for file in files:
            try:
                read(file)
            except Exception as e:  # noqa: BLE001 - pyarrow raises OSError, ArrowInvalid, ...: all mean unreadable
                return file, e
    return None


def _load_saved(path: Path, split: str) -> datasets.Dataset:
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise VigosError(f"{path}: not a readable save_to_disk folder: {e}") from e
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise VigosError(f"{path} has no split {split!r}; its splits: {', '.join(loaded)} (use --split)")
        return loaded[split]
    return loaded


def _split_files(folder: Path, split: str) -> list[Path]:
    """The data files of `split` in `folder`, found with the Hub's own naming rules (`data/train-*`, `train.jsonl`,
    or every file as `train` when no name carries a split)."""
    patterns = get_data_patterns(str(folder))
    resolved = DataFilesDict.from_patterns(patterns, base_path=str(folder))
    splits = {
        str(k): [Path(f) for f in v if Path(f).suffix.lower() in (*_PARQUET, *_JSONL)] for k, v in resolved.items()
    }
    splits = {k: v for k, v in splits.items() if v}
    if not splits:
        raise VigosError(f"{folder}: no save_to_disk dataset, parquet or JSONL files found in this folder")
    if split not in splits:
        raise VigosError(f"{folder} has no split {split!r}; its splits: {', '.join(splits)} (use --split)")
    return sorted(splits[split])


def _load_jsonl(files: list[Path]) -> datasets.Dataset:
    rows: list[dict[str, Any]] = []
    for file in files:
        with open(file, "rb") as f:  # bytes: an undecodable line is then named by file and line, not a traceback
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise VigosError(f"{file}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at byte "
                                     f"{e.start + 1} of the line); re-save the file as UTF-8") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise VigosError(f"{file}:{lineno}: not valid JSON ({e.msg}); fix or remove that line") from e
                if not isinstance(row, dict):
                    raise VigosError(f"{file}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
                rows.append(_jsonl_row(row, file.parent))
    if not rows:
        raise VigosError(f"{', '.join(map(str, files))}: no rows")
    try:
        return datasets.Dataset.from_list(rows)
    except (TypeError, ValueError) as e:  # pyarrow's ArrowInvalid/ArrowTypeError are subclasses of these
        raise VigosError(f"{files[0]}: rows have inconsistent field types ({e})") from e


_TEXT_FIELDS = ("problem", "answer", "problem_id", "data_source", "solution")


def _jsonl_row(row: dict[str, Any], base: Path) -> dict[str, Any]:
    """Resolve image paths against the JSONL file's folder; make scalar fields one type across rows (JSON
    numbers in an answer column would otherwise clash with strings when Arrow infers the column type)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in IMAGE_COLUMNS:
            value = _resolve_images(value, base)
            if key == "images" and not isinstance(value, list) and value is not None:
                value = [value]
        elif key in _TEXT_FIELDS:
            value = None if value is None else value if isinstance(value, str) else json.dumps(value)
        elif key == "options":
            value = None if value is None else [str(o) for o in value] if isinstance(value, list) else [str(value)]
        out[key] = value
    return out


def _resolve_images(value: Any, base: Path) -> Any:
    if isinstance(value, list):
        return [_resolve_images(v, base) for v in value]
    if isinstance(value, str) and "://" not in value:
        return str((base / value).resolve())
    if isinstance(value, dict) and isinstance(value.get("path"), str) and value.get("bytes") is None:
        return str((base / value["path"]).resolve())
    return value


def undecoded_features(feature: Any) -> Any:
    if isinstance(feature, Image):
        return Image(decode=False)
    if isinstance(feature, List):
        return List(undecoded_features(feature.feature), length=feature.length)
    if isinstance(feature, LargeList):
        return LargeList(undecoded_features(feature.feature))
    if isinstance(feature, dict):
        return {k: undecoded_features(v) for k, v in feature.items()}
    return feature


def _undecode_images(ds: datasets.Dataset) -> datasets.Dataset:
    for column in IMAGE_COLUMNS:
        if column in ds.features:
            feature = undecoded_features(ds.features[column])
            if feature != ds.features[column]:
                ds = ds.cast_column(column, feature)
    return ds
