"""The whole DAG through kfp.local (SubprocessRunner), logging into a real `mlflow server`."""

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from vigos import tracking, volume
from vigos.data.synthetic import PLANTED_DROPS

pytestmark = pytest.mark.slow


def test_local_dag_end_to_end(tracking_env, tmp_path):
    from pipeline.local import run_local

    result = run_local(preset="tiny", rows=48)
    assert result.ok, "the local DAG failed; see the captured output"
    client = MlflowClient()
    parent = client.get_run(result.parent_run_id)
    # the exit handler closed the parent run with the pipeline's final state
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["kfp.final_state"] == "SUCCEEDED"
    steps = tracking.step_runs(result.kfp_run_id, "vigos-local")
    names = [r.data.tags[tracking.TAG_STEP] for r in steps]
    assert sorted(names) == sorted(["prepare-data", "train", "merge", "evaluate-base", "evaluate-model",
                                    "eval-report", "register", "publish-hub"])
    by_name = dict(zip(names, steps, strict=True))
    assert names.index("train") < names.index("merge") < names.index("evaluate-model") < names.index("eval-report")
    for run in steps:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED"
    prep = by_name["prepare-data"]
    m = prep.data.params  # counts describe the data: params (docs/metrics.md)
    planted = sum(PLANTED_DROPS.values())  # the demo data carries planted bad rows; prep drops exactly those
    assert m["data.rows_in"] == str(48 + planted) and m["data.rows_valid"] == "48"
    assert m["data.rows_out"] == "48"  # the tiny preset keeps at most 64
    for reason, n in PLANTED_DROPS.items():
        assert m[f"data.dropped.{reason}"] == str(n)
    assert prep.data.params["data.source"].endswith("synthetic-48-0")
    assert prep.data.metrics == {"data/kept_rate": pytest.approx(48 / (48 + planted))}
    stats_file = client.download_artifacts(prep.info.run_id, "stats.json", str(tmp_path))
    stats = json.loads(open(stats_file).read())
    assert stats["rows_out"] == 48
    # the parent run is a row of the runs table worth comparing: settings, source commit, training data
    assert parent.data.params["preset"] == "tiny" and parent.data.params["lora.r"] == "8"
    assert parent.data.params["data.source"].endswith("synthetic-48-0") and "eval.n_samples" in parent.data.params
    assert "eval.model" not in parent.data.params  # it differs between the two evaluations: theirs only
    assert parent.data.tags.get("mlflow.source.git.commit") == tracking.source_commit()
    (used,) = parent.inputs.dataset_inputs
    assert used.dataset.name == "synthetic-48-0" and {t.key: t.value for t in used.tags}["vigos.rows"] == "48"

    # the KFP outputs: manifests of the data on the shared volume (a local folder here), the Markdown card
    runs = sorted(result.outputs_dir.glob("vigos-*"))
    assert runs, list(result.outputs_dir.iterdir())
    prep_dir = runs[-1] / "prepare-data"
    dataset = volume.resolve(prep_dir / "dataset", verify_hashes=True)
    assert dataset.parent == result.outputs_dir.parent / "volume" / "datasets"
    assert (dataset / "stats.json").exists()
    assert (dataset / "dataset_info.json").exists() or any(dataset.rglob("*.arrow"))
    assert "# Data prep" in (prep_dir / "summary").read_text()
    # large data never goes through KFP's artifact store: every artifact of the run is small
    sizes = {p: p.stat().st_size for p in runs[-1].rglob("*") if p.is_file()}
    assert max(sizes.values()) < 2_000_000, max(sizes, key=sizes.get)
    run_volume = result.outputs_dir.parent / "volume" / result.kfp_run_id
    assert sorted(p.name for p in run_volume.iterdir()) == ["eval-base", "eval-model", "hub", "merged", "train"]
    _check_train(client, by_name["train"], runs[-1], tmp_path)
    _check_eval(client, by_name, runs[-1], parent)
    _check_publish(client, by_name, runs[-1])


