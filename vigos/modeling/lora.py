"""LoRA on the language model of Qwen2.5-VL (never the vision tower).

`LoraConfig.target_modules` is a regex (peft full-matches it against module names) because the vision tower's
MLPs are also called gate_proj/up_proj/down_proj: a plain list of names would put adapters on them too.
`apply_lora` checks the result and raises if nothing matched or anything under `visual` did.
"""

from __future__ import annotations

from typing import Any

from vigos.config import LoraConfig
from vigos.errors import VigosError

VISION_PREFIX = "visual"
"""Name component of the vision tower (`model.model.visual` in transformers 5)."""


def apply_lora(model: Any, cfg: LoraConfig) -> Any:
    """Wrap `model` in a peft `PeftModel` with LoRA adapters on the language model only.

    Base weights are frozen; only the LoRA matrices require grad. Raises VigosError when the regex matches no
    module or matches one in the vision tower.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    _check_targets(model, cfg.target_modules)
    peft_config = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, peft_config)
    names = lora_module_names(peft_model)
    _validate(names, cfg.target_modules)
    trainable_outside = [n for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" not in n]
    if trainable_outside:
        raise VigosError(f"LoRA setup left non-LoRA parameters trainable: {', '.join(trainable_outside[:5])}")
    return peft_model


def lora_module_names(model: Any) -> list[str]:
    """Names of the modules that carry LoRA adapters (peft `LoraLayer`s)."""
    from peft.tuners.lora import LoraLayer

    return [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]


def count_trainable_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def _check_targets(model: Any, pattern: str) -> None:
    """Fail before wrapping: peft itself raises a less helpful error when nothing matches."""
    import re

    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise VigosError(f"lora.target_modules {pattern!r} is not a valid regex: {e}") from e
    matched = [name for name, _ in model.named_modules() if name and regex.fullmatch(name)]
    _validate(matched, pattern)


def _validate(names: list[str], pattern: str) -> None:
    if not names:
        raise VigosError(
            f"lora.target_modules {pattern!r} matches no module of the model; it is a regex full-matched against "
            r"module names, e.g. .*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
        )
    vision = [n for n in names if VISION_PREFIX in n.split(".")]
    if vision:
        raise VigosError(
            f"lora.target_modules {pattern!r} matches {len(vision)} vision-tower module(s) (e.g. {vision[0]}); "
            "restrict it to the language model, e.g. start it with .*language_model.*"
        )
