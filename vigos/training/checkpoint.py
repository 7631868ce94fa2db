"""The checkpoint commit protocol: a checkpoint is complete only once its marker says so, and resume checks it.

A save writes every file of `checkpoints/step-N/` and makes it durable (fsync): each rank its DeepSpeed files and its
RNG state, rank 0 the adapter and the metric history. Only then does rank 0 write `step-N/complete.json` (temp +
fsync + rename), which lists every file with its size and SHA-256. Resume takes the newest checkpoint whose marker
exists and whose files match it; a torn one (a kill or a full disk mid-save, a file damaged later) is skipped with
a warning in favour of the previous one, and a checkpoint without this rank's RNG state is never resumed from
(dropout would draw different masks: the run would end with other weights, silently).

Why not DeepSpeed's `latest` file: DeepSpeed writes it before the trainer's RNG states and adapter exist, and an
empty or torn `latest` broke every later retry. Every `torch.load` here is `weights_only=True` (DeepSpeed's own
loads too, through `DurableCheckpointEngine`): a checkpoint on a shared volume cannot run code in the trainer.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

from vigos.volume import sha256_file, write_atomic

MARKER = "complete.json"
HISTORY = "history.json"


def fault_point(name: str) -> None:
    """Called at each file boundary of a save (`name`: the file just made durable, or "begin" / "rotated"). A no-op;
    the fault tests replace it to stop the save exactly there (a kill, a full disk)."""


def rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


# ------------------------------------------------------------------------------------------------ durable files


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems cannot fsync a directory; the files themselves are synced
        if e.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_durable(path: Path, data: str | bytes) -> None:
    """Write `path` atomically and durably: a temp file, fsynced, renamed over it, the folder fsynced. A reader
    sees the old content or the new one, never a torn file, even after a power loss."""
    write_atomic(path, data, fsync=True)
    _fsync_dir(path.parent)


def save_torch(obj: Any, path: Path, *, zipfile: bool = True) -> None:
    """`torch.save`, then fsync; a fault point after the file."""
    torch.save(obj, path, _use_new_zipfile_serialization=zipfile)
    fsync_file(path)
    fault_point(path.name)


def _safe_globals() -> list[Any]:
    """The classes DeepSpeed pickles into a ZeRO checkpoint besides tensors and builtins (found by loading one)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def load_torch(path: str | Path, map_location: Any = None) -> Any:
    """`torch.load(weights_only=True)` with DeepSpeed's few checkpoint classes allowed, nothing else."""
    with torch.serialization.safe_globals(_safe_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


class DurableCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine with each file fsynced by the rank that wrote it (right on a local disk
    and on a shared volume alike) and weights-only loads."""

    def save(self, state_dict: Any, path: str) -> None:
        save_torch(state_dict, Path(path), zipfile=self.zipfile_serialization)

    def load(self, path: str, map_location: Any = None) -> Any:
        return load_torch(path, map_location)


def install(engine: Any) -> None:
    """Give a DeepSpeed engine the durable, weights-only checkpoint engine (ours writes torch files only)."""
    old = engine.checkpoint_engine
    if type(old) is not TorchCheckpointEngine:
        raise TypeError(f"expected DeepSpeed's TorchCheckpointEngine, got {type(old).__name__}")
    new = DurableCheckpointEngine()
    new.zipfile_serialization = old.zipfile_serialization
    engine.checkpoint_engine = new


# ------------------------------------------------------------------------------------------------ commit and check


def step_folders(folder: Path) -> list[tuple[int, Path]]:
    """The `step-N` folders under `folder`, by N ascending."""
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in folder.iterdir()
                  if p.is_dir() and (m := re.fullmatch(r"step-(\d+)", p.name)))


def _files(ckpt: Path) -> list[Path]:
    # temp files of an interrupted atomic write are not part of the checkpoint
    return sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != MARKER and not p.name.startswith("."))


def commit(ckpt: Path, step: int, world_size: int) -> None:
    """Mark `ckpt` complete (rank 0, once every rank's files are written): make its files and folders durable,
    then write the marker listing each file's size and SHA-256, atomically. Before the marker exists the
    checkpoint does not count; after, it verifies."""
    files = _files(ckpt)
    for path in files:
        fsync_file(path)
    for sub in sorted({p.parent for p in files}, key=lambda p: -len(p.parts)):
        _fsync_dir(sub)
    manifest = {"step": step, "world_size": world_size,
                "files": {p.relative_to(ckpt).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                          for p in files}}
    write_durable(ckpt / MARKER, json.dumps(manifest, indent=1))
    _fsync_dir(ckpt.parent)
    fault_point(MARKER)


def verify(ckpt: Path) -> tuple[dict[str, Any] | None, str]:
    """(`ckpt`'s marker, "") when it is complete and intact (every rank's RNG state included), else (None, why)."""
    marker = ckpt / MARKER
    if not marker.is_file():
        return None, f"no {MARKER} (its save was interrupted)"
    text = marker.read_text()  # an I/O error is raised, not taken for a torn checkpoint (and skipped)
    try:
        manifest = json.loads(text)
        saved_by = int(manifest["world_size"])
        int(manifest["step"])
        files = {rel: (int(w["bytes"]), str(w["sha256"])) for rel, w in manifest["files"].items()}
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        return None, f"its {MARKER} is unreadable ({type(e).__name__}: {e})"
    missing_rng = [rng_file(r) for r in range(saved_by) if rng_file(r) not in files]
    if missing_rng:
        return None, f"its {MARKER} lists no {missing_rng[0]} (no RNG state)"
    for rel, (size, sha256) in files.items():
        path = ckpt / rel
        if not path.is_file():
            return None, f"{rel} is missing"
        if path.stat().st_size != size:
            return None, f"{rel} is {path.stat().st_size} bytes, its {MARKER} says {size}"
        if sha256_file(path) != sha256:
            return None, f"{rel} does not match its SHA-256 in {MARKER}"
    return manifest, ""


def newest_complete(folder: Path, warn: Callable[[str], None]) -> tuple[Path, dict[str, Any]] | None:
    """The newest verified checkpoint under `folder` and its marker, or None; each newer one skipped is `warn`ed
    about with the reason."""
    for _, ckpt in reversed(step_folders(folder)):
        manifest, why = verify(ckpt)
        if manifest is not None:
            return ckpt, manifest
        warn(f"checkpoint {ckpt} is not usable: {why}; trying the previous one")
    return None


def discard(ckpt: Path) -> None:
    """Delete a checkpoint folder, marker first: a half-deleted checkpoint is never taken for a complete one."""
    (ckpt / MARKER).unlink(missing_ok=True)
    if ckpt.exists():
        shutil.rmtree(ckpt)  # errors are the caller's: a save fails with them, rotation warns


def to_delete(folder: Path, keep: int, newest: int) -> list[Path]:
    """What rotation deletes once checkpoint `newest` is committed: every other folder without a marker
    (interrupted saves), every folder past `newest` (torn ones a resume skipped: this run replays their steps), and
    the committed ones beyond the newest `keep` (>= 1, checked at start), oldest first."""
    folders = step_folders(folder)
    marked = [p for n, p in folders if n <= newest and (p / MARKER).is_file()]
    kept = set(marked[-keep:])
    return [p for _, p in folders if p not in kept]
