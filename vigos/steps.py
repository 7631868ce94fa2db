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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    """Data prep. Empty strings / -1 keep the preset's value; max_samples 0 keeps every row."""
    import mlflow

    from vigos.data.prepare import prepare
    from vigos.tracking import log_metrics, step_run

    values: dict[str, Any] = {}
    if dataset_source:
        values["data.source"] = dataset_source
    if dataset_split:
        values["data.split"] = dataset_split
    if max_samples >= 0:
        values["data.max_samples"] = max_samples or None
    cfg = ctx.config(values)
    params = {f"data.{k}": v for k, v in cfg.to_dict()["data"].items()} | {"preset": cfg.preset}
    with step_run("prepare-data", kfp_run_id=ctx.kfp_run_id, experiment=cfg.tracking.experiment, params=params):
        stats = prepare(cfg.data, output_dir)
        metrics = _prep_metrics(stats)
        log_metrics(metrics)
        mlflow.log_dict(stats, "stats.json")
    return StepResult(metrics=metrics, markdown=_prep_markdown(cfg, stats))


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
    import torch

    from vigos.config import dump_config
    from vigos.tracking import log_metrics, step_run, tracking_uri, vigos_home

    values: dict[str, Any] = {"model.name_or_path": base_model} if base_model else {}
    cfg = ctx.config(values)
    work = Path(checkpoint_root or vigos_home() / "checkpoints") / ctx.kfp_run_id / "train"
    work.mkdir(parents=True, exist_ok=True)
    config_path = work / "config.yaml"
    config_path.write_text(dump_config(cfg))
    visible = torch.cuda.device_count()
    # one process per GPU this pod got (`gpus` is what was requested); one CPU process without GPUs
    nproc = max(1, min(gpus, visible) if gpus > 0 else visible)
    if gpus > visible > 0:
        print(f"[vigos] warning: {gpus} GPUs requested but {visible} visible; training on {visible}", flush=True)
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
        summary = {f"final_{k}": v for k, v in final.items()} | {"steps": state["steps"]}
        log_metrics(summary)
    if Path(adapter_dir).exists():
        shutil.rmtree(adapter_dir)
    shutil.copytree(work / "adapter", adapter_dir)
    keys = ("loss", "format_valid_rate", "answer_accuracy", "truncated_rate", "tokens_per_second")
    metrics = {k: float(final[k]) for k in keys if k in final} | {"steps": float(state["steps"])}
    return StepResult(metrics=metrics, markdown=_train_markdown(cfg, state))


def _train_markdown(cfg: VigosConfig, state: dict[str, Any]) -> str:
    hist = state["history"]
    first, last = (hist[0], hist[-1]) if hist else ({}, {})
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
        "| metric | first step | last step |",
        "|---|---:|---:|",
        *(f"| {name} | {first.get(k, float('nan')):.4g} | {last.get(k, float('nan')):.4g} |" for name, k in rows),
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
