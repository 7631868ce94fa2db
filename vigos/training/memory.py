"""`train.gradient_checkpointing: auto`: checkpoint a micro-step only when its student forward would not fit the card.

Recomputing activations in the backward costs about a third of the student step (benchmarks/RESULTS.md, train step:
1.32x faster without it on an H200), and most micro-steps are far shorter than the run's longest possible one
(completion median ~450 tokens, images mostly well below `model.max_pixels`). So the choice is per micro-step, from
the token count of its student forward (`input_ids.numel()`: packed or padded positions): checkpointing on when it
exceeds `max_tokens_without_checkpointing`, off otherwise.

That threshold comes from a memory model measured once on CUDA, before DeepSpeed starts:

- **Two probes** of a student forward + backward without checkpointing (the trainer's chunked KL over every position,
  `ROLES_RESIDENT` teacher hidden states resident as in a real micro-step), at `longest_student_tokens` and half of
  it (both halved again while the longer one runs out of memory). Their peaks (`torch.cuda.max_memory_allocated`)
  give a line: `peak = fixed + bytes_per_token x tokens`. Two points, not one, because the peak holds costs that do
  not grow with the sequence (the weights, the KL's `[chunk, vocab]` logits, LoRA gradients): one point through
  zero would spread them over the probe's tokens and misjudge every other length. Starting at the longest sequence
  means the threshold is interpolated between measured lengths, not extrapolated above them.
- **Costs the probe does not see**: the optimizer state (DeepSpeed is initialised after the probe):
  `OPTIMIZER_BYTES_PER_PARAM` per trainable parameter. The rollout's static KV cache is not one: transformers (5.24)
  builds a fresh `StaticCache` in every `generate` call and keeps only its length on the model
  (`_previous_max_cache_length`), so the cache is freed before the micro-steps (tests/training/test_memory.py pins
  this; were an engine to keep its cache, its bytes would belong here).
- `max_tokens_without_checkpointing = (SAFETY x card - optimizer state - fixed) / bytes_per_token`.

On CPU `auto` means off: host memory is paged and shared, there is no fixed card to fit, and the recompute would only
slow the CPU runs (demo, tests). `true` / `false` mean always on / off.

Toggling is cheap: transformers' checkpointing is a flag each decoder layer reads in its forward
(`GradientCheckpointingLayer`), so `CheckpointSwitch` enables it once (non-reentrant, the checkpoint function and
the input-embedding grad hook installed) and then flips the flags between micro-steps. A micro-step's backward ends
before the next forward, and with ZeRO-2 (parameters whole on every rank) the recompute needs no gathering, so a
switch between micro-steps changes nothing but memory and time (tests/training/test_memory.py: same loss and
weights as all-on and all-off).

`choose_checkpointing` (the decision and its arithmetic) is pure; `probe_peak_bytes` is the measurement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

SAFETY = 0.85
"""Share of the card's total memory a micro-step's modelled peak may use: the rest covers the allocator's
fragmentation, DeepSpeed's gradient buckets, the CUDA context and the error of the two-point line."""
OPTIMIZER_BYTES_PER_PARAM = 16
"""fp32 master weight + gradient + AdamW's two moments per trainable (LoRA) parameter."""
TEXT_TOKENS = 512
"""Allowance for the student prompt's text (chat template + problem) next to its largest image."""
ROLES_RESIDENT = 3
"""Teacher hidden states held while the student runs: perception and reasoning (valid rows; or reference)."""
MIN_PROBE_TOKENS = 1024
"""The probes halve on out-of-memory down to this: a card that cannot run a 1,024-token student forward without
checkpointing checkpoints every micro-step."""
GIB = 2**30


