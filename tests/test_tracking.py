"""Tracking against a real `mlflow server` (started by the session fixture)."""

import threading

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from vigos import tracking


def test_parent_and_nested_step_runs(tracking_env):
    with tracking.step_run("prepare-data", kfp_run_id="run-a", experiment="t-nest", params={"data.seed": 42}):
        tracking.log_metrics({"data/kept_rate": 0.5, "data/nan": float("nan"), "note": "not a number"})
        mlflow.log_dict({"x": 1}, "stats.json")
    with tracking.step_run("train", kfp_run_id="run-a", experiment="t-nest"):
        pass
    steps = tracking.step_runs("run-a", "t-nest")
    assert [r.data.tags[tracking.TAG_STEP] for r in steps] == ["prepare-data", "train"]
    parent = tracking.parent_run_id("run-a", "t-nest")
    assert {r.data.tags["mlflow.parentRunId"] for r in steps} == {parent}
    prep = steps[0]
    assert prep.info.status == "FINISHED"
    assert prep.data.metrics == {"data/kept_rate": 0.5}
    assert prep.data.params == {"data.seed": "42"}
    parent_run = MlflowClient().get_run(parent)  # step params are the parent's too (its runs-table row)
    assert parent_run.data.params == {"data.seed": "42"}
    assert parent_run.data.tags[tracking.TAG_COMMIT] == prep.data.tags[tracking.TAG_COMMIT] == tracking.source_commit()
    client = MlflowClient()
    assert [a.path for a in client.list_artifacts(prep.info.run_id)] == ["stats.json"]
    # another pipeline run gets its own parent
    assert tracking.parent_run_id("run-b", "t-nest") != parent


def test_retried_step_reuses_its_run_and_failure_is_recorded(tracking_env):
    with pytest.raises(RuntimeError):
        with tracking.step_run("train", kfp_run_id="run-r", experiment="t-retry", params={"lr": 1}):
            raise RuntimeError("pod preempted")
    (first,) = tracking.step_runs("run-r", "t-retry")
    assert first.info.status == "FAILED"
    with tracking.step_run("train", kfp_run_id="run-r", experiment="t-retry", params={"lr": 2}):
        pass
    (again,) = tracking.step_runs("run-r", "t-retry")
    assert again.info.run_id == first.info.run_id and again.info.status == "FINISHED"
    assert again.data.params == {"lr": "1"} and again.data.tags["param_changed.lr"] == "2"


def test_concurrent_steps_share_one_parent(tracking_env):
    errors = []

    def step(name):
        try:
            with tracking.step_run(name, kfp_run_id="run-c", experiment="t-race"):
                pass
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    # mlflow's fluent API keeps the active run per thread, so threads model two pods starting together
    threads = [threading.Thread(target=step, args=(f"s{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    parents = {r.data.tags["mlflow.parentRunId"] for r in tracking.step_runs("run-c", "t-race")}
    assert len(parents) == 1
    client = MlflowClient()
    exp = client.get_experiment_by_name("t-race")
    live = client.search_runs([exp.experiment_id], filter_string="tags.`vigos.role` = 'pipeline'")
    assert [r.info.run_id for r in live] == list(parents)


def test_finish_parent(tracking_env):
    with tracking.step_run("prepare-data", kfp_run_id="run-f", experiment="t-fin"):
        pass
    run_id = tracking.finish_parent("run-f", "t-fin", "FAILED", kfp_state="FAILED", error_message="boom")
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["kfp.error"] == "boom"


def test_local_default_store(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("VIGOS_HOME", str(tmp_path / "home"))
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"


def test_experiments_open_on_the_runs_table(tracking_env):
    client = MlflowClient()
    with tracking.step_run("train", kfp_run_id="run-kind", experiment="t-kind"):
        pass
    assert client.get_experiment_by_name("t-kind").tags["mlflow.experimentKind"] == "custom_model_development"
    # an experiment made before (no kind) gets it; one a user set is left alone
    old = client.create_experiment("t-kind-old")
    mine = client.create_experiment("t-kind-mine", tags={"mlflow.experimentKind": "genai_development"})
    tracking.use_experiment("t-kind-old")
    tracking.use_experiment("t-kind-mine")
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(mine).tags["mlflow.experimentKind"] == "genai_development"
    import os

    import mlflow.tracking.fluent as fluent

    fluent._active_experiment_id = None  # use_experiment is process-global
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
