"""The DAG's steps as plain functions: resolve the config, open the step's MLflow run, call the library, and
return what the Kubeflow UI shows (Metrics + a Markdown card).

The KFP components in `components/` are thin wrappers around these, so every step can be run and tested
without KFP, and the local DAG and the cluster DAG execute exactly this code.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from vigos.config import VigosConfig, load_config
from vigos.errors import VigosError


@dataclass
class StepContext:
    """What every step receives from the pipeline: the preset, free-form overrides, and the run's identity."""

    preset: str
    config_overrides: list[str] = field(default_factory=list)
    mlflow_experiment: str = ""
    kfp_run_id: str = "local"

    def config(self, values: dict[str, Any] | None = None) -> VigosConfig:
        cfg = load_config(self.preset, overrides=self.config_overrides, values=values)
        if self.mlflow_experiment:
            cfg.tracking.experiment = self.mlflow_experiment
        return cfg


@dataclass
class StepResult:
    metrics: dict[str, float]
    markdown: str

    def write_kfp(self, metrics_artifact: Any, markdown_artifact: Any) -> None:
        """Fill the component's `Output[Metrics]` and `Output[Markdown]`."""
        for key, value in self.metrics.items():
            metrics_artifact.log_metric(key, float(value))
        Path(markdown_artifact.path).parent.mkdir(parents=True, exist_ok=True)
        Path(markdown_artifact.path).write_text(self.markdown)


def _one_line_errors(step):
    """A user-fixable error ends the step with one line in its log (no traceback) and a failed task."""

    @functools.wraps(step)
    def wrapper(*args, **kwargs):
        try:
            return step(*args, **kwargs)
        except VigosError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return wrapper


@_one_line_errors
def prepare_data(
    ctx: StepContext,
    output_dir: str,
    dataset_source: str = "",
    dataset_split: str = "",
    max_samples: int = -1,
) -> StepResult:
    """Data prep. Empty strings / -1 keep the preset's value; max_samples 0 keeps every row.

    No MLflow here, and no run id among its inputs: the step is cached by KFP when its inputs are unchanged, and
    a run id would make every input set new. `record_data_stats` (never cached) logs the result of every run.
    """
    from vigos.data.prepare import prepare

    cfg = ctx.config(_data_values(dataset_source, dataset_split, max_samples))
    stats = prepare(cfg.data, output_dir)
    return StepResult(metrics=_prep_metrics(stats), markdown=_prep_markdown(cfg, stats))


def _data_values(dataset_source: str, dataset_split: str, max_samples: int) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if dataset_source:
        values["data.source"] = dataset_source
    if dataset_split:
        values["data.split"] = dataset_split
    if max_samples >= 0:
        values["data.max_samples"] = max_samples or None
    return values


@_one_line_errors
def record_data_stats(ctx: StepContext, dataset_dir: str) -> None:
    """Log the prepared dataset's stats to this run's `prepare-data` MLflow run (also after a cache hit)."""
    import mlflow

    from vigos.data.prepare import DROPS_FILE, STATS_FILE
    from vigos.tracking import log_metrics, step_run

    cfg = ctx.config()
    stats = json.loads((Path(dataset_dir) / STATS_FILE).read_text())
    params = {"data.source": stats["source"], "data.split": stats["split"]}
    params |= {f"data.{k}": v for k, v in stats.get("config", {}).items()} | {"preset": cfg.preset}
    with step_run("prepare-data", kfp_run_id=ctx.kfp_run_id, experiment=cfg.tracking.experiment, params=params):
        log_metrics(_prep_metrics(stats))
        mlflow.log_dict(stats, STATS_FILE)
        if (Path(dataset_dir) / DROPS_FILE).exists():
            mlflow.log_artifact(str(Path(dataset_dir) / DROPS_FILE))


def _prep_metrics(stats: dict[str, Any]) -> dict[str, float]:
    out = {"rows_in": stats["rows_in"], "rows_valid": stats["rows_valid"], "rows_out": stats["rows_out"]}
    out |= {f"dropped_{reason}": n for reason, n in stats["dropped"].items()}
    out |= {f"answer_type_{kind}": n for kind, n in stats["answer_types"].items()}
    return {k: float(v) for k, v in out.items()}


