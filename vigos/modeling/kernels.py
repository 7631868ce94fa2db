"""`train.fused_kernels`: liger-kernel's fused Triton kernels for Qwen2.5-VL's language model (RMSNorm, SwiGLU,
rotary), applied to the transformers classes before the model is loaded, so every instance (the policy, which is
also every teacher and the rollout engine's model) runs them: sampling and training stay the same network.

Not liger's cross-entropy nor its fused linear cross-entropy (the latter replaces the model's forward): the loss
here is the chunked KL from hidden states (`vigos.training.losses`).

Rotary: liger-kernel 0.8.5's `apply_liger_kernel_to_qwen2_5_vl(rope=True)` replaces
`modeling_qwen2_5_vl.apply_multimodal_rotary_pos_emb`, which transformers 5 no longer calls: its rotary embedding
recomposes the mRoPE sections into ordinary `[batch, seq, head_dim]` cos/sin, then the attention calls the plain
`apply_rotary_pos_emb`. That one takes liger's plain rotary kernel (`liger_rotary_pos_emb`, the same one liger
patches into Qwen2/Llama), so the rotary is fused here too.
"""

from __future__ import annotations

import importlib.util

from vigos.errors import VigosError

SETTINGS = ("auto", "liger", "none")


def resolve_fused_kernels(setting: str, device_type: str) -> tuple[str, str]:
    """(`liger` or `none`, why) for `train.fused_kernels` on a `device_type` device; VigosError when `liger` is asked
    for where it cannot run."""
    if setting not in SETTINGS:
        raise VigosError(f"train.fused_kernels is {setting!r}; it must be one of {list(SETTINGS)}")
    installed = importlib.util.find_spec("liger_kernel") is not None
    if setting == "none":
        return "none", "as configured"
    if setting == "liger":
        if device_type != "cuda":
            raise VigosError(f"train.fused_kernels=liger needs a CUDA device (liger-kernel's Triton kernels), this "
                             f"run is on {device_type}; set train.fused_kernels=auto or none")
        if not installed:
            raise VigosError("train.fused_kernels=liger needs the liger-kernel package (pip install 'vigos[gpu]'); "
                             "set train.fused_kernels=auto or none")
        return "liger", "as configured"
    if device_type != "cuda":
        return "none", f"{device_type}: liger-kernel's kernels need CUDA"
    if not installed:
        return "none", "liger-kernel is not installed (pip install 'vigos[gpu]')"
    return "liger", "liger-kernel is installed and the device is CUDA"


def apply_liger(model=None) -> None:
    """Patch Qwen2.5-VL's RMSNorm, SwiGLU MLP and rotary with liger-kernel's (the classes, so call it before
    `from_pretrained`; `model`: also patch an already built instance)."""
    from liger_kernel.transformers import apply_liger_kernel_to_qwen2_5_vl
    from liger_kernel.transformers.rope import liger_rotary_pos_emb
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl

    apply_liger_kernel_to_qwen2_5_vl(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                     fused_linear_cross_entropy=False, model=model)
    modeling_qwen2_5_vl.apply_rotary_pos_emb = liger_rotary_pos_emb  # see the module docstring


def use_fused_kernels(setting: str, device_type: str, model=None) -> tuple[str, str]:
    """Resolve `train.fused_kernels` and apply liger when chosen; returns (`liger` or `none`, the `[vigos]` line)."""
    chosen, why = resolve_fused_kernels(setting, device_type)
    if chosen == "liger":
        apply_liger(model)
    return chosen, f"[vigos] fused kernels: {chosen} (train.fused_kernels={setting}: {why})"
