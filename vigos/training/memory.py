"""`train.gradient_checkpointing: auto`: checkpoint only when the step would not fit the card without it.

Recomputing activations in the backward costs about a third of the step (benchmarks/RESULTS.md, train step:
1.32x faster without it on an H200). On CUDA, `auto` runs one probe: a student forward + backward with the
trainer's chunked KL, without checkpointing, at the run's longest student sequence (`longest_student_tokens`),
with the teachers' hidden states resident as in a real micro-step; `torch.cuda.max_memory_allocated` of it, plus
the optimizer's state for the trainable parameters (DeepSpeed is initialised after the probe), against the card's
total memory times `SAFETY`. A probe that runs out of memory does not fit. On CPU `auto` means off: host memory is
paged and shared, there is no fixed card to fit, and the recompute would only slow the CPU runs (demo, tests).

`choose_checkpointing` (the decision) is pure; `probe_peak_bytes` is the measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

SAFETY = 0.85
"""Share of the card's total memory the probe's peak may use: the rest covers the allocator's fragmentation,
DeepSpeed's gradient buckets, the CUDA context and rows a little longer than the probe's text."""
OPTIMIZER_BYTES_PER_PARAM = 16
"""fp32 master weight + gradient + AdamW's two moments per trainable (LoRA) parameter."""
TEXT_TOKENS = 512
"""Allowance for the student prompt's text (chat template + problem) next to its largest image."""
ROLES_RESIDENT = 3
"""Teacher hidden states held while the student runs: perception and reasoning (valid rows; or reference)."""
GIB = 2**30


@dataclass(frozen=True)
class CheckpointingChoice:
    enabled: bool
    setting: bool | str  # the configured value: True, False or "auto"
    why: str
    tokens: int | None = None  # the probe's student tokens
    peak_bytes: int | None = None  # probe peak + optimizer state (None: not probed, or out of memory)
    total_bytes: int | None = None

    def log_line(self) -> str:
        return f"[vigos] gradient checkpointing {'on' if self.enabled else 'off'} (train.gradient_checkpointing=" \
               f"{str(self.setting).lower()}): {self.why}"

    def params(self) -> dict[str, Any]:
        """For the train run's params (MLflow)."""
        def gib(b: int | None) -> float | None:
            return None if b is None else round(b / GIB, 1)

        return {"train.gradient_checkpointing_on": self.enabled, "train.gradient_checkpointing_probe_tokens":
                self.tokens, "train.gradient_checkpointing_probe_peak_gib": gib(self.peak_bytes),
                "train.gradient_checkpointing_card_gib": gib(self.total_bytes)}


def choose_checkpointing(
    setting: bool | str, device_type: str, *, tokens: int | None = None, peak_bytes: int | None = None,
    total_bytes: int | None = None, safety: float = SAFETY,
) -> CheckpointingChoice:
    """The decision from the setting and (on CUDA with `auto`) the probe's numbers; `peak_bytes=None` with a
    `total_bytes` means the probe ran out of memory."""
    if setting is True or setting is False:
        return CheckpointingChoice(setting, setting, "as configured")
    if setting != "auto":
        raise ValueError(f"train.gradient_checkpointing is {setting!r}; it must be true, false or auto")
    if device_type != "cuda":
        return CheckpointingChoice(False, setting, f"{device_type}: no card memory to fit, recomputing only slows "
                                                   "the step")
    if total_bytes is None:
        raise ValueError("auto on CUDA needs the card's total memory")
    budget = safety * total_bytes
    if peak_bytes is None:
        return CheckpointingChoice(True, setting, f"the probe ({tokens} student tokens, no checkpointing) ran out of "
                                                  f"memory on the {total_bytes / GIB:.1f} GiB card", tokens,
                                   None, total_bytes)
    fits = peak_bytes <= budget
    return CheckpointingChoice(
        not fits, setting,
        f"probe peak {peak_bytes / GIB:.1f} GiB at {tokens} student tokens without checkpointing (optimizer state "
        f"included) {'fits' if fits else 'exceeds'} {safety:.0%} of the card's {total_bytes / GIB:.1f} GiB "
        f"({budget / GIB:.1f} GiB)", tokens, peak_bytes, total_bytes)


def longest_student_tokens(cfg: Any) -> int:
    """The longest student forward of the run: per-device rows x (the largest image's visual tokens + the prompt's
    text allowance, capped by `train.max_prompt_length`, + `train.max_completion_length`). Packed or padded, the
    forward holds that many positions."""
    visual = cfg.model.max_pixels // (28 * 28)  # 14-pixel patches merged 2 x 2: one token per 28 x 28 pixels
    prompt = min(cfg.train.max_prompt_length, visual + TEXT_TOKENS)
    return cfg.train.per_device_train_batch_size * (prompt + cfg.train.max_completion_length)


def probe_peak_bytes(model: Any, device: torch.device, tokens: int, chunk_size: int) -> int | None:
    """Peak bytes of one student forward + backward (chunked KL over every position, `ROLES_RESIDENT` teacher
    hidden states resident) at `tokens` text tokens, plus the trainable parameters' optimizer state; None when it
    runs out of memory. Text tokens only: the LM's activations are what grow with the sequence (the vision tower
    runs without grad). Gradients are cleared afterwards."""
    from vigos.training import teachers as T
    from vigos.training.losses import chunked_clipped_token_kl

    backbone, weight = T.lm_parts(model)
    hidden = weight.shape[1]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
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
        return torch.cuda.max_memory_allocated(device) + OPTIMIZER_BYTES_PER_PARAM * trainable
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        teachers = h = None  # noqa: F841 - free before the real run allocates
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        torch.cuda.empty_cache()


def resolve_checkpointing(cfg: Any, model: Any, device: torch.device) -> CheckpointingChoice:
    """`train.gradient_checkpointing` for this run on `device` (probing when it is `auto` on CUDA)."""
    setting = cfg.train.gradient_checkpointing
    if setting != "auto" or device.type != "cuda":
        return choose_checkpointing(setting, device.type)
    tokens = longest_student_tokens(cfg)
    peak = probe_peak_bytes(model, device, tokens, cfg.train.kl_chunk_size)
    return choose_checkpointing(setting, "cuda", tokens=tokens, peak_bytes=peak,
                                total_bytes=torch.cuda.mem_get_info(device)[1])


def enable_checkpointing(model: Any) -> None:
    """Turn on (non-reentrant) gradient checkpointing of a (PEFT-wrapped) Qwen2.5-VL."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