def _prep_markdown(cfg: VigosConfig, stats: dict[str, Any]) -> str:
    kept = stats["rows_out"] / stats["rows_in"] * 100 if stats["rows_in"] else 0.0
    lines = [
        "# Data prep",
        "",
        f"Source `{cfg.data.source}` (split `{cfg.data.split}`): **{stats['rows_out']:,}** of "
        f"{stats['rows_in']:,} rows kept ({kept:.1f}%).",
        "",
        "| dropped because | rows |",
        "|---|---:|",
        *(f"| {reason} | {n:,} |" for reason, n in stats["dropped"].items()),
        "",
        "| answer type | rows |",
        "|---|---:|",
        *(f"| {kind} | {n:,} |" for kind, n in stats["answer_types"].items()),
        "",
        "<details><summary>stats.json</summary>",
        "",
        "```json",
        json.dumps(stats, indent=2),
        "```",
        "</details>",
    ]
    return "\n".join(lines) + "\n"


def finalize_run(ctx: StepContext, state: str, error_message: str = "") -> str:
    """Record the pipeline's final state on its MLflow parent run (KFP states: SUCCEEDED, FAILED, CANCELED...)."""
    from vigos.tracking import finish_parent

    cfg = ctx.config()
    mlflow_status = {"SUCCEEDED": "FINISHED", "CANCELED": "KILLED", "CANCELLED": "KILLED"}.get(state, "FAILED")
    return finish_parent(ctx.kfp_run_id, cfg.tracking.experiment, mlflow_status, kfp_state=state,
                         error_message=error_message)


def _processes(gpus: int) -> int:
    """One process per GPU this pod got (`gpus` is what was requested); one CPU process without GPUs."""
    import torch

    visible = torch.cuda.device_count()
    if gpus > visible > 0:
        print(f"[vigos] warning: {gpus} GPUs requested but {visible} visible; using {visible}", flush=True)
    return max(1, min(gpus, visible) if gpus > 0 else visible)


@_one_line_errors
def train(
    ctx: StepContext,
    dataset_dir: str,
    adapter_dir: str,
    base_model: str = "",
    checkpoint_root: str = "",
    gpus: int = 0,
) -> StepResult:
    """ViGOS training on every GPU of this pod (one process per GPU under torchrun; one CPU process without).

    Checkpoints live under `checkpoint_root/<kfp run id>/train` (a PVC on the cluster), not in the output
    artifact: a retried pod of the same run finds them there and resumes.
    """
    import mlflow

    from vigos.config import dump_config
    from vigos.tracking import log_metrics, step_run, tracking_uri, vigos_home

    values: dict[str, Any] = {"model.name_or_path": base_model} if base_model else {}
    cfg = ctx.config(values)
    work = Path(checkpoint_root or vigos_home() / "checkpoints") / ctx.kfp_run_id / "train"
    work.mkdir(parents=True, exist_ok=True)
    config_path = work / "config.yaml"
    config_path.write_text(dump_config(cfg))
    nproc = _processes(gpus)
    params = {k: v for k, v in cfg.flat().items() if k.split(".")[0] in ("model", "lora", "train")}
    with step_run("train", kfp_run_id=ctx.kfp_run_id, experiment=cfg.tracking.experiment, params=params) as run:
        mlflow.log_dict(cfg.to_dict(), "config.json")
        mlflow.set_tags({"vigos.processes": str(nproc), "vigos.checkpoints": str(work)})
        env = {**os.environ, "MLFLOW_RUN_ID": run.info.run_id, "MLFLOW_TRACKING_URI": tracking_uri()}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "vigos.training.launch", "--dataset", dataset_dir, "--output", str(work),
               "--preset", cfg.preset, "--config", str(config_path)]
        print(f"[vigos] training with {nproc} process(es); checkpoints in {work}", flush=True)
        proc = subprocess.run(cmd, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"training exited with code {proc.returncode} (its log is above)")
        state = json.loads((work / "trainer_state.json").read_text())
        final = state["history"][-1] if state["history"] else {}
        means = _train_means(state["history"])
        summary = {f"final_{k}": v for k, v in final.items()} | means | {"steps": state["steps"]}
        log_metrics(summary)
    if Path(adapter_dir).exists():
        shutil.rmtree(adapter_dir)
    shutil.copytree(work / "adapter", adapter_dir)
    keys = ("loss", "format_valid_rate", "answer_accuracy", "truncated_rate", "tokens_per_second")
    metrics = {k: float(final[k]) for k in keys if k in final} | means | {"steps": float(state["steps"])}
    return StepResult(metrics=metrics, markdown=_train_markdown(cfg, state))


