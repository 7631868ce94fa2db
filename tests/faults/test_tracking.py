"""A tracking outage never blocks nor kills a job: `vigos.tracking.BackgroundLogger` against a real `mlflow server`
behind `Link` (benchmarks/fault_cases/tracking.py, shared with the fault table), a TCP relay the test switches
between up, down (connections cut at once) and hung (connections accepted, never answered): the test double is the
network, the server is real."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from vigos import tracking

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from fault_cases.tracking import Link  # noqa: E402


@pytest.fixture
def link(tracking_env, monkeypatch):
    relay = Link(tracking_env)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", relay.uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")  # a loaded CI machine answers slowly
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    yield relay
    relay.close()


def _new_run(direct_uri: str, experiment: str) -> str:
    client = MlflowClient(direct_uri)
    exp = client.get_experiment_by_name(experiment) or client.get_experiment(client.create_experiment(experiment))
    return client.create_run(exp.experiment_id, run_name="train").info.run_id


def _history(direct_uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(MlflowClient(direct_uri).get_metric_history(run_id, key),
                                              key=lambda m: m.step)]


@pytest.mark.parametrize("outage", ["down", "hung"])
def test_logging_never_waits_for_an_unreachable_server(link, tracking_env, tmp_path, outage):
    run_id = _new_run(tracking_env, "t-outage")
    logger = tracking.BackgroundLogger(tmp_path, run_id, retry_max_s=0.2)
    logger.log_metrics({"train/loss": 1.0}, 1)
    link.state = outage
    worst = 0.0
    for step in range(2, 22):
        started = time.perf_counter()
        logger.log_metrics({"train/loss": 1.0 / step}, step)
        worst = max(worst, time.perf_counter() - started)
    assert worst < 0.1, worst  # a journal append, never a network call
    deadline = time.monotonic() + 30
    while not logger.failures and time.monotonic() < deadline:  # the sender fails, behind the job's back
        time.sleep(0.1)
    assert logger.failures > 0
    link.state = "up"
    assert logger.close(flush_s=60) == 0
    assert _history(tracking_env, run_id, "train/loss") == [(s, 1.0 / s) for s in range(1, 22)]


def test_what_an_outage_kept_is_sent_later_once_and_in_order(link, tracking_env, tmp_path, capsys):
    run_id = _new_run(tracking_env, "t-outage")
    link.state = "down"
    logger = tracking.BackgroundLogger(tmp_path, run_id, retry_max_s=0.2)
    for step in range(1, 6):
        logger.log_metrics({"train/loss": float(step)}, step)
    logger.log_artifact(str(tmp_path / tracking.RUN_FILE), "notes")
    started = time.perf_counter()
    assert logger.close(flush_s=1) == 6  # the server never came back: the job still ends, in bounded time
    assert time.perf_counter() - started < 5
    assert "6 tracking record(s) kept" in capsys.readouterr().out
    lines = (tmp_path / tracking.JOURNAL).read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3, 4, 5, 6]
    link.state = "up"
    assert tracking.replay(tmp_path) == 0  # the run id was remembered beside the journal
    assert _history(tracking_env, run_id, "train/loss") == [(s, float(s)) for s in range(1, 6)]
    assert [a.path for a in MlflowClient(tracking_env).list_artifacts(run_id, "notes")] == [f"notes/{tracking.RUN_FILE}"]
    assert tracking.replay(tmp_path) == 0  # nothing is sent twice
    assert len(_history(tracking_env, run_id, "train/loss")) == 5


def test_a_torn_journal_line_loses_nothing_acknowledged(link, tracking_env, tmp_path):
    run_id = _new_run(tracking_env, "t-outage")
    link.state = "down"
    logger = tracking.BackgroundLogger(tmp_path, run_id, retry_max_s=0.2)
    logger.log_metrics({"train/loss": 1.0}, 1)
    logger.close(flush_s=0.5)
    with open(tmp_path / tracking.JOURNAL, "a") as f:
        f.write('{"seq": 2, "kind": "metr')  # a crash in the middle of an append
    link.state = "up"
    resumed = tracking.BackgroundLogger(tmp_path)
    resumed.log_metrics({"train/loss": 3.0}, 3)
    assert resumed.close(flush_s=30) == 0
    assert _history(tracking_env, run_id, "train/loss") == [(1, 1.0), (3, 3.0)]


def test_a_job_run_by_hand_gets_its_run_when_the_server_returns_and_keeps_it(link, tracking_env, tmp_path):
    """`vigos train` by hand starting during an outage: the run is created on first contact, ended with the job's
    status, and a rerun on the same folder logs into the same run instead of leaving one RUNNING."""
    link.state = "down"
    logger = tracking.BackgroundLogger(tmp_path, experiment="t-by-hand", retry_max_s=0.2)
    logger.log_params({"train.learning_rate": 1e-5})
    logger.log_metrics({"train/loss": 2.0}, 1)
    assert logger.close("FINISHED", flush_s=0.5) == 3 and logger.run_id is None
    link.state = "up"
    rerun = tracking.BackgroundLogger(tmp_path, experiment="t-by-hand")
    rerun.log_metrics({"train/loss": 1.0}, 2)
    assert rerun.close("FINISHED", flush_s=30) == 0
    run = MlflowClient(tracking_env).get_run(rerun.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"train.learning_rate": "1e-05"}
    assert run.data.tags[tracking.TAG_COMMIT] == tracking.source_commit()
    assert _history(tracking_env, rerun.run_id, "train/loss") == [(1, 2.0), (2, 1.0)]
    assert len(MlflowClient(tracking_env).search_runs([run.info.experiment_id])) == 1


@pytest.mark.slow
def test_training_through_a_dead_tracking_server_finishes_and_its_history_arrives_later(
        link, tracking_env, tmp_path, tiny_model_dir):
    """The issue's case: MLflow away for the whole training. Before, every rank froze in MLflow's retries and the
    job died with a 200-line MlflowException; now it trains at its own pace, ends 0, and the DAG step's `replay`
    sends the full history once the server is back."""
    import os
    import subprocess
    import sys

    from vigos.data.synthetic import prepared_synthetic

    data = prepared_synthetic(tmp_path, n=8)
    run_id = _new_run(tracking_env, "t-outage-train")
    link.state = "hung"
    out = tmp_path / "train"
    cmd = [sys.executable, "-m", "vigos.training.launch", "--dataset", str(data), "--output", str(out),
           "--preset", "tiny", "--set", f"model.name_or_path={tiny_model_dir}", "--set", "train.max_steps=2",
           "--set", "train.global_batch_size=2"]
    env = {**os.environ, "MLFLOW_RUN_ID": run_id, "MLFLOW_TRACKING_URI": link.uri, tracking.FLUSH_ENV: "2",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "tracking record(s) kept in" in proc.stdout and "Traceback" not in proc.stderr
    history = json.loads((out / "trainer_state.json").read_text())["history"]
    assert _history(tracking_env, run_id, "train/loss") == []  # nothing reached the server
    link.state = "up"
    assert tracking.replay(out, run_id) == 0
    assert _history(tracking_env, run_id, "train/loss") == [(i + 1, h["loss"]) for i, h in enumerate(history)]
