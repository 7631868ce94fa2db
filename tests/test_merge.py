"""LoRA merge on the tiny model: logits verified from disk, atomic output, clear errors."""

import json

import pytest
import torch

from vigos.errors import VigosError
from vigos.merge import merge


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    from transformers import AutoProcessor

    from vigos.config import load_config
    from vigos.modeling.load import load_model
    from vigos.modeling.lora import apply_lora

    cfg = load_config("tiny", overrides=[f"model.name_or_path={tiny_model_dir}"])
    model = apply_lora(load_model(cfg.model), cfg.lora)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)  # a trained-looking adapter: merging must change the logits
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def _logits(path, inputs):
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_merge_matches_adapter_logits(adapter_dir, tiny_model_dir, tmp_path, dtype):
    result = merge(adapter_dir, tmp_path / "merged", dtype=dtype)
    out = result.output_dir
    assert result.base_model == str(tiny_model_dir)  # taken from adapter_config.json
    assert result.max_abs_diff <= result.allowed_diff
    if dtype == "float32":
        assert result.relative_diff < 1e-4
    assert (out / "config.json").exists() and (out / "generation_config.json").exists()
    assert list(out.glob("*.safetensors")) and not list(out.glob("adapter_*"))
    assert json.loads((out / "vigos_merge.json").read_text())["dtype"] == dtype
    from transformers import AutoProcessor

    AutoProcessor.from_pretrained(out)
    # the merge changed the model: its logits are not the base model's
    from vigos.merge import _probe_inputs

    inputs = _probe_inputs(AutoProcessor.from_pretrained(out))
    assert not torch.allclose(_logits(out, inputs), _logits(tiny_model_dir, inputs), atol=1e-3)


def test_sharded_output(adapter_dir, tmp_path):
    result = merge(adapter_dir, tmp_path / "merged", dtype="float32", max_shard_size="200KB")
    assert result.shards > 1 and (result.output_dir / "model.safetensors.index.json").exists()


def test_refuses_non_empty_output_unless_overwrite(adapter_dir, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(VigosError, match="is not empty; choose an empty --output or pass --overwrite"):
        merge(adapter_dir, out, dtype="float32")
    assert (out / "keep.txt").read_text() == "precious"
    merge(adapter_dir, out, overwrite=True, dtype="float32")
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()


def test_missing_adapter_file(adapter_dir, tmp_path):
    broken = tmp_path / "adapter"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((adapter_dir / "adapter_config.json").read_text())
    with pytest.raises(VigosError, match="missing adapter_model.safetensors"):
        merge(broken, tmp_path / "merged", dtype="float32")
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bad_merge_is_not_published(adapter_dir, tmp_path, monkeypatch, dtype):
    from peft.tuners.lora import LoraModel

    # a broken merge (the adapter silently dropped) must be caught by the probe check
    monkeypatch.setattr(LoraModel, "merge_and_unload", lambda self, *a, **k: self.unload())
    with pytest.raises(VigosError, match="differ from the adapter-on logits"):
        merge(adapter_dir, tmp_path / "merged", dtype=dtype)
    assert not (tmp_path / "merged").exists()
    assert not list(tmp_path.glob(".merged.merge-*"))  # no scratch left behind


def test_cli(adapter_dir, tmp_path, capsys):
    from vigos.cli import main

    main(["merge", "--adapter", str(adapter_dir), "--output", str(tmp_path / "m"), "--preset", "tiny"])
    assert "merged" in capsys.readouterr().out and (tmp_path / "m" / "config.json").exists()
    with pytest.raises(SystemExit) as e:
        main(["merge", "--adapter", str(tmp_path / "nope"), "--output", str(tmp_path / "m2"), "--preset", "tiny"])
    assert e.value.code == 2 and "is not a LoRA adapter" in capsys.readouterr().err