# Averaged over the run's steps for the summary: one step's value says little (a tiny run's last step may hold no
# well-formed rollout, so its perception/reasoning losses are 0), the run's mean shows which teachers had work.
_MEAN_KEYS = ("loss", "loss_perception", "loss_reasoning", "loss_ref", "format_valid_rate", "answer_accuracy")


def _train_means(history: list[dict[str, float]]) -> dict[str, float]:
    """`mean_<key>` over the steps of this run, for the losses of the three teachers and the rollout rates."""
    return {f"mean_{k}": sum(h[k] for h in history) / len(history)
            for k in _MEAN_KEYS if history and all(k in h for h in history)}


def _train_markdown(cfg: VigosConfig, state: dict[str, Any]) -> str:
    hist = state["history"]
    first, last = (hist[0], hist[-1]) if hist else ({}, {})
    mean = {k[len("mean_"):]: v for k, v in _train_means(hist).items()}
    rows = [("loss", "loss"), ("perception KL", "loss_perception"), ("reasoning KL", "loss_reasoning"),
            ("reference KL", "loss_ref"), ("format-valid rate", "format_valid_rate"),
            ("answer accuracy", "answer_accuracy"), ("truncated rate", "truncated_rate"),
            ("completion length", "completion_length"), ("tokens/s", "tokens_per_second")]
    lines = [
        "# ViGOS training",
        "",
        f"Method `{cfg.train.method}`, base `{cfg.model.name_or_path}`, {state['steps']} optimizer steps"
        + (f" (resumed from step {state['resumed_from']})" if state.get("resumed_from") else "") + ".",
        "",
        "| metric | first step | last step | mean over steps |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {first.get(k, float('nan')):.4g} | {last.get(k, float('nan')):.4g} | "
          + (f"{mean[k]:.4g} |" if k in mean else "|") for name, k in rows),
    ]
    return "\n".join(lines) + "\n"


@_one_line_errors
def merge(ctx: StepContext, adapter_dir: str, merged_dir: str, base_model: str = "") -> StepResult:
    """Adapter + base -> full model in the preset's dtype, verified on a probe before it is written."""
    from vigos.merge import merge as merge_model
    from vigos.tracking import log_metrics, step_run

    values: dict[str, Any] = {"model.name_or_path": base_model} if base_model else {}
    cfg = ctx.config(values)
    params = {"merge.dtype": cfg.model.dtype, "merge.base_model": base_model or "(from adapter_config.json)"}
    with step_run("merge", kfp_run_id=ctx.kfp_run_id, experiment=cfg.tracking.experiment, params=params):
        r = merge_model(adapter_dir, merged_dir, dtype=cfg.model.dtype, base_model=base_model or None,
                        overwrite=True)  # KFP hands each run a fresh output path
        metrics = {"probe_max_abs_diff": r.max_abs_diff, "probe_allowed_diff": r.allowed_diff,
                   "shards": float(r.shards), "seconds": r.seconds}
        log_metrics(metrics)
    md = (f"# LoRA merge\n\n`{r.base_model}` + adapter -> {r.shards} safetensors shard(s) in `{cfg.model.dtype}`.\n\n"
          f"Probe check: max |merged - adapter-on| logits = {r.max_abs_diff:.3g} (allowed {r.allowed_diff:.3g}).\n")
    return StepResult(metrics=metrics, markdown=md)


def eval_values(benchmarks: list[str] | None, sources: list[str] | None) -> dict[str, Any]:
    """Pipeline parameters -> config values (empty lists keep the preset's)."""
    values: dict[str, Any] = {}
    if benchmarks:
        values["eval.benchmarks"] = list(benchmarks)
    if sources:
        values["eval.sources"] = list(sources)
    return values


