"""`train.fused_kernels`: liger-kernel's fused Triton kernels for Qwen2.5-VL's language model (RMSNorm, SwiGLU,
rotary), applied to the transformers classes before the model is loaded, so every instance (the policy, which is
also every teacher and the rollout engine's model) runs them: sampling and training stay the same network.

Not liger's cross-entropy nor its fused linear cross-entropy (the latter replaces the model's forward): the loss
here is the chunked KL from hidden states (`vigos.training.losses`).

Rotary: liger's own Qwen2.5-VL patch replaces `modeling_qwen2_5_vl.apply_multimodal_rotary_pos_emb`, which
transformers 5 no longer calls: its rotary embedding recomposes the mRoPE sections into ordinary
`[batch, seq, head_dim]` cos/sin, then the attention calls the plain `apply_rotary_pos_emb`. That one takes liger's
plain rotary kernel (`liger_rotary_pos_emb`, the one liger patches into Qwen2/Llama), so the rotary is fused here.
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


LIGER = {  # modeling_qwen2_5_vl name -> (liger-kernel module, its drop-in replacement)
    "Qwen2_5_VLRMSNorm": ("liger_kernel.transformers.rms_norm", "LigerRMSNorm"),
    "Qwen2MLP": ("liger_kernel.transformers.swiglu", "LigerSwiGLUMLP"),
    "apply_rotary_pos_emb": ("liger_kernel.transformers.rope", "liger_rotary_pos_emb"),
}
"""What is patched. Not through liger's `apply_liger_kernel_to_qwen2_5_vl`: liger-kernel 0.8.5's imports its
fused-linear-cross-entropy forward unconditionally, and that imports `Qwen2_5_VLCausalLMOutputWithPast`, which
transformers 5.24 no longer has (ImportError even with `fused_linear_cross_entropy=False`). The building blocks
it would patch in are imported directly instead."""


def apply_liger(model=None) -> None:
    """Patch Qwen2.5-VL's RMSNorm, SwiGLU MLP and rotary with liger-kernel's (the transformers classes, so call it
    before `from_pretrained`; `model`: also swap the modules of an already built (LoRA-wrapped) instance, keeping
    its parameters and LoRA layers). A transformers that renamed a target fails here in one line, not silently."""
    import importlib

    import transformers
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as mq

    missing = [name for name in LIGER if not hasattr(mq, name)]
    if missing:
        raise VigosError(f"train.fused_kernels=liger: transformers {transformers.__version__} has no "
                         f"modeling_qwen2_5_vl.{', '.join(missing)} to patch; set train.fused_kernels=none")
    originals = {name: getattr(mq, name) for name in LIGER}
    for name, (module, attr) in LIGER.items():
        setattr(mq, name, getattr(importlib.import_module(module), attr))
    if model is not None:
        _swap_modules(model, originals["Qwen2_5_VLRMSNorm"], originals["Qwen2MLP"])


def _swap_modules(model, rms_norm: type, mlp: type) -> None:
    """Replace every `rms_norm` / `mlp` module of a built model by the (now patched) class, built on the meta device
    and handed the original parameters and projections (with their LoRA layers), so nothing is copied or reset."""
    import torch
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as mq

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is rms_norm:
                with torch.device("meta"):
                    new = mq.Qwen2_5_VLRMSNorm(child.weight.shape[0], eps=child.variance_epsilon)
                new.weight = child.weight
            elif type(child) is mlp:
                with torch.device("meta"):
                    new = mq.Qwen2MLP(child.config)
                new.gate_proj, new.up_proj, new.down_proj = child.gate_proj, child.up_proj, child.down_proj
            else:
                continue
            setattr(parent, name, new)


def use_fused_kernels(setting: str, device_type: str, model=None) -> tuple[str, str]:
    """Resolve `train.fused_kernels` and apply liger when chosen; returns (`liger` or `none`, the `[vigos]` line)."""
    chosen, why = resolve_fused_kernels(setting, device_type)
    if chosen == "liger":
        try:
            apply_liger(model)
        except (ImportError, VigosError) as e:  # `auto` never sinks a run over an optional speed-up
            if setting == "liger":
                raise VigosError(f"train.fused_kernels=liger: {e}") from e
            chosen, why = "none", f"liger-kernel is installed but could not patch Qwen2.5-VL ({e})"
    return chosen, f"[vigos] fused kernels: {chosen} (train.fused_kernels={setting}: {why})"
