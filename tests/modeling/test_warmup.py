"""The demo's warm-up: a short supervised pass that teaches the tiny random model the ViGOS answer format, cached
by fingerprint, written atomically, deterministic, and tuned so that some rollouts are well formed and some not."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from vigos.data.synthetic import SCENE_DESCRIPTIONS, synthetic_rows
from vigos.errors import VigosError
from vigos.modeling import warmup
from vigos.modeling.warmup import (
    MARKER_FILE,
    WarmupSettings,
    completion_text,
    read_warmup_info,
    valid_share,
    warm_up_model,
)
from vigos.training.segments import parse_segments

# A few steps only: enough to check plumbing, caching and determinism (the default settings are for the demo).
QUICK = WarmupSettings(steps=3, rows=8, batch_size=4)


@pytest.fixture(scope="module")
def warmed(tiny_model_dir, tmp_path_factory):
    """The demo's warm-up (default settings) of the session's tiny build: about 10 s on 2 cores."""
    return warm_up_model(tiny_model_dir, tmp_path_factory.mktemp("warm") / "model", progress=False)


def test_completions_are_well_formed_and_short(tiny_processor):
    rows = synthetic_rows(40, seed=5)
    assert {r["data_source"].split("/")[1] for r in rows} == set(SCENE_DESCRIPTIONS)  # every kind is covered
    for row in rows:
        text = completion_text(row)
        seg = parse_segments(text)
        assert seg.valid, (text, seg.reason)
        assert text.startswith(SCENE_DESCRIPTIONS[row["data_source"].split("/")[1]])
        assert 20 <= len(tiny_processor.tokenizer(text)["input_ids"]) + 1 <= 40  # + EOS: fits the tiny budget


def test_output_loads_like_the_tiny_build(warmed, tiny_model_dir):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    info = read_warmup_info(warmed)
    assert info["settings"] == dataclasses.asdict(WarmupSettings()) and info["version"] == warmup.WARMUP_VERSION
    assert info["final_loss"] < info["first_loss"] / 4
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "processor_config.json"):
        assert (warmed / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name  # the base's, as is
    assert not (warmed / "vigos_tiny_build.json").exists()  # not a tiny build: `vigos model tiny` must not reuse it
    processor = AutoProcessor.from_pretrained(warmed)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(warmed)
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir).state_dict()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, base[k])}
    assert "lm_head.weight" in changed and any(".layers." in k for k in changed)
    assert len(processor.tokenizer) == 151665


def test_some_rollouts_are_well_formed_and_some_not(warmed):
    # sampled as training samples rollouts (T 1.1, top-p 0.95, top-k 20, the tiny preset's completion budget),
    # on the demo's training rows; measured 59% of 32 on the machine the settings were tuned on (other seeds of
    # the warm-up: 45%, 81% of 64), so the bounds leave room for float differences between CPUs
    share = valid_share(warmed, rows=32)
    assert 0.2 <= share <= 0.9, share


def test_second_call_is_a_cache_hit(warmed, tiny_model_dir, monkeypatch):
    stamp = (warmed / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(warmup, "_train", lambda *a, **k: pytest.fail("the warm-up ran again"))
    started = time.perf_counter()
    assert warm_up_model(tiny_model_dir, warmed) == warmed
    assert time.perf_counter() - started < 0.5
    assert (warmed / "model.safetensors").stat().st_mtime_ns == stamp
    # other settings are another warm-up: not a hit
    with pytest.raises(pytest.fail.Exception, match="ran again"):
        warm_up_model(tiny_model_dir, warmed, dataclasses.replace(WarmupSettings(), steps=81))


def test_deterministic_in_the_seed(tiny_model_dir, tmp_path):
    a = warm_up_model(tiny_model_dir, tmp_path / "a", QUICK, progress=False)
    b = warm_up_model(tiny_model_dir, tmp_path / "b", QUICK, progress=False)
    c = warm_up_model(tiny_model_dir, tmp_path / "c", dataclasses.replace(QUICK, seed=1), progress=False)
    wa, wb, wc = (load_file(str(d / "model.safetensors")) for d in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["lm_head.weight"], wc["lm_head.weight"])
    fingerprints = [read_warmup_info(d)["fingerprint"] for d in (a, b, c)]
    assert fingerprints[0] == fingerprints[1] != fingerprints[2]


def test_atomic_output(tiny_model_dir, tmp_path, monkeypatch):
    out = warm_up_model(tiny_model_dir, tmp_path / "warm", QUICK, progress=False)
    before = (out / "model.safetensors").read_bytes()

    def crash(base, tmp, settings, progress):  # dies after writing part of the new output
        (tmp / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-way")

    monkeypatch.setattr(warmup, "_train", crash)
    with pytest.raises(RuntimeError, match="killed"):
        warm_up_model(tiny_model_dir, out, QUICK, force=True)
    assert (out / "model.safetensors").read_bytes() == before and (out / MARKER_FILE).is_file()  # old output intact
    assert [p.name for p in tmp_path.iterdir()] == ["warm"]  # no temp folder left behind


def test_refuses_foreign_folders(tiny_model_dir, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "precious.txt").write_text("keep me")
    with pytest.raises(VigosError, match="not a warm-up output"):
        warm_up_model(tiny_model_dir, tmp_path / "x", QUICK)
    assert (tmp_path / "x" / "precious.txt").read_text() == "keep me"
    with pytest.raises(VigosError, match="not a complete tiny-model build"):
        warm_up_model(tmp_path / "x", tmp_path / "y", QUICK)  # the cache key needs the base build's fingerprint


def test_cli(tiny_model_dir, tmp_path):
    from vigos.modeling.cli import app

    args = ["warm-up", "--base", str(tiny_model_dir), "--output", str(tmp_path / "w"), "--steps", "2"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "2 steps, loss" in first.output and "done in" in first.output
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "already done" in again.output