@_one_line_errors
def evaluate(
    ctx: StepContext,
    model_path: str,
    output_dir: str,
    label: str,
    benchmarks: list[str] | None = None,
    sources: list[str] | None = None,
    gpus: int = 0,
) -> StepResult:
    """Pass@k evaluation of one model: responses (resumable), grades, scores.json and a report, all in MLflow.

    Data-parallel over this pod's GPUs under torchrun; one process without GPUs.
    """
    import mlflow

    from vigos.config import dump_config
    from vigos.evaluation.metrics import flatten_scores
    from vigos.evaluation.report import write_report
    from vigos.evaluation.run import run_eval
    from vigos.evaluation.score import score_responses
    from vigos.tracking import log_metrics, step_run, tracking_uri

    cfg = ctx.config(eval_values(benchmarks, sources))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    nproc = _processes(gpus)
    params = {f"eval.{k}": v for k, v in cfg.to_dict()["eval"].items()} | {"eval.model": model_path,
                                                                           "prompt.student": cfg.prompt.student}
    with step_run(f"evaluate-{label}", kfp_run_id=ctx.kfp_run_id, experiment=cfg.tracking.experiment,
                  params=params):
        if nproc > 1:
            config_path = out / "config.yaml"
            config_path.write_text(dump_config(cfg))
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", "vigos.cli", "eval", "run", "--output", str(out), "--model", model_path,
                   "--preset", cfg.preset, "--config", str(config_path)]
            env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri()}
            if subprocess.run(cmd, env=env).returncode != 0:
                raise RuntimeError("evaluation processes failed (their log is above)")
        else:
            run_eval(model_path, cfg, out)
        scores = score_responses(out / "responses", cfg.eval, grades_dir=out / "grades", output=out / "scores.json")
        report = write_report(scores, out / "report", title=f"ViGOS evaluation ({label})", model=model_path)
        metrics = {k: float(v) for k, v in flatten_scores(scores).items()}  # every score, breakdowns too
        log_metrics(metrics)
        for folder in ("responses", "grades", "report"):
            mlflow.log_artifacts(str(out / folder), folder)
        mlflow.log_artifact(str(out / "scores.json"))
    return StepResult(metrics=metrics, markdown=report.markdown.read_text().split("![")[0])


@_one_line_errors
def eval_report(ctx: StepContext, model_eval_dir: str, base_eval_dir: str, html_path: str) -> StepResult:
    """The run's comparison card: this model vs the base model vs the model card, chart included."""
    import mlflow

    from vigos.evaluation.metrics import flatten_scores
    from vigos.evaluation.report import write_report
    from vigos.tracking import log_metrics, step_run

    cfg = ctx.config()
    scores = json.loads((Path(model_eval_dir) / "scores.json").read_text())
    base = json.loads((Path(base_eval_dir) / "scores.json").read_text())
    with step_run("eval-report", kfp_run_id=ctx.kfp_run_id, experiment=cfg.tracking.experiment) as run:
        folder = Path(tempfile.mkdtemp(prefix="vigos-eval-report-"))
        report = write_report(scores, folder, baseline=base, title="ViGOS vs base model vs ViGOS-7B card")
        metrics = {f"model.{k}": float(v) for k, v in flatten_scores(scores).items()}
        metrics |= {f"base.{k}": float(v) for k, v in flatten_scores(base).items()}
        if scores.get("mean") and base.get("mean"):
            metrics["delta.mean.pass_at_k"] = scores["mean"]["pass_at_k"] - base["mean"]["pass_at_k"]
            metrics["delta.mean.avg_at_k"] = scores["mean"]["avg_at_k"] - base["mean"]["avg_at_k"]
        log_metrics(metrics)
        mlflow.log_artifacts(str(folder), "eval-report")
        # the pipeline's parent run carries the headline numbers and the card too
        parent = run.data.tags.get("mlflow.parentRunId")
        if parent:
            from mlflow.tracking import MlflowClient

            client = MlflowClient()
            for key in ("model.mean.pass_at_k", "model.mean.avg_at_k", "base.mean.pass_at_k", "base.mean.avg_at_k"):
                if key in metrics:
                    client.log_metric(parent, key, metrics[key])
            client.log_artifact(parent, str(report.html), "eval-report")
    shutil.copyfile(report.html, html_path)
    return StepResult(metrics=metrics, markdown=report.markdown.read_text().split("![")[0])


