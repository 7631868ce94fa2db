"""Checkpoint faults (issue 14): a kill at every file boundary of a save, a torn newest checkpoint, a garbage
marker, a full disk mid-save, and a rerun after a finished training.

Shared with tests/faults/test_ckpt.py. Every fault is injected at `vigos.training.checkpoint.fault_point`, the
named boundaries of a save (after each file is written and fsynced), or by damaging a file the way a kill or a
full disk leaves it; then the training is rerun the way a retried pod reruns it (a fresh trainer on the same
output folder) and its final adapter is compared byte for byte with an uninterrupted run's (same seed).
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

try:
    from fault_cases import Outcome
except ImportError:  # imported by the tests, where benchmarks/ is not on the path as a package root
    Outcome = None  # type: ignore[assignment,misc]

# the boundaries of one single-process save, in order: before anything, each DeepSpeed file, the RNG state, the
# adapter, the history, the marker (the commit), the rotation after it
BOUNDARIES = ("begin", "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt", "rng_rank0.pt",
              "adapter", "history.json", "complete.json", "rotated")
OPTIM = "zero_pp_rank_0_mp_rank_00_optim_states.pt"
LABELS = dict(zip(BOUNDARIES, ("at its start", "after DeepSpeed's model file", "after DeepSpeed's optimizer file",
                              "after the RNG state", "after the adapter", "after the history",
                              "after the marker (committed)", "after the rotation"), strict=True))

# two optimizer steps of one row, a checkpoint after each (the fault hits the second save, so a complete first
# one exists); short completions keep a step about a second on CPU
SETTINGS = ["train.max_steps=2", "train.save_steps=1", "train.global_batch_size=1", "train.sample_log_steps=0",
            "train.max_completion_length=8", "train.save_total_limit=2"]


class Killed(BaseException):
    """The injected kill: a BaseException, so that like SIGKILL no `except Exception` on the way can absorb it."""


def config(model_dir: Path) -> Any:
    from vigos.config import load_config

    return load_config("tiny", overrides=[f"model.name_or_path={model_dir}", *SETTINGS])


def train(model_dir: Path, data: Path, out: Path, **kw: Any) -> Any:
    """One run as a (re)started pod runs it: a fresh trainer on `out`, resuming from what is there."""
    from vigos.training.trainer import ViGOSTrainer

    return ViGOSTrainer(config(model_dir), data, out, progress=False, **kw).train()


@contextlib.contextmanager
def fault_at(name: str, error: BaseException, *, occurrence: int = 2,
             before: Callable[[str], None] | None = None) -> Iterator[list[str]]:
    """Raise `error` the `occurrence`-th time a save reaches boundary `name` (2: in the save of step 2), after
    calling `before(name)` (to damage the file the way a full disk would). Yields the boundaries reached."""
    from vigos.training import checkpoint

    seen: list[str] = []

    def point(reached: str) -> None:
        seen.append(reached)
        if reached == name and seen.count(reached) == occurrence:
            if before is not None:
                before(reached)
            raise error

    with mock.patch.object(checkpoint, "fault_point", point):
        yield seen


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut `path` to a fraction of its size: what a kill or ENOSPC in the middle of writing it leaves."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def after_first_checkpoint(reference: Path, out: Path) -> Path:
    """`out` as the uninterrupted run left it right after committing step 1 (its step-1 folder, nothing else): the
    start of a run whose second save is then interrupted, without training step 1 again."""
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(reference / "checkpoints" / "step-1", out / "checkpoints" / "step-1")
    return out


def adapter_bytes(out: Path) -> bytes:
    return (out / "adapter" / "adapter_model.safetensors").read_bytes()


def bytes_lost(got: bytes, want: bytes) -> int:
    """How many bytes of the adapter differ from the uninterrupted run's (0: bit for bit the same)."""
    if len(got) != len(want):
        return max(len(got), len(want))
    return sum(a != b for a, b in zip(got, want, strict=True))


def history(out: Path) -> list[dict[str, float]]:
    """The metric history the DAG step reads (trainer_state.json)."""
    return json.loads((out / "trainer_state.json").read_text())["history"]


def prepare_inputs(workdir: Path) -> tuple[Path, Path]:
    """The tiny model and a prepared synthetic dataset (the tests use their session fixtures instead)."""
    from vigos.data.synthetic import prepared_synthetic
    from vigos.modeling.tiny import build_tiny_model

    return build_tiny_model(workdir / "model", seed=0), prepared_synthetic(workdir, n=8)


def _rerun(model: Path, data: Path, out: Path, want: bytes) -> tuple[bool, int, float]:
    started = time.perf_counter()
    try:
        train(model, data, out)
    except Exception:  # noqa: BLE001 - a recovery that fails counts as not survived, with everything lost
        return False, len(want), time.perf_counter() - started
    lost = bytes_lost(adapter_bytes(out), want)
    return lost == 0, lost, time.perf_counter() - started


def run(workdir: Path, runs: int) -> list[Outcome]:
    model, data = prepare_inputs(workdir)
    ref = workdir / "reference"
    train(model, data, ref)
    want, want_history = adapter_bytes(ref), history(ref)

    def case(fault: str, inject: Callable[[Path], None], unit: str = "bytes") -> Outcome:
        survived, lost, times = 0, 0.0, []
        for i in range(runs):
            out = workdir / f"{re.sub(r'[^a-z0-9]+', '-', fault.lower())[:40]}-{i}"
            shutil.rmtree(out, ignore_errors=True)
            inject(out)
            ok, n, seconds = _rerun(model, data, out, want)
            if unit == "metrics":  # the DAG step's metrics: steps of history missing or different
                got = history(out) if ok else []
                n = sum(a != b for a, b in zip(got, want_history, strict=False)) + abs(len(got) - len(want_history))
                ok = ok and n == 0
            survived, lost = survived + ok, lost + n
            times.append(seconds)
        return Outcome(fault, runs, survived, lost, unit, sum(times) / len(times))

    def killed_at(boundary: str) -> Callable[[Path], None]:
        def inject(out: Path) -> None:
            after_first_checkpoint(ref, out)
            with contextlib.suppress(Killed), fault_at(boundary, Killed(), occurrence=1):
                train(model, data, out)
        return inject

    def copy_then(damage: Callable[[Path], None]) -> Callable[[Path], None]:
        def inject(out: Path) -> None:
            shutil.copytree(ref, out)
            shutil.rmtree(out / "adapter")  # so the adapter compared is the one the rerun made
            damage(out / "checkpoints" / "step-2")
        return inject

    def disk_full(out: Path) -> None:
        full = OSError(errno.ENOSPC, "No space left on device")
        ckpt = after_first_checkpoint(ref, out) / "checkpoints" / "step-2"
        with contextlib.suppress(Exception), fault_at(OPTIM, full, occurrence=1,
                                                       before=lambda name: truncate(ckpt / name)):
            train(model, data, out)

    rows = [case(f"kill in a save: {LABELS[b]}", killed_at(b)) for b in BOUNDARIES]
    rows.append(case("torn newest checkpoint (optimizer file cut in half)",
                     copy_then(lambda c: truncate(c / OPTIM))))
    rows.append(case("torn RNG file in the newest checkpoint", copy_then(lambda c: truncate(c / "rng_rank0.pt"))))
    rows.append(case("empty marker of the newest checkpoint", copy_then(lambda c: (c / "complete.json").write_text(""))))
    rows.append(case("disk full mid-save, rerun after space is freed", disk_full))
    rows.append(case("rerun after a finished training (metrics to the DAG)",
                     lambda out: shutil.copytree(ref, out), unit="metrics"))
    return rows