def test_failed_step_marks_the_run_failed(tracking_env, capsys):
    from pipeline.local import run_local

    # every image is "tiny" at this threshold: data prep has nothing left and fails with a clear message
    result = run_local(preset="tiny", rows=16, overrides=["data.min_image_size=100000"])
    assert not result.ok
    parent = MlflowClient().get_run(result.parent_run_id)
    assert parent.info.status == "FAILED" and parent.data.tags["kfp.final_state"] == "FAILED"
    by_name = {r.data.tags[tracking.TAG_STEP]: r for r in tracking.step_runs(result.kfp_run_id, "vigos-local")}
    assert "train" not in by_name and "prepare-data" not in by_name  # nothing downstream of the failure ran
    out = capsys.readouterr().out
    assert "step prepare-data: FAILURE" in out
    assert "error: no rows left" in out and "Traceback" not in out  # one actionable line
    assert "demo failed" in out


def _check_train(client, train_run, run_dir, tmp_path):
    """What the train step left in MLflow and in its KFP outputs."""
    metrics = train_run.data.metrics
    for key in ("loss", "loss_perception", "loss_reasoning", "loss_reference", "grad_norm", "learning_rate",
                "format_valid_rate", "answer_accuracy", "truncated_rate", "completion_length",
                "clipped_token_fraction_reference", "rollout_seconds", "teachers_seconds", "student_seconds",
                "optimizer_seconds", "tokens_per_second", "loss_perception_mean", "loss_reasoning_mean",
                "loss_reference_mean", "format_valid_rate_mean"):
        assert f"train/{key}" in metrics, key
    assert not [k for k in metrics if not k.startswith("train/") or "final" in k]  # one scheme, no duplicates
    steps = [m.step for m in client.get_metric_history(train_run.info.run_id, "train/loss")]
    assert steps == [1, 2, 3, 4]  # every optimizer step of the tiny preset
    assert train_run.data.params["train.steps_done"] == "4"
    assert [d.dataset.name for d in train_run.inputs.dataset_inputs] == ["synthetic-48-0"]
    # The demo exercises the method: its warmed-up base writes the ViGOS format some of the time, so some rollouts
    # are well formed (perception and reasoning teachers) and some are not (reference teacher).
    losses = {k: f"train/loss_{k}" for k in ("perception", "reasoning", "reference")}
    keys = [*losses.values(), "train/format_valid_rate", *(f"train/clipped_token_fraction_{k}" for k in losses)]
    history = {k: [m.value for m in sorted(client.get_metric_history(train_run.info.run_id, k), key=lambda m: m.step)]
               for k in keys}
    for key in losses.values():
        assert len(history[key]) == 4 and any(v > 0 for v in history[key]), (key, history)
    # ... and every teacher gives a gradient: the warmed-up base follows each teacher's context, so in some step
    # each one scored tokens (loss > 0) and not all of them were clipped (a token whose KL reaches the clip gives
    # no gradient; before the warm-up covered the teachers' contexts, the perception teacher clipped all of them)
    for segment, loss in losses.items():
        per_step = zip(history[loss], history[f"train/clipped_token_fraction_{segment}"], strict=True)
        assert any(v > 0 and fraction < 1 for v, fraction in per_step), (segment, history)
    valid = history["train/format_valid_rate"]
    assert 0 < sum(valid) / len(valid) < 1, valid  # equal rollouts per step: the run's share of valid rollouts
    assert metrics["train/format_valid_rate_mean"] == pytest.approx(sum(valid) / len(valid))
    assert train_run.data.params["train.method"] == "vigos" and train_run.data.params["lora.r"] == "8"
    samples = [a.path for a in client.list_artifacts(train_run.info.run_id, "rollouts")]
    assert samples == ["rollouts/step-000002.jsonl", "rollouts/step-000004.jsonl"]
    row = json.loads(open(client.download_artifacts(train_run.info.run_id, samples[0], str(tmp_path))).readline())
    assert {"completion", "valid", "answer", "correct", "reference"} <= set(row)
    adapter = volume.resolve(run_dir / "train" / "adapter", verify_hashes=True)
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    # the checkpoints were pruned once the merge was verified; the adapter stays
    assert not (adapter.parent / "checkpoints").exists()
    summary = (run_dir / "train" / "summary").read_text()
    assert "# ViGOS training" in summary and "mean over steps" in summary


