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


# --- mistakes in config files, keys and values (issue 13): one line naming the file/key, the value and the fix ---


def test_config_file_mistakes_name_the_file_and_the_problem(tmp_path):
    from vigos.config import read_yaml_config

    cases = {
        "nope.yaml": None,
        "bad.yaml": "train: [1,\n",
        "tab.yaml": "train:\n\tmax_steps: 1\n",
        "list.yaml": "- a\n- b\n",
        "scalar.yaml": "42\n",
    }
    expected = {
        "nope.yaml": "does not exist; check the --config path",
        "bad.yaml": "is not valid YAML at line",
        "tab.yaml": "is not valid YAML at line 2",
        "list.yaml": "expected a mapping of sections (e.g. `train: {max_steps: 10}`), got a list",
        "scalar.yaml": "got a int",
    }
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError) as e:
            load_config("tiny", tmp_path / name)
        msg = str(e.value)
        assert str(tmp_path / name) in msg and expected[name] in msg and "\n" not in msg, msg
    with pytest.raises(ConfigError, match="is a folder"):
        load_config("tiny", tmp_path)
    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml_config(tmp_path / "empty.yaml") == {}
    assert load_config("tiny", tmp_path / "empty.yaml") == load_config("tiny")


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("train.learning_rat=1", "unknown key 'train.learning_rat'; did you mean 'train.learning_rate'?"),
        ("eval.n_sample=2", "did you mean 'eval.n_samples'?"),
        ("trian.max_steps=1", "unknown key 'trian'; did you mean 'train'?"),
        ("lora.rank=8", "unknown key 'lora.rank'; valid keys here: r, alpha"),  # nothing close: the list
    ],
)
def test_unknown_keys_suggest_the_closest(item, message):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", overrides=[item])
    assert message in str(e.value)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("train.learning_rate=-1e-5", "train.learning_rate is -1e-05; it must be > 0"),
        ("train.learning_rate=0", "train.learning_rate is 0.0; it must be > 0"),
        ("eval.top_p=0", "eval.top_p is 0.0; it must be in (0, 1]"),
        ("eval.top_p=1.01", "eval.top_p is 1.01; it must be in (0, 1]"),
        ("train.rollout_top_p=2", "train.rollout_top_p is 2.0; it must be in (0, 1]"),
        ("eval.temperature=-0.1", "eval.temperature is -0.1; it must be >= 0 (0: greedy)"),
        ("eval.n_samples=0", "eval.n_samples is 0; it must be >= 1"),
        ("eval.batch_size=0", "eval.batch_size is 0; it must be >= 1"),
        ("train.per_device_train_batch_size=0", "train.per_device_train_batch_size is 0; it must be >= 1"),
        ("train.global_batch_size=-4", "train.global_batch_size is -4; it must be >= 1"),
        ("lora.r=0", "lora.r is 0; it must be >= 1"),
        ("lora.dropout=1", "lora.dropout is 1.0; it must be in [0, 1)"),
        ("train.kl_token_clip=0", "train.kl_token_clip is 0.0; it must be > 0"),
        ("train.description_last_token_clip=-1", "train.description_last_token_clip is -1.0; it must be > 0"),
        ("train.max_steps=-2", "train.max_steps is -2; it must be >= -1 (-1: run the epochs)"),
        ("train.zero_stage=4", "train.zero_stage is 4; it must be in [0, 3]"),
        ("data.num_proc=0", "data.num_proc is 0; it must be >= 1"),
        ("model.min_pixels=4000", "model.min_pixels (4000) is larger than model.max_pixels (3136)"),
    ],
)
def test_out_of_range_values_name_the_key_value_and_range(item, message):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", overrides=[item])
    assert f"override {item!r}: " in str(e.value) and message in str(e.value), str(e.value)


def test_ranges_are_checked_once_on_the_final_config(tmp_path):
    from vigos.config import RANGES, VigosConfig

    flat = VigosConfig().flat()
    assert set(RANGES) <= set(flat)  # every rule names a real key
    for name in PRESETS:
        load_config(name)  # the defaults and presets are in range
    # a later layer may fix an earlier one's value: only the final value counts
    y = tmp_path / "c.yaml"
    y.write_text("eval:\n  top_p: 5\n")
    assert load_config("tiny", y, ["eval.top_p=0.5"]).eval.top_p == 0.5
    with pytest.raises(ConfigError, match=f"{y}: eval.top_p is 5.0"):
        load_config("tiny", y)
    with pytest.raises(ConfigError, match="parameter eval.n_samples: eval.n_samples is 0"):
        load_config("tiny", values={"eval.n_samples": 0})
    # None is "derive"/"all", never out of range; the special values in range are accepted
    cfg = load_config("tiny", overrides=["train.gradient_accumulation_steps=null", "eval.max_examples=null",
                                         "train.sample_log_steps=0", "eval.temperature=0", "eval.top_k=0"])
    assert cfg.train.gradient_accumulation_steps is None and cfg.eval.temperature == 0.0
    bad = load_config("tiny").to_dict()
    bad["eval"]["top_p"] = 0
    with pytest.raises(ConfigError, match="json: eval.top_p is 0"):
        config_from_json(json.dumps(bad))


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown preset 'tiyn' \(did you mean 'tiny'\?\)"):
        load_config("tiyn")


def test_vigos_home_moves_the_tiny_presets_model(tmp_path, monkeypatch):
    from vigos.config import home_path

    monkeypatch.delenv("VIGOS_HOME", raising=False)
    assert load_config("tiny").model.name_or_path == ".vigos/tiny-model"
    monkeypatch.setenv("VIGOS_HOME", str(tmp_path))
    assert load_config("tiny").model.name_or_path == str(tmp_path / "tiny-model")
    assert load_config("paper-7b").model.name_or_path == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert home_path(".vigos/x/y") == str(tmp_path / "x" / "y") and home_path("other/.vigos/x") == "other/.vigos/x"
