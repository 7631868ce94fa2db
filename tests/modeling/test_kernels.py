"""`vigos.modeling.kernels.apply_liger`: which transformers names it patches and how it swaps a built model's modules.

liger-kernel's kernels are Triton (CUDA only) and the package is not installed here, so a stand-in `liger_kernel`
package (written by the test into a temp folder) provides the three replacements as plain torch with the reference
math. What this checks is our wiring, which the real package cannot show on CPU: every target exists in this
transformers, the classes are swapped before loading, a built LoRA model keeps its weights and adapters, and the
outputs are unchanged.
"""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as mq

from vigos.config import load_config
from vigos.errors import VigosError
from vigos.modeling import kernels

STAND_IN = {
    "rms_norm.py": """
        import torch

        class LigerRMSNorm(torch.nn.Module):
            def __init__(self, hidden_size, eps=1e-6):
                super().__init__()
                self.weight = torch.nn.Parameter(torch.ones(hidden_size))
                self.variance_epsilon = eps

            def forward(self, x):
                h = x.to(torch.float32)
                h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
                return self.weight * h.to(x.dtype)
    """,
    "swiglu.py": """
        import torch

        class LigerSwiGLUMLP(torch.nn.Module):
            def __init__(self, config):
                super().__init__()
                self.gate_proj = torch.nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
                self.up_proj = torch.nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
                self.down_proj = torch.nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

            def forward(self, x):
                return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))
    """,
    "rope.py": """
        import torch

        def _half(x):
            return torch.cat((-x[..., x.shape[-1] // 2:], x[..., : x.shape[-1] // 2]), dim=-1)

        def liger_rotary_pos_emb(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
            cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
            return q * cos + _half(q) * sin, k * cos + _half(k) * sin
    """,
}


@pytest.fixture
def stand_in_liger(tmp_path, monkeypatch):
    package = tmp_path / "liger_kernel" / "transformers"
    package.mkdir(parents=True)
    (tmp_path / "liger_kernel" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    for name, source in STAND_IN.items():
        (package / name).write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in kernels.LIGER:  # restored at teardown: the patch is process-wide
        monkeypatch.setattr(mq, name, getattr(mq, name))
    yield
    for name in [m for m in sys.modules if m.startswith("liger_kernel")]:
        monkeypatch.delitem(sys.modules, name)


def _inputs(tiny_processor, red_image):
    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What color?<|im_end|>\n"
    return dict(tiny_processor(text=[text], images=[red_image], return_tensors="pt"))


@torch.no_grad()
def test_liger_swaps_a_built_lora_model_without_changing_it(stand_in_liger, tiny_model_dir, tiny_processor,
                                                             red_image):
    from vigos.modeling.load import load_model
    from vigos.modeling.lora import apply_lora

    cfg = load_config("tiny", overrides=[f"model.name_or_path={tiny_model_dir}", "lora.dropout=0"])
    model = apply_lora(load_model(cfg.model), cfg.lora)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.normal_()  # a trained adapter: the swapped MLPs must still run it
    inputs = _inputs(tiny_processor, red_image)
    before = model(**inputs).logits
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}

    kernels.apply_liger(model.get_base_model())

    assert mq.Qwen2_5_VLRMSNorm.__module__ == "liger_kernel.transformers.rms_norm"
    assert mq.apply_rotary_pos_emb.__module__ == "liger_kernel.transformers.rope"
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"LigerRMSNorm", "LigerSwiGLUMLP"} <= kinds and not {"Qwen2_5_VLRMSNorm", "Qwen2MLP"} & kinds
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable  # LoRA layers kept
    assert not any(p.is_meta for p in model.parameters())
    torch.testing.assert_close(model(**inputs).logits, before, rtol=1e-5, atol=1e-5)

    fresh = load_model(cfg.model)  # loaded after the patch: the classes themselves are liger's
    assert "LigerSwiGLUMLP" in {type(m).__name__ for m in fresh.modules()}


def test_a_renamed_target_fails_in_one_line(stand_in_liger, monkeypatch):
    monkeypatch.delattr(mq, "Qwen2MLP")
    with pytest.raises(VigosError, match=r"has no modeling_qwen2_5_vl\.Qwen2MLP to patch; set train.fused_kernels"):
        kernels.apply_liger()


def test_auto_falls_back_when_liger_cannot_patch(stand_in_liger, monkeypatch):
    def broken(model=None):
        raise ImportError("cannot import name 'Qwen2_5_VLCausalLMOutputWithPast'")

    monkeypatch.setattr(kernels, "apply_liger", broken)  # the stand-in package is found: liger counts as installed
    chosen, line = kernels.use_fused_kernels("auto", "cuda")
    assert chosen == "none" and "could not patch Qwen2.5-VL (cannot import name" in line
    with pytest.raises(VigosError, match="train.fused_kernels=liger: cannot import name"):
        kernels.use_fused_kernels("liger", "cuda")