def _check_eval(client, by_name, run_dir, parent):
    """Both evaluations logged every score and their files; the report compares them, chart included."""
    for name in ("evaluate-base", "evaluate-model"):
        run = by_name[name]
        m = run.data.metrics
        assert {"eval/mean/pass_at_5", "eval/mean/avg_at_5", "eval/cv-bench/pass_at_5", "eval/cv-bench/avg_at_5_stderr",
                "eval/vilp-f/score", "eval/vilp-p/prior"} <= set(m)
        assert all(0 <= v <= 1 for v in m.values()), m  # every score a fraction
        assert int(run.data.params["eval.counts.cv-bench.n_examples"]) > 0  # counts are params
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"responses", "grades", "report", "scores.json"} <= artifacts
        responses = {a.path for a in client.list_artifacts(run.info.run_id, "responses")}
        assert "responses/cv-bench.jsonl" in responses
    report = by_name["eval-report"]
    assert {"delta/mean/pass_at_5", "model/mean/pass_at_5", "base/mmmu/avg_at_5"} <= set(report.data.metrics)
    files = {a.path for a in client.list_artifacts(report.info.run_id, "eval-report")}
    assert {"eval-report/eval_chart.png", "eval-report/eval_report.html"} <= files
    assert {"model/mean/pass_at_5", "base/mean/avg_at_5", "delta/mean/pass_at_5"} <= set(
        client.get_run(parent.info.run_id).data.metrics)
    html = (run_dir / "eval-report" / "report").read_text()
    assert "data:image/png;base64," in html and "ViGOS-7B card" in html
    evaluation = volume.resolve(run_dir / "evaluate-model" / "evaluation")
    assert evaluation.name == "eval-model" and volume.read_manifest(run_dir / "evaluate-model" / "evaluation")[
        "model"] == str(volume.resolve(run_dir / "merge" / "merged_model"))
    rows = [json.loads(line) for line in (evaluation / "responses" / "vilp-f.jsonl").read_text().splitlines()]
    assert rows and all(r["sample_index"] == 0 for r in rows)  # ViLP: one sample per prompt
    assert all(r["response"].startswith("<description>") for r in rows)


def _check_publish(client, by_name, run_dir):
    """The demo ends with a registered version (the first one is champion) and a dry-run Hub folder."""
    version = client.get_model_version_by_alias("vigos-tiny-demo", "champion")
    assert version.version == "1" and "candidate" in version.aliases
    assert version.tags["kfp.run_id"] == by_name["register"].data.tags["kfp.run_id"]
    assert "score.mean.pass_at_k" in version.tags
    hub = by_name["publish-hub"]
    assert hub.data.params["publish.dry_run"] == "True"
    # the registered model loads from the tracking server, as the README says
    import mlflow

    local = mlflow.artifacts.download_artifacts("models:/vigos-tiny-demo@champion")
    assert (Path(local) / "config.json").exists() and list(Path(local).glob("*.safetensors"))
    assert int(by_name["merge"].data.params["merge.checkpoint_bytes_freed"]) > 0
    hub_artifact = run_dir / "publish-hub" / "hub_folder"
    assert (hub_artifact / "upload_manifest.json").exists()  # what would be uploaded, listed
    staged = volume.resolve(hub_artifact) / "upload"
    card = (staged / "README.md").read_text()
    assert card.startswith("---") and "model-index:" in card
    # the demo's base is a local folder with no Hub id: the card says so instead of leaking its path
    front = card.split("---")[1]
    assert "base_model:" not in front and "(local, no Hub id)" in card and str(Path.cwd()) not in card
    # ... and names the data the model was trained on (the synthetic set data prep read), not the preset's default
    assert "Vision-SR1-47K" not in card and "synthetic-48-0" in card
    assert (staged / "config.json").exists() and list(staged.glob("*.safetensors"))
