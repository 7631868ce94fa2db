"""LoRA goes on the language model only; only LoRA weights train; disabling the adapter gives base logits."""

from __future__ import annotations

import pytest
import torch
from qwen_vl_utils import process_vision_info
from transformers import Qwen2_5_VLForConditionalGeneration

from vigos.config import LoraConfig, load_config
from vigos.data.prompts import build_messages, build_prompt_text
from vigos.errors import VigosError
from vigos.modeling.lora import apply_lora, count_trainable_parameters, lora_module_names

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture
def fresh_model(tiny_model_dir):
    # get_peft_model modifies the model in place: never reuse the session model here.
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir)


def test_lora_targets_language_model_only(fresh_model):
    cfg = load_config("tiny").lora
    model = apply_lora(fresh_model, cfg)
    names = lora_module_names(model)
    n_layers = model.config.text_config.num_hidden_layers
    assert len(names) == n_layers * len(PROJ)
    assert all(".language_model." in n and ".visual." not in n for n in names)
    assert {n.rsplit(".", 1)[1] for n in names} == set(PROJ)

    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    n_train, n_total = count_trainable_parameters(model)
    assert 0 < n_train < n_total
    module = model.get_submodule(names[0])
    assert module.r["default"] == cfg.r and module.scaling["default"] == cfg.alpha / cfg.r


def test_disable_adapter_gives_base_logits_and_grads_reach_lora_only(fresh_model, tiny_processor, red_image):
    messages = build_messages("What color?", [red_image])
    images, _ = process_vision_info(messages)
    inputs = tiny_processor(text=[build_prompt_text(tiny_processor, messages)], images=images, return_tensors="pt")
    with torch.no_grad():
        base = fresh_model(**inputs).logits

    model = apply_lora(fresh_model, LoraConfig(r=4, alpha=8, dropout=0.0))
    model.eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)  # B starts at zero; make the adapter change the output
        adapted = model(**inputs).logits
        with model.disable_adapter():
            disabled = model(**inputs).logits
    assert not torch.allclose(adapted, base, atol=1e-4)
    torch.testing.assert_close(disabled, base)

    model.train()
    model(**inputs).logits[0, -1].logsumexp(-1).backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)


def test_lora_rejects_bad_targets(tiny_model_dir):
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir)
    with pytest.raises(VigosError, match="matches no module"):
        apply_lora(model, LoraConfig(target_modules=r".*\.no_such_proj"))
    with pytest.raises(VigosError, match="vision-tower"):
        apply_lora(model, LoraConfig(target_modules=r".*\.(gate_proj|up_proj|down_proj)"))
    with pytest.raises(VigosError, match="not a valid regex"):
        apply_lora(model, LoraConfig(target_modules=r".*(q_proj"))
