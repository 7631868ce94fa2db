"""User-facing errors: one actionable line (what, which record/field/file, how to fix).

The CLI prints these without a traceback (unless --debug); anything else is a bug and gets one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path


class VigosError(Exception):
    """An error the user can fix: bad input, missing file, wrong option."""


class DiskError(VigosError):
    """A write failed for want of space or permission; the message names the folder, its free space and the bytes
    needed when known."""


_DISK = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
_FIX = {
    errno.ENOSPC: "free space there or point the output at a larger volume",
    errno.EDQUOT: "free space there or raise the quota",
    errno.EROFS: "mount it read-write or choose another output folder",
    errno.EACCES: f"make it writable by this user (uid {os.geteuid()}) or choose another output folder",
    errno.EPERM: f"make it writable by this user (uid {os.geteuid()}) or choose another output folder",
}
# Libraries that report a failed write without an OSError: safetensors ("... (os error 28)"), pyarrow
# ("[errno 28] ..."), torch's zip writer ("[enforce fail at inline_container.cc:...] unexpected pos 128 vs 0",
# "PytorchStreamWriter failed writing file": no errno at all; in practice a full disk).
_ERRNO_TEXT = re.compile(r"(?:os error|errno)\s*(\d+)", re.IGNORECASE)
_TORCH_WRITE = re.compile(r"inline_container\.cc.*unexpected pos|PytorchStreamWriter failed writing")


def _errno_of(exc: BaseException) -> int | None:
    seen = 0
    while exc is not None and seen < 8:  # the error itself or what it wraps
        if isinstance(exc, OSError) and exc.errno in _DISK:
            return exc.errno
        text = str(exc)
        if (m := _ERRNO_TEXT.search(text)) and int(m.group(1)) in _DISK:
            return int(m.group(1))
        if _TORCH_WRITE.search(text):
            return errno.ENOSPC
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def disk_error(exc: BaseException, folder: str | Path | None = None, needed: int | None = None) -> DiskError | None:
    """`exc` as a DiskError naming `folder` (default: the folder of the file the OSError names), its free space and
    `needed` bytes; None when `exc` is not a full, read-only or forbidden disk."""
    code = _errno_of(exc)
    filename = getattr(exc, "filename", None)
    if code is None or (folder is None and filename is None):
        return None
    where = Path(folder) if folder is not None else Path(os.fsdecode(filename)).parent
    if code in (errno.EACCES, errno.EPERM) and filename and not Path(os.fsdecode(filename)).is_relative_to(where):
        return None  # a file the block reads, not the folder it writes
    probe = where
    while not probe.exists() and probe != probe.parent:  # the folder may not have been created yet
        probe = probe.parent
    try:
        usage = shutil.disk_usage(probe)
        space = f"{human_bytes(usage.free)} free of {human_bytes(usage.total)}"
    except OSError:
        space = "free space unknown"
    if needed is not None:
        space += f", {human_bytes(needed)} needed"
    file = f" (writing {os.fsdecode(filename)})" if filename else ""
    return DiskError(f"cannot write {where}: {_DISK[code]} ({space}){file}; {_FIX[code]}")


@contextlib.contextmanager
def disk_writes(folder: str | Path, needed: int | None = None) -> Iterator[None]:
    """Turn a full, read-only or forbidden disk met inside the block into one DiskError line naming `folder`."""
    try:
        yield
    except VigosError:
        raise
    except Exception as e:
        err = disk_error(e, folder, needed)
        if err is None:
            raise
        raise err from e


class Terminated(SystemExit):
    """This process got SIGTERM (a cancelled KFP run, a preempted pod) inside `sigterm_exits`: exit code 143."""


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """SIGTERM raises `Terminated` (a SystemExit with code 143) for the duration, so `finally` blocks run: scratch
    folders removed, a child server stopped (Python's default just dies). Only the main thread may set handlers;
    elsewhere nothing changes."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:  # noqa: ARG001
        raise Terminated(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
