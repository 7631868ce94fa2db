import json

import pytest

from vigos.config import PRESETS, ConfigError, VigosConfig, config_from_json, dump_config, load_config


def test_defaults_are_the_model_card():
    cfg = load_config("paper-7b")
    assert cfg.model.name_or_path == "Qwen/Qwen2.5-VL-7B-Instruct"
    t = cfg.train
    assert (t.learning_rate, t.max_grad_norm, t.kl_token_clip) == (5e-6, 0.1, 0.05)
    assert (t.rollout_temperature, t.rollout_top_p, t.rollout_top_k) == (1.1, 0.95, 20)
    assert (t.lambda_perception, t.lambda_reasoning, t.lambda_reference) == (1.0, 1.0, 2.0)
    assert t.global_batch_size == 32 and t.gradient_accumulation_steps is None  # derived per world size
    assert t.per_device_train_batch_size * t.accumulation_steps(8) * 8 == 32  # 1 x 4 x 8 GPUs
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (64, 128, 0.05)
    assert (t.max_prompt_length, t.max_completion_length, t.zero_stage) == (32768, 4096, 2)
    e = cfg.eval
    assert (e.n_samples, e.temperature, e.top_p, e.top_k, e.max_new_tokens, e.seed) == (5, 1.0, 0.9, 20, 4096, 42)
    assert cfg.data.source == "LMMs-Lab-Turtle/Vision-SR1-47K" and cfg.data.min_image_size == 3


def test_accumulation_is_derived_from_the_global_batch():
    t = load_config("paper-7b").train
    assert [t.accumulation_steps(w) for w in (1, 2, 4, 8, 32)] == [32, 16, 8, 4, 1]
    assert load_config("paper-7b", overrides=["train.per_device_train_batch_size=2"]).train.accumulation_steps(8) == 2
    assert load_config("tiny").train.accumulation_steps(1) == 2
    explicit = load_config("paper-7b", overrides=["train.gradient_accumulation_steps=4"]).train
    assert explicit.accumulation_steps(8) == 4  # an explicit value that multiplies out is kept


def test_a_global_batch_that_cannot_be_made_is_a_clear_error():
    t = load_config("paper-7b").train
    with pytest.raises(ConfigError) as e:
        t.accumulation_steps(3)  # 32 prompts on 3 GPUs
    assert "train.global_batch_size 32" in str(e.value) and "1 x 3 rank(s) = 3" in str(e.value)
    with pytest.raises(ConfigError) as e:
        t.accumulation_steps(64)  # more ranks than prompts
    assert "train.global_batch_size 32" in str(e.value)
    explicit = load_config("paper-7b", overrides=["train.gradient_accumulation_steps=2"]).train
    with pytest.raises(ConfigError) as e:
        explicit.accumulation_steps(8)  # 1 x 2 x 8 = 16, not 32
    msg = str(e.value)
    assert "per-device batch 1 x gradient accumulation 2 x 8 rank(s) = 16" in msg
    assert "not train.global_batch_size 32" in msg and "train.gradient_accumulation_steps" in msg


def test_presets_only_name_existing_keys():
    for name in PRESETS:
        load_config(name)  # raises on an unknown key in the preset itself


def test_layering_yaml_then_overrides_then_values(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("train:\n  learning_rate: 1.0e-4\n  max_steps: 7\ndata:\n  max_samples: 10\n")
    cfg = load_config("tiny", y, ["train.max_steps=9", "eval.benchmarks=mmmu,mm-vet"], {"data.max_samples": 3})
    assert cfg.train.learning_rate == 1e-4  # from YAML
    assert cfg.train.max_steps == 9  # override beats YAML
    assert cfg.data.max_samples == 3  # typed values beat overrides
    assert cfg.eval.benchmarks == ["mmmu", "mm-vet"]
    assert cfg.model.dtype == "float32"  # from the tiny preset


@pytest.mark.parametrize(
    "item, message",
    [
        ("train.foo=1", "unknown key 'train.foo'; valid keys here: method"),
        ("trainx.a=1", "unknown key 'trainx'"),
        ("train.max_steps=abc", "'train.max_steps' expects an integer, got 'abc'"),
        ("train.method=grpo", "must be one of ['vigos', 'opsd']"),
        ("train.bf16=maybe", "'train.bf16' expects true/false"),
        ("train=3", "'train' is a section"),
        ("max_steps", "not of the form section.key=value"),
        ("preset=tiny", "the preset is chosen on its own"),
    ],
)
def test_bad_overrides_are_clear_errors(item, message):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", overrides=[item])
    assert message in str(e.value)


def test_unknown_preset_and_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        load_config("huge")
    y = tmp_path / "bad.yaml"
    y.write_text("lora:\n  rank: 8\n")
    with pytest.raises(ConfigError, match=f"{y}: unknown key 'lora.rank'"):
        load_config("paper-7b", y)


def test_round_trip_json_and_yaml():
    cfg = load_config("tiny", overrides=["train.kl_token_clip=0.1", "data.max_samples=null"])
    again = config_from_json(json.dumps(cfg.to_dict()))
    assert again == cfg
    assert "kl_token_clip: 0.1" in dump_config(cfg)
    assert cfg.flat()["train.kl_token_clip"] == 0.1
    assert isinstance(VigosConfig().flat()["lora.target_modules"], str)
