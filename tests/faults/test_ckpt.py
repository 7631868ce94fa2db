"""Checkpoint faults (issue 14): a kill at every file boundary of a save, torn and garbage checkpoints, a full disk
mid-save, a rerun after a finished training, and weights-only loads.

Each fault is injected at a named point (`vigos.training.checkpoint.fault_point`) or by damaging a file the way a
kill or a full disk leaves it; the recovery is a rerun on the same folder, as a retried pod does, and must end with
the uninterrupted run's adapter, bit for bit. Real trainer, DeepSpeed and tiny model throughout.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from vigos.errors import VigosError
from vigos.training import checkpoint
from vigos.training.checkpoint import MARKER

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from fault_cases import checkpoints as faults  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
Killed = faults.Killed


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from vigos.data.synthetic import prepared_synthetic

    return prepared_synthetic(tmp_path_factory.mktemp("ckpt-data"), n=8)


@pytest.fixture(scope="module")
def reference(tiny_model_dir, data, tmp_path_factory):
    """The uninterrupted run: two steps, a checkpoint after each."""
    out = tmp_path_factory.mktemp("ckpt-ref") / "out"
    with faults.fault_at("never", Killed()) as seen:  # records the boundaries every save passes
        faults.train(tiny_model_dir, data, out)
    assert seen == [*faults.BOUNDARIES, *faults.BOUNDARIES]  # the boundaries the kill test walks are the real ones
    return out


def copy_of(reference: Path, tmp_path: Path) -> Path:
    """The reference run's folder without its final adapter: a rerun must remake it from the checkpoints."""
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    shutil.rmtree(out / "adapter")
    return out


