"""MLflow registry versions and aliases, against the real `mlflow server` of the `mlflow_server` fixture."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from vigos.errors import VigosError
from vigos.publish.registry import (
    CANDIDATE,
    CHAMPION,
    eval_settings_tags,
    flatten_scores,
    log_model_dir,
    register_model_version,
    score_tags,
)

# What `vigos eval run` records in responses/eval_run.json "settings" (vigos.evaluation.run._settings)
SETTINGS = {"sampling": {"temperature": 1.0, "top_p": 0.9, "top_k": 20, "max_new_tokens": 4096}, "seed": 42,
            "max_images": 16, "min_pixels": 3136, "max_pixels": 12845056, "dtype": "bfloat16",
            "prefill": "<description>", "student_prompt": "release"}


def make_scores(mean_pass: float, mean_avg: float = 40.0, n: int = 8, grader: str = "rules") -> dict:
    return {
        "benchmarks": {
            "mmmu": {"n_examples": n, "k": 5, "pass_at_k": mean_pass, "avg_at_k": mean_avg, "grader": grader},
            "cv-bench": {"n_examples": n, "k": 5, "pass_at_k": mean_pass, "avg_at_k": mean_avg, "grader": "rules",
                         "2D": {"n_examples": 4, "k": 5, "pass_at_k": 50.0, "avg_at_k": None}},
        },
        "mean": {"pass_at_k": mean_pass, "avg_at_k": mean_avg, "benchmarks": ["mmmu", "cv-bench"], "missing": []},
        "vilp": {"vilp-f": {"score": 61.5, "prior": 97.0, "n_examples": 6, "k": 1, "grader": "rules"}},
        "grader": "rules",
        "student_prompt": "release",
    }


def register(name: str, kfp: str, mean_pass: float, **kw):
    args = dict(run_id=None, kfp_run_id=kfp, scores=make_scores(mean_pass), base_model="Qwen/Qwen2.5-VL-7B-Instruct",
                dataset="LMMs-Lab-Turtle/Vision-SR1-47K", gate_metric="mean.pass_at_k", eval_settings=SETTINGS)
    args.update(kw)
    return register_model_version(name, f"s3://bucket/{kfp}/merged", **args)


@pytest.fixture
def client(tracking_env):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_env)


@pytest.fixture
def name():
    return f"vigos-test-{uuid.uuid4().hex[:8]}"


def test_flatten_scores_keeps_every_number_and_skips_none():
    flat = flatten_scores(make_scores(70.0))
    assert flat["mmmu.pass_at_k"] == 70.0 and flat["mean.avg_at_k"] == 40.0
    assert flat["vilp-f.score"] == 61.5 and flat["vilp-f.prior"] == 97.0
    assert flat["cv-bench.2D.pass_at_k"] == 50.0 and "cv-bench.2D.avg_at_k" not in flat  # None is not a score
    assert "mean.benchmarks" not in flat and "mmmu.grader" not in flat
    tags = score_tags(make_scores(70.25))
    assert tags["score.mean.pass_at_k"] == "70.25" and tags["score.mmmu.n_examples"] == "8"
    assert tags["score.grader"] == "rules"


def test_champion_moves_only_when_beaten_and_reruns_reuse(client, name):
    first = register(name, "run-a", 70.0)
    assert (first.version, first.champion_moved, first.reused, first.previous_champion) == (1, True, False, None)
    assert first.aliases == [CANDIDATE, CHAMPION]
    mv = client.get_model_version(name, "1")
    assert mv.source == "s3://bucket/run-a/merged"
    assert mv.tags["kfp.run_id"] == "run-a" and mv.tags["score.mean.pass_at_k"] == "70.0"
    assert mv.tags["score.mmmu.avg_at_k"] == "40.0" and mv.tags["score.vilp-f.prior"] == "97.0"
    assert mv.tags["vigos.base_model"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert mv.tags["vigos.dataset"] == "LMMs-Lab-Turtle/Vision-SR1-47K"

    worse = register(name, "run-b", 65.0)
    assert (worse.version, worse.champion_moved, worse.aliases) == (2, False, [CANDIDATE])
    assert client.get_model_version_by_alias(name, CHAMPION).version == "1"
    assert "candidate only" in client.get_model_version(name, "2").tags["gate.decision"]

    tie = register(name, "run-t", 70.0)  # strictly greater is needed
    assert tie.champion_moved is False

    better = register(name, "run-c", 72.5)
    assert (better.version, better.champion_moved, better.previous_champion) == (4, True, 1)
    assert better.aliases == [CANDIDATE, CHAMPION]
    assert client.get_model_version_by_alias(name, CHAMPION).version == "4"
    assert client.get_model_version(name, "1").aliases == []

    again = register(name, "run-c", 72.5)  # the publish step of run-c retried
    assert (again.version, again.reused, again.champion_moved, again.aliases) == (4, True, False, [CANDIDATE, CHAMPION])
    old = register(name, "run-b", 65.0)  # an old run re-published: no new version, champion stays
    assert (old.version, old.reused, old.champion_moved) == (2, True, False)
    assert len(client.search_model_versions(f"name = '{name}'")) == 4
    assert client.get_model_version_by_alias(name, CHAMPION).version == "4"


def test_champion_without_the_gate_tag_counts_as_beaten(client, name):
    client.create_registered_model(name)  # same evaluation settings, but no score tag to compare with
    client.create_model_version(name, source="s3://bucket/by-hand", tags=eval_settings_tags(make_scores(1.0), SETTINGS))
    client.set_registered_model_alias(name, CHAMPION, "1")
    r = register(name, "run-a", 10.0)
    assert (r.version, r.champion_moved, r.previous_champion) == (2, True, 1)
    assert "counted as beaten" in client.get_model_version(name, "2").tags["gate.decision"]


def test_eval_settings_record():
    scores = make_scores(70.0, n=100, grader="rules (approximate)")
    scores["judge"] = {"model": "gpt-judge", "http_calls": 3}
    tags = eval_settings_tags(scores, {**SETTINGS, "max_examples": None})
    assert list(tags)[0] == "eval.benchmarks" and tags["eval.benchmarks"] == "cv-bench,mmmu,vilp-f"
    assert tags["eval.sampling.temperature"] == "1.0" and tags["eval.sampling.top_k"] == "20"
    assert (tags["eval.seed"], tags["eval.dtype"], tags["eval.prefill"]) == ("42", "bfloat16", "<description>")
    assert tags["eval.max_examples"] == "all" and tags["eval.student_prompt"] == "release"
    assert tags["eval.judge_model"] == "gpt-judge"
    assert tags["eval.bench.mmmu.n_examples"] == "100" and tags["eval.bench.mmmu.k"] == "5"
    assert tags["eval.bench.mmmu.grader"] == "rules (approximate)" and tags["eval.bench.vilp-f.k"] == "1"
    assert not any(k.startswith("eval.bench.cv-bench.2D") for k in tags)  # breakdowns are scores, not settings
    # no eval_run.json: what the scores say (the prompt set included) is still recorded
    bare = eval_settings_tags(make_scores(70.0))
    assert bare["eval.student_prompt"] == "release" and "eval.seed" not in bare


def test_gate_compares_like_with_like(client, name):
    full = register(name, "run-full", 70.0, scores=make_scores(70.0, n=900))
    assert full.champion_moved
    v1 = client.get_model_version(name, "1")
    assert v1.tags["eval.bench.mmmu.n_examples"] == "900" and v1.tags["eval.sampling.top_p"] == "0.9"

    # a higher score on 100 examples per benchmark is not a better model
    subset = register(name, "run-subset", 90.0, scores=make_scores(90.0, n=100),
                      eval_settings={**SETTINGS, "max_examples": 100})
    assert (subset.version, subset.champion_moved, subset.aliases) == (2, False, [CANDIDATE])
    decision = client.get_model_version(name, "2").tags["gate.decision"]
    assert decision == subset.decision
    assert decision.startswith("evaluation settings differ from champion v1's: max_examples 100 vs -; "
                               "bench.cv-bench.n_examples 100 vs 900; bench.mmmu.n_examples 100 vs 900")
    assert "candidate only" in decision and "\n" not in decision

    for kfp, kw in [("run-prompt", {"eval_settings": {**SETTINGS, "student_prompt": "model-card"}}),
                    ("run-temp", {"eval_settings": {**SETTINGS, "sampling": {**SETTINGS["sampling"],
                                                                             "temperature": 0.7}}}),
                    ("run-grader", {"scores": make_scores(95.0, n=900, grader="judge")}),
                    ("run-no-record", {"eval_settings": None})]:
        kw.setdefault("scores", make_scores(95.0, n=900))
        r = register(name, kfp, 95.0, **kw)
        assert not r.champion_moved and "evaluation settings differ" in r.decision, (kfp, r.decision)
    assert "student_prompt model-card vs release" in client.get_model_version(name, "3").tags["gate.decision"]
    assert "sampling.temperature 0.7 vs 1.0" in client.get_model_version(name, "4").tags["gate.decision"]
    assert "bench.mmmu.grader judge vs rules" in client.get_model_version(name, "5").tags["gate.decision"]
    assert "sampling.temperature - vs 1.0" in client.get_model_version(name, "6").tags["gate.decision"]

    # same settings, higher score: champion moves; the re-run of the blocked subset run stays candidate
    better = register(name, "run-better", 71.0, scores=make_scores(71.0, n=900))
    assert (better.version, better.champion_moved, better.previous_champion) == (7, True, 1)
    assert better.decision == "mean.pass_at_k 71 > champion v1's 70"
    again = register(name, "run-subset", 90.0, scores=make_scores(90.0, n=100),
                     eval_settings={**SETTINGS, "max_examples": 100})
    assert (again.version, again.reused, again.champion_moved) == (2, True, False)
    assert "differ from champion v7's" in again.decision
    assert client.get_model_version_by_alias(name, CHAMPION).version == "7"
    assert len(client.search_model_versions(f"name = '{name}'")) == 7


def test_champion_without_settings_is_replaced_once_then_comparable(client, name):
    client.create_registered_model(name)  # a champion from before the settings tags: scores only
    client.create_model_version(name, source="s3://bucket/old", tags=score_tags(make_scores(99.0, n=900)))
    client.set_registered_model_alias(name, CHAMPION, "1")
    first = register(name, "run-a", 60.0, scores=make_scores(60.0, n=900))
    assert (first.version, first.champion_moved, first.previous_champion) == (2, True, 1)
    assert "champion v1 has no evaluation settings tags" in first.decision
    assert "first comparable champion" in client.get_model_version(name, "2").tags["gate.decision"]
    # from now on an incomparable version no longer replaces it, however high its score
    subset = register(name, "run-b", 99.0, scores=make_scores(99.0, n=8))
    assert not subset.champion_moved and client.get_model_version_by_alias(name, CHAMPION).version == "2"


def test_rerun_rewrites_the_settings_record(client, name):
    register(name, "run-a", 70.0, eval_settings={**SETTINGS, "max_examples": 8})
    assert client.get_model_version(name, "1").tags["eval.max_examples"] == "8"
    r = register(name, "run-a", 70.0)  # the same run re-registered from a record without max_examples
    assert r.reused and "eval.max_examples" not in client.get_model_version(name, "1").tags
    assert client.get_model_version(name, "1").tags["eval.seed"] == "42"


def test_other_gate_metric_and_extra_tags(client, name):
    register(name, "run-a", 70.0, gate_metric="vilp-f.score", tags={"vigos.preset": "tiny"})
    scores = make_scores(60.0)
    scores["vilp"]["vilp-f"]["score"] = 80.0  # worse mean, better ViLP score: the gate decides
    r = register(name, "run-b", 60.0, gate_metric="vilp-f.score", scores=scores)
    assert r.champion_moved and r.gate_value == 80.0
    assert client.get_model_version(name, "1").tags["vigos.preset"] == "tiny"


def test_unknown_gate_metric_is_a_user_error(tracking_env, name):
    with pytest.raises(VigosError, match="gate metric 'mean.pass_at_5' is not in the scores.*mean.pass_at_k"):
        register(name, "run-a", 70.0, gate_metric="mean.pass_at_5")


def test_local_path_refused_by_the_server_is_one_actionable_line(tracking_env, name, tmp_path):
    with pytest.raises(VigosError, match="refuses .* as a model version source.*--log-model") as e:
        register_model_version(name, str(tmp_path), run_id=None, kfp_run_id="run-a", scores=make_scores(1.0),
                               base_model="b", dataset="d", gate_metric="mean.pass_at_k")
    assert "\n" not in str(e.value)


def test_logged_model_folder_downloads_through_the_champion_alias(client, name, tmp_path):
    import mlflow

    model = tmp_path / "merged"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    exp = client.create_experiment(f"exp-{name}")
    run_id = client.create_run(exp).info.run_id
    source = log_model_dir(model, run_id=run_id)
    assert source == f"runs:/{run_id}/model"
    r = register_model_version(name, source, run_id=run_id, kfp_run_id="run-a", scores=make_scores(70.0),
                               base_model="b", dataset="d", gate_metric="mean.pass_at_k")
    assert r.champion_moved and client.get_model_version_by_alias(name, CHAMPION).run_id == run_id
    got = mlflow.artifacts.download_artifacts(f"models:/{name}@{CHAMPION}", dst_path=str(tmp_path / "dl"))
    assert json.loads((Path(got) / "config.json").read_text()) == {"model_type": "qwen2_5_vl"}


def test_cli_registry_prints_version_and_aliases(client, name, tmp_path):
    from typer.testing import CliRunner

    from vigos.publish.cli import app

    path = tmp_path / "scores.json"
    path.write_text(json.dumps(make_scores(70.0)))
    (tmp_path / "responses").mkdir()  # the eval folder's record, beside scores.json
    (tmp_path / "responses" / "eval_run.json").write_text(json.dumps({"settings": SETTINGS, "model": "m"}))
    args = ["registry", "--name", name, "--source", "s3://bucket/m", "--scores", str(path),
            "--gate-metric", "mean.pass_at_k", "--kfp-run-id", "run-x", "--tag", "owner=tests",
            "--dataset", "org/data", "--base-model", "Qwen/Qwen2.5-VL-7B-Instruct"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert f"registered {name} version 1 (kfp run run-x); aliases: candidate, champion" in res.output
    assert f"models:/{name}@champion" in res.output and "gate: first version: champion" in res.output
    tags = client.get_model_version(name, "1").tags
    assert tags["vigos.dataset"] == "org/data" and tags["eval.sampling.max_new_tokens"] == "4096"
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "re-applied" in res.output and "version 1" in res.output


def test_cli_registry_reads_the_training_records_or_says_what_to_pass(client, name, tmp_path):
    from typer.testing import CliRunner

    from vigos.config import load_config
    from vigos.publish.cli import app

    path = tmp_path / "scores.json"
    path.write_text(json.dumps(make_scores(70.0)))
    base = ["registry", "--name", name, "--source", "s3://bucket/m", "--scores", str(path), "--kfp-run-id", "run-y"]
    res = CliRunner().invoke(app, base)  # nothing says what the model was trained on: no guess from the preset
    assert isinstance(res.exception, VigosError) and "\n" not in str(res.exception)
    assert "pass --dataset and --base-model, or --adapter DIR" in str(res.exception)

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    cfg = load_config("tiny", overrides=["data.source=org/my-data", "data.max_samples=64",
                                         "model.name_or_path=Qwen/Qwen2.5-VL-3B-Instruct"])
    (adapter / "vigos_train_config.json").write_text(json.dumps(cfg.to_dict()))
    res = CliRunner().invoke(app, [*base, "--adapter", str(adapter)])
    assert res.exit_code == 0, res.output
    tags = client.get_model_version(name, "1").tags
    assert tags["vigos.dataset"] == "org/my-data (max_samples 64)"
    assert tags["vigos.base_model"] == "Qwen/Qwen2.5-VL-3B-Instruct"
