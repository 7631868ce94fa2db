"""`train.gradient_checkpointing: auto` (the threshold arithmetic and probe lengths, with synthetic numbers) and
`train.fused_kernels`. The trainer switching it per micro-step: tests/training/test_trainer.py."""

from __future__ import annotations

import pytest
import torch

from vigos.config import ConfigError, load_config
from vigos.errors import VigosError
from vigos.modeling.kernels import resolve_fused_kernels
from vigos.training.memory import GIB, OPTIMIZER_BYTES_PER_PARAM, choose_checkpointing, longest_student_tokens

MIB = 2**20


def test_auto_threshold_from_two_probes():
    card = 140 * GIB  # budget 0.85 x 140 = 119 GiB; 1 GiB optimizer state; 20 GiB fixed
    # 4 MiB per token: the longest sequence (20,992) fits, the threshold lies above it
    fits = choose_checkpointing("auto", "cuda", probes=[(20992, 20 * GIB + 20992 * 4 * MIB),
                                                         (10496, 20 * GIB + 10496 * 4 * MIB)],
                                optimizer_bytes=GIB, total_bytes=card)
    assert fits.max_tokens_without_checkpointing == 98 * GIB // (4 * MIB) == 25088
    assert not fits.checkpoint(20992) and fits.checkpoint(25089)
    assert (fits.bytes_per_token, fits.fixed_bytes) == (4 * MIB, 20 * GIB)
    # 8 MiB per token: the longest probe runs out of memory, the next two fit; the threshold lies between
    over = choose_checkpointing("auto", "cuda", probes=[(20992, None), (10496, 20 * GIB + 10496 * 8 * MIB),
                                                        (5248, 20 * GIB + 5248 * 8 * MIB)],
                                optimizer_bytes=GIB, total_bytes=card)
    assert over.max_tokens_without_checkpointing == 12544
    assert [over.checkpoint(n) for n in (450, 12544, 12545)] == [False, False, True]
    assert over.params() == {"train.gradient_checkpointing_max_tokens": 12544,
                             "train.gradient_checkpointing_probe_tokens": "20992,10496,5248",
                             "train.gradient_checkpointing_bytes_per_token": 8 * MIB,
                             "train.gradient_checkpointing_fixed_gib": 20.0,
                             "train.gradient_checkpointing_card_gib": 140.0}
    line = over.log_line()
    assert line.startswith("[vigos] gradient checkpointing on above 12,544 student tokens (train.gradient_"
                           "checkpointing=auto): probes without checkpointing peak at 102.0 GiB (10,496 student "
                           "tokens) and 61.0 GiB (5,248), 20,992: out of memory: 8.00 MiB per token + 20.0 GiB fixed, "
                           "+ 1.0 GiB optimizer state, within 85% of the 140.0 GiB card (119.0 GiB) up to 12,544 "
                           "tokens; the run's longest forward is 20,992")
    # fixed costs alone over the budget, or no probe that fits: every micro-step checkpoints
    heavy = choose_checkpointing("auto", "cuda", probes=[(2048, 130 * GIB), (1024, 125 * GIB)], total_bytes=card)
    assert heavy.max_tokens_without_checkpointing == 0 and heavy.checkpoint(1)
    oom = choose_checkpointing("auto", "cuda", probes=[(20992, None), (10496, None), (5248, None), (2624, None),
                                                       (1312, None)], total_bytes=card)
    assert oom.max_tokens_without_checkpointing == 0 and "ran out of memory at 1,312 student tokens" in oom.why


def test_auto_probes_halve_on_out_of_memory(monkeypatch):
    """resolve_checkpointing's probe lengths: the longest sequence, halved while it runs out, then half the one
    that fits (the probe itself is CUDA-only: replaced by a synthetic card that runs out above 6,000 tokens)."""
    from vigos.training import memory

    tried = []

    def probe(model, device, tokens, chunk_size):
        tried.append(tokens)
        return None if tokens > 6000 else 20 * GIB + tokens * 8 * MIB

    monkeypatch.setattr(memory, "probe_peak_bytes", probe)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (0, 140 * GIB))
    model = torch.nn.Linear(1024, 64)  # 65,600 trainable parameters: their optimizer state is counted
    choice = memory.resolve_checkpointing(load_config("paper-7b"), model, torch.device("cuda"))
    assert tried == [20992, 10496, 5248, 2624] and choice.probe_tokens == tuple(tried)
    assert choice.optimizer_bytes == 16 * 65600
    assert choice.max_tokens_without_checkpointing == int((0.85 * 140 * GIB - 16 * 65600 - 20 * GIB) // (8 * MIB))


def test_auto_is_off_on_cpu_and_explicit_values_win():
    cpu = choose_checkpointing("auto", "cpu")
    assert not cpu.may_checkpoint and not cpu.checkpoint(10**9) and "cpu" in cpu.why
    always = choose_checkpointing(True, "cpu")
    assert always.may_checkpoint and always.checkpoint(1)
    assert not choose_checkpointing(False, "cuda").checkpoint(10**9)  # no probe needed
    assert choose_checkpointing(True, "cpu").log_line() == "[vigos] gradient checkpointing on " \
                                                          "(train.gradient_checkpointing=true): as configured"
    with pytest.raises(ValueError, match="true, false or auto"):
        choose_checkpointing("sometimes", "cuda")
    assert OPTIMIZER_BYTES_PER_PARAM == 16


def test_the_rollout_cache_is_freed_after_generate(tiny_model, tiny_processor, red_image):
    """The memory model counts no resident KV cache because transformers builds a fresh static cache per `generate`
    call and keeps none on the model. If this fails (an engine or transformers keeps its cache between calls), the
    cache's bytes (layers x 2 x kv heads x head dim x dtype bytes x rows x cache length) belong in
    `vigos.training.memory`'s fixed costs."""
    import gc

    from transformers.cache_utils import StaticCache

    from vigos.generation import GenerationRequest, HFEngine, SamplingParams

    engine = HFEngine(tiny_model, tiny_processor, batch_size=2, cache_implementation="static")
    prompt = "<|vision_start|><|image_pad|><|vision_end|>What color is it?"
    engine.generate([GenerationRequest(prompt, [red_image], 1)],
                    SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=4))
    assert engine.cache_len > 0  # the static cache was used
    gc.collect()
    assert not [o for o in gc.get_objects() if type(o) is StaticCache]  # type(): no deprecated-proxy warnings


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
