"""Issue 14, inputs and disks: hostile data prep inputs, full / read-only disks, eval resume after a changed source or
a killed rewrite. Each fault is built or injected at a named point by benchmarks/fault_cases/inputs_and_disks.py
(shared with the fault table); every assertion is on what the user gets: one line naming the file, column or folder,
and nothing already complete damaged or left behind."""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import warnings
from pathlib import Path

import datasets
import pytest
from PIL import ImageFile

from vigos.config import ConfigError, DataConfig, load_config
from vigos.data.prepare import DROPS_FILE, prepare
from vigos.errors import DiskError, VigosError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from fault_cases import inputs_and_disks as faults  # noqa: E402


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return faults.hostile_sources(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return faults.good_source(tmp_path_factory.mktemp("good") / "src")


def _prep(source, out, **kw):
    return prepare(DataConfig(source=str(source), **kw), out, progress=False)


def _one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


# --- inputs ---------------------------------------------------------------------------------------------------


def test_undecodable_jsonl_line_is_named_by_file_and_line(hostile, tmp_path):
    with pytest.raises(VigosError) as e:
        _prep(hostile["latin1_jsonl"], tmp_path / "out")
    text = _one_line(e)
    assert text.startswith(f"{hostile['latin1_jsonl']}:3: not UTF-8") and "0xe9" in text and "UTF-8" in text


@pytest.mark.parametrize(("name", "column", "kind"), [("binary_problem", "problem", "binary"),
                                                     ("int_answer", "answer", "int64")])
def test_non_text_problem_or_answer_column_is_an_error_naming_it(hostile, tmp_path, name, column, kind):
    with pytest.raises(VigosError) as e:
        _prep(hostile[name], tmp_path / "out")
    text = _one_line(e)
    assert f"column '{column}' holds {kind} values, not text" in text
    assert not (tmp_path / "out").exists()


def test_unreadable_parquet_shard_is_named(hostile, tmp_path):
    with pytest.raises(VigosError) as e:
        _prep(hostile["truncated_shard"], tmp_path / "out")
    assert _one_line(e).startswith(f"{hostile['truncated_shard'] / 'data' / 'train-00001-of-00002.parquet'}: ")


def test_pixel_cap_drops_bombs_from_the_header_without_decoding(hostile, tmp_path, monkeypatch):
    decoded = []
    real_load = ImageFile.ImageFile.load

    def load(img):  # a spy on PIL's pixel decoding: which sizes got decoded
        decoded.append(img.size)
        return real_load(img)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning must not reach the user
        stats = _prep(hostile["pixel_bombs"], tmp_path / "out")
    assert stats["dropped"]["huge_image"] == 2 and stats["rows_out"] == 2
    assert stats["config"]["max_image_pixels"] == DataConfig().max_image_pixels
    assert all(w * h <= DataConfig().max_image_pixels for w, h in decoded) and decoded
    drops = [json.loads(line) for line in (tmp_path / "out" / DROPS_FILE).read_text().splitlines()]
    assert sorted((d["row"], d["reason"]) for d in drops) == [(0, "huge_image"), (1, "huge_image")]


def test_pixel_cap_range_is_checked():
    with pytest.raises(ConfigError, match=r"data.max_image_pixels is 0"):
        load_config("tiny", overrides=["data.max_image_pixels=0"])


def test_sigterm_mid_prep_removes_scratch_and_keeps_the_output(good, tmp_path):
    out = tmp_path / "out"
    _prep(good, out)
    before = faults.tree(out)
    assert faults.prep_killed(good, out, signal.SIGTERM) == 128 + signal.SIGTERM
    assert faults.scratch_folders(out) == []
    assert faults.tree(out) == before


def test_scratch_of_a_sigkilled_prep_is_removed_by_the_next(good, tmp_path):
    out = tmp_path / "out"
    assert faults.prep_killed(good, out, signal.SIGKILL) == -signal.SIGKILL
    assert len(faults.scratch_folders(out)) == 1  # the fault is real: nothing ran on the way out
    stats = _prep(good, out)
    assert stats["rows_out"] == 12 and faults.scratch_folders(out) == []


def test_next_prep_leaves_a_live_preps_scratch_alone(good, tmp_path):
    import fcntl

    out = tmp_path / "out"
    live = tmp_path / f".{out.name}.prep-live"
    live.mkdir()
    with open(live / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process's prep, still running
        _prep(good, out)
    assert faults.scratch_folders(out) == [live]


# --- disks ----------------------------------------------------------------------------------------------------


def test_full_disk_in_prep_is_one_line_and_the_old_output_survives(good, tmp_path):
    out = tmp_path / "out"
    _prep(good, out)
    before = faults.tree(out)
    with faults.failing(datasets.Dataset, "save_to_disk") as hits, pytest.raises(DiskError) as e:
        _prep(good, out)
    assert hits
    text = _one_line(e)
    assert text.startswith(f"cannot write {tmp_path}: no space left on the device (") and " free of " in text
    assert faults.tree(out) == before and faults.scratch_folders(out) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod 555")
def test_read_only_folder_in_prep_is_one_line(good, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(DiskError) as e:
            _prep(good, parent / "out")
    finally:
        parent.chmod(0o755)
    assert _one_line(e).startswith(f"cannot write {parent}: permission denied")


@pytest.mark.parametrize(("error", "words"), [
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"), "no space left"),
    (Exception("Error while serializing: I/O error: No space left on device (os error 28)"), "no space left"),
    (OSError(errno.EROFS, "Read-only file system"), "read-only"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "quota"),
])
def test_library_write_errors_become_one_line_naming_folder_free_and_needed(tmp_path, error, words):
    """The messages torch, safetensors and the OS give for a full or read-only disk (captured from real writes
    to a full tmpfs), raised at the write inside `disk_writes`."""
    from vigos.errors import disk_writes

    with pytest.raises(DiskError) as e, disk_writes(tmp_path, needed=3 << 30):
        raise error
    text = _one_line(e)
    assert text.startswith(f"cannot write {tmp_path}: ") and words in text
    assert " free of " in text and "3.0 GiB needed" in text


def test_unrelated_errors_pass_through(tmp_path):
    from vigos.errors import disk_writes

    with pytest.raises(FileNotFoundError), disk_writes(tmp_path):
        open(tmp_path / "missing")
    with pytest.raises(PermissionError), disk_writes(tmp_path / "out"):  # reading elsewhere: not this folder's fault
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "source.jsonl"))


# --- eval resume ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_copies(tmp_path_factory):
    from vigos.evaluation.fixtures import write_benchmark_fixtures

    root = tmp_path_factory.mktemp("eval-fx")
    return [write_benchmark_fixtures(root / name, ["mmmu"], n=2, seed=seed) for name, seed in (("a", 0), ("b", 1))]


def _eval_cfg(tiny_model_dir, sources):
    cfg = load_config("tiny", overrides=[f"model.name_or_path={tiny_model_dir}", "eval.n_samples=1",
                                         "eval.max_new_tokens=2", "eval.max_examples=null"])
    cfg.eval.benchmarks = ["mmmu"]
    cfg.eval.sources = list(sources)
    return cfg


def test_resume_refuses_rows_of_another_benchmark_copy(tiny_model_dir, bench_copies, tmp_path):
    from vigos.evaluation.run import run_eval

    out = tmp_path / "eval"
    run_eval(tiny_model_dir, _eval_cfg(tiny_model_dir, bench_copies[0]), out, progress=False)
    with pytest.raises(VigosError) as e:
        run_eval(tiny_model_dir, _eval_cfg(tiny_model_dir, bench_copies[1]), out, progress=False)
    text = _one_line(e)
    assert "sources.mmmu" in text and str(Path(bench_copies[1][0].split("=", 1)[1]).resolve()) in text


def test_temp_file_of_a_killed_rewrite_never_reaches_the_artifact(tiny_model_dir, bench_copies, tmp_path):
    from vigos import volume
    from vigos.evaluation.run import responses_path, run_eval

    cfg = _eval_cfg(tiny_model_dir, bench_copies[0])
    out = tmp_path / "eval"
    run_eval(tiny_model_dir, cfg, out, progress=False)
    final = responses_path(out, "mmmu")
    rows = final.read_bytes()
    # what a SIGKILL between the temp file's write and its rename leaves (mkstemp's name for the rewrite)
    leftover = final.with_name(f".{final.name}.k1ll3d.tmp")
    leftover.write_bytes(rows[: len(rows) // 2])
    run_eval(tiny_model_dir, cfg, out, progress=False)
    assert not leftover.exists() and final.read_bytes() == rows
    manifest = volume.write_manifest(tmp_path / "artifact", out, "evaluation")
    assert not [f for f in manifest["files"] if ".tmp" in f["path"]]


def test_full_disk_in_the_final_rewrite_keeps_the_rows(tmp_path):
    from vigos.evaluation import run as run_mod

    path = tmp_path / "responses" / "mmmu.jsonl"
    rows = [{"example_id": str(k), "sample_index": 0} for k in range(4)]
    run_mod._write_rows_atomic(path, rows)
    before = path.read_bytes()
    with faults.failing(run_mod.os, "replace"), pytest.raises(DiskError) as e:
        run_mod._write_rows_atomic(path, rows[:2])
    assert _one_line(e).startswith(f"cannot write {path.parent}: no space left")
    assert path.read_bytes() == before and not list(path.parent.glob(".*"))
