"""The DAG's `register` and `publish_hub` steps read what the model IS from the records beside it (the adapter's
training config and info, the merge record, the eval folder's settings), never from the step's preset; against the
real `mlflow server` of the `mlflow_server` fixture. The Hub side is a dry run (nothing is sent)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from vigos import steps
from vigos.config import load_config

from .test_model_card import card_scores, table
from .test_registry import SETTINGS


def _adapter(root: Path, overrides: list[str]) -> Path:
    adapter = root / "train" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "vigos_train_config.json").write_text(json.dumps(load_config("tiny", overrides=overrides).to_dict()))
    (adapter / "vigos_train_info.json").write_text(json.dumps({"world_size": 4, "device": "NVIDIA A100-SXM4-80GB",
                                                               "steps": 4}))
    return adapter


def _merged(root: Path, adapter: Path, base: str) -> Path:
    merged = root / "merged"
    merged.mkdir(parents=True)
    (merged / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    (merged / "model.safetensors").write_bytes(b"\0" * 64)
    (merged / "vigos_merge.json").write_text(json.dumps({"base_model": base, "adapter": str(adapter),
                                                         "dtype": "float32"}))
    return merged


def _evaluation(folder: Path, scores: dict, settings: dict | None) -> Path:
    (folder / "responses").mkdir(parents=True)
    (folder / "scores.json").write_text(json.dumps(scores))
    if settings is not None:
        (folder / "responses" / "eval_run.json").write_text(json.dumps({"settings": settings, "model": "m"}))
    return folder


@pytest.fixture
def ctx_for(tracking_env):
    name = f"vigos-step-{uuid.uuid4().hex[:8]}"

    def make(kfp: str) -> steps.StepContext:
        # the step's preset says paper-7b defaults (Vision-SR1-47K, Qwen 7B): the records must win over them
        return steps.StepContext("paper-7b", [f"publish.registered_model={name}"], f"exp-{name}", kfp)

    make.name = name
    return make


def test_register_step_tags_training_data_and_gates_like_with_like(ctx_for, tmp_path):
    from mlflow import MlflowClient

    adapter = _adapter(tmp_path / "run-1", ["data.source=org/my-data", "data.max_samples=64"])
    merged = _merged(tmp_path / "run-1", adapter, "Qwen/Qwen2.5-VL-3B-Instruct")
    full = _evaluation(tmp_path / "run-1" / "eval", card_scores(), SETTINGS)
    r1 = steps.register(ctx_for("run-1"), str(merged), str(full))
    client = MlflowClient()
    v1 = client.get_model_version(ctx_for.name, "1")
    assert v1.tags["vigos.dataset"] == "org/my-data (max_samples 64)"  # not the preset's Vision-SR1-47K
    assert v1.tags["vigos.base_model"] == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert v1.tags["eval.bench.mm-vet.n_examples"] == "100" and v1.tags["eval.seed"] == "42"
    assert "new champion" in r1.markdown and "Why: first version: champion." in r1.markdown

    # run 2: better numbers on a 10-example subset with another prompt set: stays candidate, and says why
    adapter2 = _adapter(tmp_path / "run-2", ["data.source=org/my-data", "data.max_samples=null"])
    merged2 = _merged(tmp_path / "run-2", adapter2, "Qwen/Qwen2.5-VL-3B-Instruct")
    subset = card_scores(shift=-5)
    for row in [*subset["benchmarks"].values(), *subset["vilp"].values()]:
        row["n_examples"] = 10
    easy = _evaluation(tmp_path / "run-2" / "eval", subset, {**SETTINGS, "student_prompt": "model-card"})
    r2 = steps.register(ctx_for("run-2"), str(merged2), str(easy))
    assert r2.metrics["register/champion_moved"] == 0.0 and r2.metrics["register/version"] == 2.0
    assert "champion stays version 1" in r2.markdown
    assert ("Why: evaluation settings differ from champion v1's: student_prompt model-card vs release; "
            "bench.cv-bench.n_examples 10 vs 100; bench.mathverse.n_examples 10 vs 100 (+8 more): not comparable, "
            "candidate only.") in r2.markdown
    assert client.get_model_version(ctx_for.name, "2").tags["vigos.dataset"] == "org/my-data"
    again = steps.register(ctx_for("run-2"), str(merged2), str(easy))  # a retried step reuses its version
    assert again.metrics["register/reused"] == 1.0 and again.metrics["register/version"] == 2.0


def test_register_step_without_the_adapters_records_is_one_line(ctx_for, tmp_path, capsys):
    adapter = _adapter(tmp_path / "run-1", [])
    merged = _merged(tmp_path / "run-1", adapter, "Qwen/Qwen2.5-VL-3B-Instruct")
    (adapter / "vigos_train_config.json").unlink()
    evaluation = _evaluation(tmp_path / "eval", card_scores(), SETTINGS)
    with pytest.raises(SystemExit):
        steps.register(ctx_for("run-x"), str(merged), str(evaluation))
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "has no vigos_train_config.json" in err


def test_publish_hub_step_card_is_the_runs_own(ctx_for, tmp_path):
    base = tmp_path / "models" / "tiny-model"  # a local base that records no Hub id
    base.mkdir(parents=True)
    (base / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    adapter = _adapter(tmp_path / "run-1", ["train.learning_rate=3e-4",
                                            f"data.source={tmp_path / 'data' / 'synthetic-48-0'}"])
    merged = _merged(tmp_path / "run-1", adapter, str(base))
    scores = card_scores()
    for row in [*scores["benchmarks"].values(), *scores["vilp"].values()]:
        row["n_examples"] = 8
    evaluation = _evaluation(tmp_path / "eval-model", scores, {**SETTINGS, "max_examples": 8})
    base_eval = _evaluation(tmp_path / "eval-base", card_scores(shift=3), SETTINGS)
    r = steps.publish_hub(ctx_for("run-1"), str(merged), str(adapter), str(evaluation), str(base_eval),
                          str(tmp_path / "staging"))
    assert r.metrics["publish/dry_run"] == 1.0
    card = (tmp_path / "staging" / "upload" / "README.md").read_text()
    assert str(tmp_path) not in card  # no local path of the pipeline reaches the card
    front = card.split("---\n", 2)[1]
    assert "base_model" not in front and "datasets" not in front and "model-index" in front
    rows = table(card, "Training Details")
    assert (rows["Learning rate"], rows["LoRA rank"], rows["GPUs"]) == ("0.0003", "8", "4 × NVIDIA A100-SXM4-80GB")
    assert table(card, "Model Details")["Base model"] == "tiny-model (local, no Hub id)"
    assert "at most 8 examples per benchmark were evaluated" in card