@dataclass(frozen=True)
class CheckpointingChoice:
    setting: bool | str  # the configured value: True, False or "auto"
    max_tokens_without_checkpointing: int | None  # checkpoint forwards longer than this; None: never (0: always)
    why: str
    probe_tokens: tuple[int, ...] = ()  # the probes' student tokens (the longest first), out-of-memory ones included
    bytes_per_token: float | None = None  # the line's slope: activations per student token, no checkpointing
    fixed_bytes: int | None = None  # the line's intercept: weights + per-step costs that do not grow with tokens
    optimizer_bytes: int | None = None
    total_bytes: int | None = None

    @property
    def may_checkpoint(self) -> bool:
        return self.max_tokens_without_checkpointing is not None

    def checkpoint(self, tokens: int) -> bool:
        """Whether a student forward of `tokens` positions (its input_ids.numel()) runs with checkpointing."""
        return self.may_checkpoint and tokens > self.max_tokens_without_checkpointing

    def log_line(self) -> str:
        limit = self.max_tokens_without_checkpointing
        state = "off" if limit is None else "on" if limit == 0 else f"on above {limit:,} student tokens"
        return f"[vigos] gradient checkpointing {state} (train.gradient_checkpointing={str(self.setting).lower()}): " \
               f"{self.why}"

    def params(self) -> dict[str, Any]:
        """For the train run's params (MLflow)."""
        def gib(b: int | None) -> float | None:
            return None if b is None else round(b / GIB, 1)

        return {"train.gradient_checkpointing_max_tokens": self.max_tokens_without_checkpointing,
                "train.gradient_checkpointing_probe_tokens": ",".join(map(str, self.probe_tokens)) or None,
                "train.gradient_checkpointing_bytes_per_token": None if self.bytes_per_token is None
                else round(self.bytes_per_token),
                "train.gradient_checkpointing_fixed_gib": gib(self.fixed_bytes),
                "train.gradient_checkpointing_card_gib": gib(self.total_bytes)}