@_one_line_errors
def register(ctx: StepContext, merged_dir: str, merged_uri: str, eval_dir: str) -> StepResult:
    """A registry version of the merged model with every score as a tag; `candidate` always, `champion` only
    when the gate metric beats the current champion's. A re-run of the same KFP run reuses its version."""
    from vigos.publish.registry import log_model_dir, register_model_version
    from vigos.tracking import log_metrics, step_run

    cfg = ctx.config()
    scores = json.loads((Path(eval_dir) / "scores.json").read_text())
    merge_info = json.loads((Path(merged_dir) / "vigos_merge.json").read_text())
    params = {"publish.registered_model": cfg.publish.registered_model, "publish.gate_metric": cfg.publish.gate_metric}
    with step_run("register", kfp_run_id=ctx.kfp_run_id, experiment=cfg.tracking.experiment, params=params) as run:
        source = merged_uri
        if not urlparse(source).scheme:  # a local path (the demo): the tracking server stores a copy it serves
            source = log_model_dir(merged_dir, run_id=run.info.run_id)
        r = register_model_version(
            cfg.publish.registered_model, source, run_id=run.info.run_id, kfp_run_id=ctx.kfp_run_id, scores=scores,
            base_model=merge_info["base_model"], dataset=cfg.data.source, gate_metric=cfg.publish.gate_metric,
        )
        metrics = {"version": float(r.version), "champion_moved": float(r.champion_moved),
                   "gate_value": float(r.gate_value), "reused": float(r.reused)}
        log_metrics(metrics)
    md = (f"# MLflow registry\n\n`{r.uri}` ({', '.join(r.aliases)}); gate `{cfg.publish.gate_metric}` = "
          f"{r.gate_value:.2f}" + (" - new champion" if r.champion_moved else
                                    f" - champion stays version {r.previous_champion}") + ".\n")
    return StepResult(metrics=metrics, markdown=md)


@_one_line_errors
def publish_hub(
    ctx: StepContext, merged_dir: str, adapter_dir: str, eval_dir: str, base_eval_dir: str, staging_dir: str,
    repo_id: str = "", private: bool | None = None,
) -> StepResult:
    """Stage the merged model + a generated model card; upload it to the Hub, or (no repo id) only stage it."""
    from vigos.publish.hub import publish_to_hub
    from vigos.publish.model_card import render_model_card
    from vigos.tracking import log_metrics, step_run

    values: dict[str, Any] = {"publish.hub_repo_id": repo_id} if repo_id else {}
    if private is not None:
        values["publish.hub_private"] = private
    cfg = ctx.config(values)
    p = cfg.publish
    dry_run = not p.hub_repo_id
    card_repo = p.hub_repo_id or f"your-org/{p.registered_model}"
    train_config = json.loads((Path(adapter_dir) / "vigos_train_config.json").read_text())
    info_path = Path(adapter_dir) / "vigos_train_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {"world_size": 0, "device": "unknown"}
    merge_info = json.loads((Path(merged_dir) / "vigos_merge.json").read_text())
    card = render_model_card(
        repo_id=card_repo, base_model=merge_info["base_model"], dataset=train_config["data"]["source"],
        train_config=train_config, scores=json.loads((Path(eval_dir) / "scores.json").read_text()),
        baseline=json.loads((Path(base_eval_dir) / "scores.json").read_text()), license=p.license,
        num_gpus=int(info["world_size"]) if info["device"] != "cpu" else 0, gpu_type=info["device"],
    )
    params = {"publish.hub_repo_id": p.hub_repo_id or "(dry run)", "publish.hub_private": p.hub_private}
    with step_run("publish-hub", kfp_run_id=ctx.kfp_run_id, experiment=cfg.tracking.experiment, params=params):
        r = publish_to_hub(merged_dir, repo_id=card_repo, private=p.hub_private, card_text=card,
                           token_env=p.hub_token_env, dry_run=dry_run, staging_dir=staging_dir)
        import mlflow

        mlflow.log_text(card, "README.md")
        mlflow.log_artifact(str(r.manifest))
        if r.url:
            mlflow.set_tag("hub.url", r.url)
        metrics = {"files": float(len(r.files)), "dry_run": float(dry_run)}
        log_metrics(metrics)
    where = f"uploaded to {r.url}" if r.url else f"dry run: staged in `{r.folder}`, nothing uploaded"
    md = f"# Hugging Face Hub\n\n{len(r.files)} files, {where}.\n\n" + "\n".join(f"- `{f}`" for f in r.files) + "\n"
    return StepResult(metrics=metrics, markdown=md)
