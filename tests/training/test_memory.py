"""`train.gradient_checkpointing: auto` (the pure decision, with synthetic numbers) and `train.fused_kernels`."""

from __future__ import annotations

import pytest

from vigos.config import ConfigError, load_config
from vigos.errors import VigosError
from vigos.modeling.kernels import resolve_fused_kernels
from vigos.training.memory import GIB, OPTIMIZER_BYTES_PER_PARAM, choose_checkpointing, longest_student_tokens


def test_auto_checkpoints_only_when_the_probe_does_not_fit():
    card = 140 * GIB
    fits = choose_checkpointing("auto", "cuda", tokens=20992, peak_bytes=100 * GIB, total_bytes=card)
    assert not fits.enabled and "fits 85%" in fits.why
    over = choose_checkpointing("auto", "cuda", tokens=20992, peak_bytes=120 * GIB, total_bytes=card)
    assert over.enabled and "exceeds" in over.why  # 120 > 0.85 x 140 = 119
    oom = choose_checkpointing("auto", "cuda", tokens=20992, peak_bytes=None, total_bytes=card)
    assert oom.enabled and "ran out of memory" in oom.why
    assert over.params() == {"train.gradient_checkpointing_on": True, "train.gradient_checkpointing_probe_tokens":
                             20992, "train.gradient_checkpointing_probe_peak_gib": 120.0,
                             "train.gradient_checkpointing_card_gib": 140.0}
    assert over.log_line().startswith("[vigos] gradient checkpointing on (train.gradient_checkpointing=auto): probe")


def test_auto_is_off_on_cpu_and_explicit_values_win():
    cpu = choose_checkpointing("auto", "cpu")
    assert not cpu.enabled and cpu.peak_bytes is None and "cpu" in cpu.why
    assert choose_checkpointing(True, "cpu").enabled
    assert not choose_checkpointing(False, "cuda").enabled  # no probe needed
    with pytest.raises(ValueError, match="true, false or auto"):
        choose_checkpointing("sometimes", "cuda")
    assert OPTIMIZER_BYTES_PER_PARAM == 16


def test_config_values_and_the_probe_length():
    cfg = load_config("paper-7b")
    assert cfg.train.gradient_checkpointing == "auto" and cfg.train.pack_sequences
    # one row: 12,845,056 pixels / 784 = 16,384 visual tokens + 512 text, + 4,096 completion tokens
    assert longest_student_tokens(cfg) == 16384 + 512 + 4096
    tiny = load_config("tiny")
    assert tiny.train.gradient_checkpointing is False
    assert longest_student_tokens(tiny) == min(1024, 3136 // 784 + 512) + 48
    with pytest.raises(ConfigError, match="expects true/false or must be one of \\['auto'\\], got 'maybe'"):
        load_config("tiny", overrides=["train.gradient_checkpointing=maybe"])


def test_fused_kernels_resolution():
    assert resolve_fused_kernels("none", "cuda") == ("none", "as configured")
    chosen, why = resolve_fused_kernels("auto", "cpu")
    assert chosen == "none" and "need CUDA" in why
    with pytest.raises(VigosError, match="train.fused_kernels=liger needs a CUDA device"):
        resolve_fused_kernels("liger", "cpu")
    with pytest.raises(ConfigError, match="'train.fused_kernels' must be one of"):
        load_config("tiny", overrides=["train.fused_kernels=triton"])


def test_fused_kernels_without_the_package(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(VigosError, match="needs the liger-kernel package"):
        resolve_fused_kernels("liger", "cuda")
    assert resolve_fused_kernels("auto", "cuda")[0] == "none"
