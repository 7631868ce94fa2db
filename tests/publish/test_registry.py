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
    flatten_scores,
    log_model_dir,
    register_model_version,
    score_tags,
)


def make_scores(mean_pass: float, mean_avg: float = 40.0) -> dict:
    return {
        "benchmarks": {
            "mmmu": {"n_examples": 8, "k": 5, "pass_at_k": mean_pass, "avg_at_k": mean_avg, "grader": "rules"},
            "cv-bench": {"n_examples": 8, "k": 5, "pass_at_k": mean_pass, "avg_at_k": mean_avg,
                         "2D": {"n_examples": 4, "k": 5, "pass_at_k": 50.0, "avg_at_k": None}},
        },
        "mean": {"pass_at_k": mean_pass, "avg_at_k": mean_avg, "benchmarks": ["mmmu", "cv-bench"], "missing": []},
        "vilp": {"vilp-f": {"score": 61.5, "prior": 97.0, "n_examples": 6, "k": 1}},
        "grader": "rules",
    }


def register(name: str, kfp: str, mean_pass: float, **kw):
    args = dict(run_id=None, kfp_run_id=kfp, scores=make_scores(mean_pass), base_model="Qwen/Qwen2.5-VL-7B-Instruct",
                dataset="LMMs-Lab-Turtle/Vision-SR1-47K", gate_metric="mean.pass_at_k")
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
    client.create_registered_model(name)
    client.create_model_version(name, source="s3://bucket/by-hand")
    client.set_registered_model_alias(name, CHAMPION, "1")
    r = register(name, "run-a", 10.0)
    assert (r.version, r.champion_moved, r.previous_champion) == (2, True, 1)
    assert "counted as beaten" in client.get_model_version(name, "2").tags["gate.decision"]


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


def test_cli_registry_prints_version_and_aliases(tracking_env, name, tmp_path):
    from typer.testing import CliRunner

    from vigos.publish.cli import app

    path = tmp_path / "scores.json"
    path.write_text(json.dumps(make_scores(70.0)))
    args = ["registry", "--name", name, "--source", "s3://bucket/m", "--scores", str(path),
            "--gate-metric", "mean.pass_at_k", "--kfp-run-id", "run-x", "--tag", "owner=tests"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert f"registered {name} version 1 (kfp run run-x); aliases: candidate, champion" in res.output
    assert f"models:/{name}@champion" in res.output
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "re-applied" in res.output and "version 1" in res.output