def untimed(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """A history without the wall-clock metrics, which a replayed step cannot repeat."""
    return [{k: v for k, v in h.items() if not k.endswith("_seconds") and k != "tokens_per_second"} for h in history]


def assert_same_adapter(out: Path, reference: Path) -> None:
    assert faults.bytes_lost(faults.adapter_bytes(out), faults.adapter_bytes(reference)) == 0


# after each file of a save (the benchmark also kills before the first and after the rotation)
@pytest.mark.parametrize("boundary", faults.BOUNDARIES[1:-1])
def test_kill_at_every_file_boundary_of_a_save_resumes_bit_for_bit(tiny_model_dir, data, reference, tmp_path,
                                                                   boundary):
    out = faults.after_first_checkpoint(reference, tmp_path / "out")
    with pytest.raises(Killed), faults.fault_at(boundary, Killed(), occurrence=1):  # in the save of step 2
        faults.train(tiny_model_dir, data, out)
    committed = faults.BOUNDARIES.index(boundary) >= faults.BOUNDARIES.index(MARKER)
    assert (out / "checkpoints" / "step-2" / MARKER).is_file() == committed  # the marker is the commit point
    result = faults.train(tiny_model_dir, data, out)
    assert result.resumed_from == (2 if committed else 1)
    assert_same_adapter(out, reference)
    assert untimed(faults.history(out)) == untimed(faults.history(reference))  # step 1's from the checkpoint


@pytest.mark.parametrize(("damage", "why"), [
    (lambda c: faults.truncate(c / faults.OPTIM), f"{faults.OPTIM} is \\d+ bytes, its complete.json says \\d+"),
    (lambda c: faults.truncate(c / "rng_rank0.pt"), "rng_rank0.pt is \\d+ bytes"),
    (lambda c: (c / "adapter" / "adapter_model.safetensors").write_bytes(
        bytes(len((c / "adapter" / "adapter_model.safetensors").read_bytes()))), "does not match its SHA-256"),
    (lambda c: (c / MARKER).write_text(""), "its complete.json is unreadable \\(JSONDecodeError"),
    (lambda c: (c / MARKER).write_text('{"step": 2, "world_size": 1, "files": ["x"]}'), "unreadable"),
    (lambda c: (c / MARKER).unlink(), "no complete.json \\(its save was interrupted\\)"),
    (lambda c: (c / "rng_rank0.pt").unlink(), "rng_rank0.pt is missing"),
], ids=["optimizer-cut", "rng-cut", "adapter-zeroed", "marker-empty", "marker-garbage", "no-marker", "no-rng"])
def test_torn_newest_checkpoint_is_skipped_with_its_reason(reference, tmp_path, damage, why):
    out = copy_of(reference, tmp_path)
    damage(out / "checkpoints" / "step-2")
    warnings: list[str] = []
    ckpt, marker = checkpoint.newest_complete(out / "checkpoints", warnings.append)
    assert ckpt.name == "step-1" and marker["step"] == 1
    assert len(warnings) == 1 and re.search(why, warnings[0]), warnings
    assert str(out / "checkpoints" / "step-2") in warnings[0]


def test_torn_newest_falls_back_to_the_previous_with_a_warning(tiny_model_dir, data, reference, tmp_path, capsys):
    out = copy_of(reference, tmp_path)
    faults.truncate(out / "checkpoints" / "step-2" / "rng_rank0.pt")
    result = faults.train(tiny_model_dir, data, out)
    assert result.resumed_from == 1
    assert_same_adapter(out, reference)
    printed = capsys.readouterr().out
    assert "[vigos] warning: checkpoint" in printed and "rng_rank0.pt is" in printed and "trying the previous" in printed
    # the torn one was replaced by a committed save of the same step
    assert checkpoint.verify(out / "checkpoints" / "step-2")[0] is not None


def test_nothing_complete_starts_over_with_a_warning(tiny_model_dir, reference, tmp_path):
    out = copy_of(reference, tmp_path)
    for n in (1, 2):
        (out / "checkpoints" / f"step-{n}" / MARKER).write_text("garbage")
    warnings: list[str] = []
    assert checkpoint.newest_complete(out / "checkpoints", warnings.append) is None
    assert len(warnings) == 2 and all("unreadable" in w for w in warnings)


def test_a_verified_checkpoint_that_will_not_load_is_one_line_naming_it(tiny_model_dir, data, reference, tmp_path):
    """A marker written over a torn file (nothing the protocol writes, but a hand-copied folder can be): DeepSpeed's
    bare error becomes one line naming the checkpoint and the fix."""
    out = copy_of(reference, tmp_path)
    ckpt = out / "checkpoints" / "step-2"
    faults.truncate(ckpt / faults.OPTIM)
    checkpoint.commit(ckpt, 2, 1)
    with pytest.raises(VigosError) as e:
        faults.train(tiny_model_dir, data, out)
    message = str(e.value)
    assert "\n" not in message and f"could not load checkpoint {ckpt}" in message
    assert f"delete {ckpt} to resume from the checkpoint before it" in message


def test_a_checkpoint_of_another_process_count_is_refused_not_skipped(tiny_model_dir, data, reference, tmp_path):
    """Resuming with another number of processes would lose each rank's RNG stream; skipping to an older
    checkpoint (of the same count) or starting over would let rotation delete the good ones. One line instead."""
    out = copy_of(reference, tmp_path)
    for n in (1, 2):
        ckpt = out / "checkpoints" / f"step-{n}"
        shutil.copy(ckpt / "rng_rank0.pt", ckpt / "rng_rank1.pt")
        checkpoint.commit(ckpt, n, 2)
    with pytest.raises(VigosError) as e:
        faults.train(tiny_model_dir, data, out)
    assert str(e.value) == (f"checkpoint {out / 'checkpoints' / 'step-2'} was saved by 2 process(es), this run has 1; "
                            f"rerun with 2, or delete {out / 'checkpoints'} to start over")
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-1", "step-2"]


def test_disk_full_mid_save_keeps_the_previous_checkpoint_usable(tiny_model_dir, data, reference, tmp_path):
    out = faults.after_first_checkpoint(reference, tmp_path / "out")
    ckpt = out / "checkpoints" / "step-2"
    full = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(VigosError) as e, faults.fault_at(faults.OPTIM, full, occurrence=1,
                                                         before=lambda name: faults.truncate(ckpt / name)):
        faults.train(tiny_model_dir, data, out)
    message = str(e.value)
    assert "\n" not in message and f"could not write checkpoint {ckpt}" in message and "no space left" in message.lower()
    assert not (ckpt / MARKER).exists() and (out / "checkpoints" / "step-1" / MARKER).is_file()
    result = faults.train(tiny_model_dir, data, out)  # space freed: the same run again, no fault
    assert result.resumed_from == 1
    assert_same_adapter(out, reference)


def test_rerun_after_a_finished_training_reports_the_same_metrics(tiny_model_dir, data, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    result = faults.train(tiny_model_dir, data, out)
    assert result.resumed_from == 2
    assert faults.history(out) == faults.history(reference) and len(faults.history(out)) == 2
    assert_same_adapter(out, reference)
    from vigos.steps import _train_means

    assert _train_means(faults.history(out)) == _train_means(faults.history(reference))  # what the DAG step shows


class _Boom:
    """Unpickling this makes a folder: what a crafted checkpoint on a shared volume could do with weights_only=False."""

    def __reduce__(self):
        return (os.mkdir, ("PWNED",))


def test_checkpoint_loads_are_weights_only(reference, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "rng_rank0.pt"
    torch.save({"torch": _Boom()}, evil)
    with pytest.raises(pickle.UnpicklingError):
        checkpoint.load_torch(evil)
    assert not (tmp_path / "PWNED").exists()
    # DeepSpeed's own files load weights-only too, RNG state included
    ckpt = reference / "checkpoints" / "step-2"
    for name in ("mp_rank_00_model_states.pt", faults.OPTIM, "rng_rank0.pt"):
        checkpoint.load_torch(ckpt / name)


def test_every_torch_load_in_the_repository_is_weights_only():
    calls = []
    for path in REPO.glob("**/*.py"):
        if any(part.startswith(".") or part in ("node_modules",) for part in path.relative_to(REPO).parts):
            continue
        text = path.read_text(errors="replace")
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.start(): text.find(")", m.end()) + 1]
            calls.append((path.relative_to(REPO).as_posix(), call))
    assert calls, "the scan found no torch.load at all"
    unsafe = [(p, c) for p, c in calls if "weights_only=True" not in c]
    assert unsafe == []
