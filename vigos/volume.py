"""Large data by reference: folders on the shared volume, small manifests in the KFP artifacts.

A merged 7B model is 15 GB. As an `Output[Model]` it would go up to KFP's object store once and come down again for
every step that reads it (evaluate, register, publish): ~30 GB of object-store traffic per run, more than a default
KFP install's MinIO holds. So every large output lives on the shared volume (the `vigos-cache` PVC on a cluster, a
local folder in the demo), in a folder keyed by what produced it:

    <volume_root>/<KFP run id>/train/          checkpoints, trainer_state.json, adapter/
    <volume_root>/<KFP run id>/merged/         the merged model
    <volume_root>/<KFP run id>/eval-<label>/   responses/ (a retried pod resumes them), grades/, scores.json, report/
    <volume_root>/<KFP run id>/hub/            the Hub staging folder (hard links, not a copy)
    <volume_root>/datasets/<inputs hash>/      prepared data (shared by runs with the same data inputs)

and its KFP artifact holds only `vigos_manifest.json`: the folder's path and each file's size and sha256, so the
KFP UI and lineage still show what was produced, and a consumer checks that the folder it reads is that output
(a missing volume or a changed file is an error naming the file, not a silent wrong result).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vigos.errors import VigosError

MANIFEST = "vigos_manifest.json"
_CHUNK = 8 << 20


def run_folder(volume_root: str | Path, kfp_run_id: str, name: str) -> Path:
    """`<volume_root>/<kfp_run_id>/<name>`, created; the same path for every retry of the run's step."""
    if not kfp_run_id or "/" in kfp_run_id or kfp_run_id in (".", ".."):
        raise VigosError(f"a KFP run id names a folder on the shared volume; got {kfp_run_id!r}")
    folder = Path(volume_root) / kfp_run_id / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: str | Path, data: str | bytes, *, fsync: bool = False) -> None:
    """Replace `path` with `data` atomically: a temp file beside it (`.<name>.<random>.tmp`, which `is_temp`
    recognises), renamed over it; the temp file is removed if the write fails. Readers see the old content or the
    new one, never half a file. `fsync`: flushed to disk before the rename (state a crash must not tear)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_temp(path: Path) -> bool:
    """A temp file of an atomic write (`.<name>.<random>.tmp`, `.<name>.tmp`, `.<name>.tmp.png`): left behind only
    when the writer was killed between writing it and renaming it into place."""
    return path.name.startswith(".") and (path.name.endswith(".tmp") or ".tmp." in path.name)


def remove_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temp files killed writers left under `folder` (call it when no writer is running there), so
    they never reach an artifact upload. Returns what was removed."""
    removed = [p for p in Path(folder).rglob(".*") if p.is_file() and is_temp(p)]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def _files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        # hidden files, temp files of an interrupted atomic write among them, are not part of the output
        if path.is_file() and not path.name.startswith(".") and path.name != MANIFEST:
            yield path


def write_manifest(artifact_dir: str | Path, folder: str | Path, kind: str, *, hashes: bool = True,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Describe `folder` in `<artifact_dir>/vigos_manifest.json` (written atomically) and return the manifest."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise VigosError(f"{folder}: the {kind} folder to describe does not exist")
    files = []
    for path in _files(folder):
        entry: dict[str, Any] = {"path": path.relative_to(folder).as_posix(), "size": path.stat().st_size}
        if hashes:
            entry["sha256"] = sha256_file(path)
        files.append(entry)
    manifest = {"kind": kind, "path": str(folder), "files": files, "total_bytes": sum(f["size"] for f in files),
                **(extra or {})}
    write_atomic(Path(artifact_dir) / MANIFEST, json.dumps(manifest, indent=2))
    return manifest


def read_manifest(artifact_dir: str | Path) -> dict[str, Any]:
    path = Path(artifact_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise VigosError(f"{artifact_dir}: no {MANIFEST}; this artifact was not written by a ViGOS step") from None
    except ValueError as e:
        raise VigosError(f"{path}: not a readable manifest ({e})") from None


def resolve(artifact_dir: str | Path, *, verify_hashes: bool = False) -> Path:
    """The folder an artifact's manifest names, checked: every listed file present with its size (and its sha256
    with `verify_hashes`). An artifact that is itself a plain folder (no manifest) resolves to itself."""
    if not (Path(artifact_dir) / MANIFEST).is_file():
        return Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    folder = Path(manifest["path"])
    if not folder.is_dir():
        raise VigosError(
            f"{folder} ({manifest['kind']}) is not there: the shared volume holding it is not mounted in this pod "
            "or the folder was deleted; mount the volume the pipeline's `volume_root` points at"
        )
    for entry in manifest["files"]:
        path = folder / entry["path"]
        if not path.is_file():
            raise VigosError(f"{path}: listed in the {manifest['kind']} manifest but missing on the shared volume")
        if path.stat().st_size != entry["size"]:
            raise VigosError(f"{path}: {path.stat().st_size} bytes, the {manifest['kind']} manifest says "
                             f"{entry['size']}: the folder changed after it was written")
        if verify_hashes and "sha256" in entry and sha256_file(path) != entry["sha256"]:
            raise VigosError(f"{path}: sha256 differs from the {manifest['kind']} manifest")
    return folder


def describe(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the KFP UI shows for an artifact (its metadata): where the data is and how big it is."""
    return {"path": manifest["path"], "kind": manifest["kind"], "files": len(manifest["files"]),
            "total_bytes": manifest["total_bytes"]}