def choose_checkpointing(
    setting: bool | str, device_type: str, *, probes: Sequence[tuple[int, int | None]] = (),
    optimizer_bytes: int = 0, total_bytes: int | None = None, safety: float = SAFETY,
) -> CheckpointingChoice:
    """The decision from the setting and (on CUDA with `auto`) the probes: `(tokens, peak bytes)` in the order they
    ran, peak None where the probe ran out of memory; the line is fitted through the last two that fit."""
    if setting is True or setting is False:
        return CheckpointingChoice(setting, 0 if setting else None, "as configured")
    if setting != "auto":
        raise ValueError(f"train.gradient_checkpointing is {setting!r}; it must be true, false or auto")
    if device_type != "cuda":
        return CheckpointingChoice(setting, None, f"{device_type}: no card memory to fit, recomputing only slows "
                                                  "the step")
    if total_bytes is None:
        raise ValueError("auto on CUDA needs the card's total memory")
    tokens = tuple(n for n, _ in probes)
    card = f"the {total_bytes / GIB:.1f} GiB card"
    fit = [(n, p) for n, p in probes if p is not None]
    if len(fit) < 2:
        return CheckpointingChoice(setting, 0, f"the probe ran out of memory at {min(tokens, default=0):,} student "
                                               f"tokens without checkpointing on {card}", tokens,
                                   total_bytes=total_bytes)
    (n1, p1), (n2, p2) = fit[-2:]
    per_token = max((p1 - p2) / (n1 - n2), 1.0)  # > 0: allocator rounding on a tiny model must not divide by 0
    fixed = round(p1 - per_token * n1)
    budget = safety * total_bytes
    limit = max(0, int((budget - optimizer_bytes - fixed) // per_token))
    oom = "".join(f", {n:,}: out of memory" for n, p in probes if p is None)
    return CheckpointingChoice(
        setting, limit,
        f"probes without checkpointing peak at {p1 / GIB:.1f} GiB ({n1:,} student tokens) and {p2 / GIB:.1f} GiB "
        f"({n2:,}){oom}: {per_token / 2**20:.2f} MiB per token + {fixed / GIB:.1f} GiB fixed, + "
        f"{optimizer_bytes / GIB:.1f} GiB optimizer state, within {safety:.0%} of {card} ({budget / GIB:.1f} GiB) up "
        f"to {limit:,} tokens; the run's longest forward is {tokens[0]:,}", tokens, per_token, fixed, optimizer_bytes,
        total_bytes)


def longest_student_tokens(cfg: Any) -> int:
    """The longest student forward of the run: per-device rows x (the largest image's visual tokens + the prompt's
    text allowance, capped by `train.max_prompt_length`, + `train.max_completion_length`). Packed or padded, the
    forward holds that many positions."""
    visual = cfg.model.max_pixels // (28 * 28)  # 14-pixel patches merged 2 x 2: one token per 28 x 28 pixels
    prompt = min(cfg.train.max_prompt_length, visual + TEXT_TOKENS)
    return cfg.train.per_device_train_batch_size * (prompt + cfg.train.max_completion_length)


def probe_peak_bytes(model: Any, device: torch.device, tokens: int, chunk_size: int) -> int | None:
    """Peak allocated bytes of one student forward + backward without checkpointing (chunked KL over every position,
    `ROLES_RESIDENT` teacher hidden states resident) at `tokens` text tokens; None when it runs out of memory. Text
    tokens only: the LM's activations are what grow with the sequence (the vision tower runs without grad).
    Gradients are cleared afterwards."""
    from vigos.training import teachers as T
    from vigos.training.losses import chunked_clipped_token_kl

    backbone, weight = T.lm_parts(model)
    hidden = weight.shape[1]
    was_training = model.training
    model.train()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        teachers = [torch.randn(1, tokens, hidden, device=device, dtype=weight.dtype) for _ in range(ROLES_RESIDENT)]
        ids = torch.randint(0, weight.shape[0], (1, tokens), device=device)
        h = backbone(input_ids=ids, use_cache=False).last_hidden_state
        mask = torch.ones(1, tokens, dtype=torch.bool, device=device)
        chunked_clipped_token_kl(teachers[0], h, weight, mask, clip=0.05, chunk_size=chunk_size).sum().backward()
        return torch.cuda.max_memory_allocated(device)
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        teachers = h = None  # noqa: F841 - free before the next probe or the real run allocates
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        torch.cuda.empty_cache()


def resolve_checkpointing(cfg: Any, model: Any, device: torch.device) -> CheckpointingChoice:
    """`train.gradient_checkpointing` for this run on `device` (the two probes when it is `auto` on CUDA)."""
    setting = cfg.train.gradient_checkpointing
    if setting != "auto" or device.type != "cuda":
        return choose_checkpointing(setting, device.type)
    probe = lambda n: probe_peak_bytes(model, device, n, cfg.train.kl_chunk_size)  # noqa: E731
    longest = longest_student_tokens(cfg)
    n = longest
    probes = [(n, probe(n))]
    while probes[-1][1] is None and n // 2 >= min(MIN_PROBE_TOKENS, longest):
        n //= 2
        probes.append((n, probe(n)))
    if probes[-1][1] is not None:
        probes.append((n // 2, probe(n // 2)))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return choose_checkpointing(setting, "cuda", probes=probes, optimizer_bytes=OPTIMIZER_BYTES_PER_PARAM * trainable,
                                total_bytes=torch.cuda.mem_get_info(device)[1])


class CheckpointSwitch:
    """Non-reentrant gradient checkpointing of a (PEFT-wrapped) Qwen2.5-VL, enabled once and then turned on or off
    between forwards by flipping the flags the layers read (`set`); starts on."""

    def __init__(self, model: Any):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        kwargs = {"use_reentrant": False}
        if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.24 (the old name warns)
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self.modules = [m for m in base.modules() if getattr(m, "gradient_checkpointing", False) is True]
        self.on = True

    def set(self, on: bool) -> None:
        if on != self.on:
            for m in self.modules:
                m.gradient_checkpointing = on
            self.on = on
