"""The DAG's eval-report step: where the report goes (the KFP HTML output, MLflow as `eval_report.html`) and what its
header says about the run (the models from the evaluations' manifests, the run ids, the config's settings)."""

import json

import pytest

from vigos import steps, volume


@pytest.fixture
def local_tracking(monkeypatch, tmp_path):
    """MLflow in a SQLite file under a temp VIGOS_HOME (no server)."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("VIGOS_HOME", str(tmp_path / "vigos-home"))
    yield
    while mlflow.active_run():
        mlflow.end_run()


def _evaluation(tmp_path, name, model, pass_at_k):
    """An evaluation artifact as the evaluate step leaves it on the shared volume: a manifest naming the model."""
    folder = tmp_path / "volume" / name
    folder.mkdir(parents=True)
    scores = {"student_prompt": "release", "grader": "rules",
              "benchmarks": {"mmmu": {"n_examples": 8, "k": 5, "pass_at_k": pass_at_k, "avg_at_k": 25.0,
                                      "avg_at_k_se": 6.0, "grader": "rules"}},
              "mean": {"pass_at_k": pass_at_k, "avg_at_k": 25.0, "benchmarks": ["mmmu"]},
              "vilp": {}}
    (folder / "scores.json").write_text(json.dumps(scores))
    artifact = tmp_path / "kfp" / name
    volume.write_manifest(artifact, folder, "evaluation", extra={"model": model})
    return artifact


def test_eval_report_step_writes_the_html_where_it_is_opened(local_tracking, tmp_path):
    from mlflow.tracking import MlflowClient

    model_eval = _evaluation(tmp_path, "eval-model", "/vol/run-7/merged", 50.0)
    base_eval = _evaluation(tmp_path, "eval-base", "Qwen/Qwen2.5-VL-3B-Instruct", 25.0)
    html_path = tmp_path / "kfp" / "report" / "report"  # KFP's Output[HTML] path: no extension
    html_path.parent.mkdir(parents=True)
    ctx = steps.StepContext("tiny", ["eval.temperature=0.7"], "report-test", "kfp-run-42")
    result = steps.eval_report(ctx, str(model_eval), str(base_eval), str(html_path))

    page = html_path.read_text()  # the KFP UI's copy
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page
    client = MlflowClient()
    step_runs = [r for r in client.search_runs([client.get_experiment_by_name("report-test").experiment_id])
                 if r.info.run_name == "eval-report"]
    assert len(step_runs) == 1
    run = step_runs[0]
    files = {a.path for a in client.list_artifacts(run.info.run_id, "eval-report")}
    assert {"eval-report/eval_report.html", "eval-report/eval_report.md", "eval-report/eval_chart.png"} <= files
    parent = run.data.tags["mlflow.parentRunId"]
    assert [a.path for a in client.list_artifacts(parent, "eval-report")] == ["eval-report/eval_report.html"]

    md = result.markdown
    for line in ("- Model evaluated: `/vol/run-7/merged`", "- Base model: `Qwen/Qwen2.5-VL-3B-Instruct`",
                 "- KFP run: `kfp-run-42`", f"- MLflow run: `{run.info.run_id}`",
                 f"- MLflow pipeline run: `{parent}`", "- Samples per question (k): 5",
                 "- Sampling: temperature 0.7, top-p 0.9, top-k 20, max new tokens 48, seed 42, "
                 "max images per question 16",
                 "- Questions: at most 8 per benchmark (a `max_examples` subset: not comparable with the model card)"):
        assert line in md.splitlines(), line
    assert "<li>MLflow run: <code>" + run.info.run_id + "</code></li>" in page
