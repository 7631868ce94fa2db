"""The DAG's steps as plain functions: resolve the config, open the step's MLflow run, call the library, and
return what the Kubeflow UI shows (Metrics + a Markdown card).

The KFP components in `components/` are thin wrappers around these, so every step can be run and tested
without KFP, and the local DAG and the cluster DAG execute exactly this code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vigos import volume
from vigos.config import VigosConfig, load_config
from vigos.errors import VigosError, disk_error
from vigos.redact import redact


@dataclass
class StepContext:
    """What every step receives from the pipeline: the preset, free-form overrides, and the run's identity."""

    preset: str
    config_overrides: list[str] = field(default_factory=list)
    mlflow_experiment: str = ""
    kfp_run_id: str = "local"

    def params(self) -> dict[str, str]:
        """What every step records of how the run was configured (the parent run's params)."""
        return {"preset": self.preset, "config_overrides": " ".join(self.config_overrides) or "(none)"}

    def config(self, values: dict[str, Any] | None = None) -> VigosConfig:
        cfg = load_config(self.preset, overrides=self.config_overrides, values=values)
        if self.mlflow_experiment:
            cfg.tracking.experiment = self.mlflow_experiment
        return cfg


@dataclass
class StepResult:
    metrics: dict[str, float]
    markdown: str

    def write_kfp(self, metrics_artifact: Any, markdown_artifact: Any, *by_reference: Any) -> None:
        """Fill the component's `Output[Metrics]` and `Output[Markdown]`; `by_reference`: output artifacts holding
        a manifest (`vigos.volume`), whose metadata then shows the data's path and size in the KFP UI."""
        for key, value in self.metrics.items():
            metrics_artifact.log_metric(key, float(value))
        Path(markdown_artifact.path).parent.mkdir(parents=True, exist_ok=True)
        Path(markdown_artifact.path).write_text(self.markdown)
        for artifact in by_reference:
            artifact.metadata.update(volume.describe(volume.read_manifest(artifact.path)))


def _one_line_errors(step):
    """A user-fixable error ends the step with one line in its log (no traceback) and a failed task."""

    @functools.wraps(step)
    def wrapper(*args, **kwargs):
        try:
            return step(*args, **kwargs)
        except VigosError as e:
            print(f"error: {redact(str(e))}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        except OSError as e:  # a full or read-only disk met by a write no library call wraps (the file is named)
            if (disk := disk_error(e)) is None:
                raise
            print(f"error: {redact(str(disk))}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return wrapper


@_one_line_errors
def prepare_data(
    ctx: StepContext,
    output_dir: str,
    dataset_source: str = "",
    dataset_split: str = "",
    max_samples: int = -1,
    volume_root: str = "",
) -> StepResult:
    """Data prep. Empty strings / -1 keep the preset's value; max_samples 0 keeps every row.

    With `volume_root`, the prepared data goes to `<volume_root>/datasets/<hash of the data settings>/` and
    `output_dir` gets its manifest (`vigos.volume`); without, into `output_dir` itself.
    No MLflow here, and no run id among its inputs: the step is cached by KFP when its inputs are unchanged, and
    a run id would make every input set new. `record_data_stats` (never cached) logs the result of every run.
    """
    from vigos.data.prepare import prepare

    cfg = ctx.config(_data_values(dataset_source, dataset_split, max_samples))
    if not volume_root:
        stats = prepare(cfg.data, output_dir)
        return StepResult(metrics=_prep_metrics(stats), markdown=_prep_markdown(cfg, stats))
    settings = json.dumps(cfg.to_dict()["data"], sort_keys=True, default=str)
    folder = Path(volume_root) / "datasets" / hashlib.sha256(settings.encode()).hexdigest()[:16]
    folder.parent.mkdir(parents=True, exist_ok=True)
    stats = prepare(cfg.data, folder)  # written beside, then renamed: a concurrent run never reads half of it
    volume.write_manifest(output_dir, folder, "dataset")
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
    from vigos.tracking import log_metrics, log_params, stage_metrics, step_run

    cfg = ctx.config()
    dataset_dir = str(volume.resolve(dataset_dir))
    stats = json.loads((Path(dataset_dir) / STATS_FILE).read_text())
    params = {"data.source": stats["source"], "data.split": stats["split"]}
    params |= {f"data.{k}": v for k, v in stats.get("config", {}).items()} | ctx.params()
    with step_run("prepare-data", kfp_run_id=ctx.kfp_run_id, experiment=cfg.tracking.experiment, params=params):
        # counts describe the data (params); the kept share is the one measure (docs/metrics.md)
        log_params({f"data.{k.replace('/', '.')}": v for k, v in _prep_counts(stats).items()})
        log_metrics(stage_metrics("data", {"kept_rate": _kept_rate(stats)}))
        mlflow.log_dict(stats, STATS_FILE)
        if (Path(dataset_dir) / DROPS_FILE).exists():
            mlflow.log_artifact(str(Path(dataset_dir) / DROPS_FILE))


def _prep_counts(stats: dict[str, Any]) -> dict[str, int]:
    out = {"rows_in": stats["rows_in"], "rows_valid": stats["rows_valid"], "rows_out": stats["rows_out"]}
    out |= {f"dropped/{reason}": n for reason, n in stats["dropped"].items()}
    out |= {f"answer_type/{kind}": n for kind, n in stats["answer_types"].items()}
    return out


def _kept_rate(stats: dict[str, Any]) -> float:
    return stats["rows_out"] / stats["rows_in"] if stats["rows_in"] else 0.0


def _prep_metrics(stats: dict[str, Any]) -> dict[str, float]:
    """The data prep step's KFP metrics: its counts and kept share, named as in MLflow."""
    from vigos.tracking import stage_metrics

    return stage_metrics("data", {**_prep_counts(stats), "kept_rate": _kept_rate(stats)})


def _prep_markdown(cfg: VigosConfig, stats: dict[str, Any]) -> str:
    kept = _kept_rate(stats) * 100
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


def _gpu_report() -> str:
    """What this pod sees of GPUs: node, driver, the device variables, torch's CUDA build."""
    import socket

    import torch

    driver_file = Path("/proc/driver/nvidia/version")
    driver = driver_file.read_text().splitlines()[0].strip() if driver_file.is_file() else "no NVIDIA driver loaded"
    devices = ", ".join(f"{v}={os.environ[v]!r}" for v in ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")
                        if v in os.environ) or "no *_VISIBLE_DEVICES set"
    return (f"node {os.environ.get('NODE_NAME') or socket.gethostname()}; driver: {driver}; {devices}; "
            f"torch {torch.__version__} (CUDA build {torch.version.cuda or 'none: a CPU-only torch'}) sees "
            f"{torch.cuda.device_count()} GPU(s)")


def _processes(gpus: int) -> int:
    """One process per GPU this pod got (`gpus` is what was requested); one CPU process when none were asked.

    A pod that asked for GPUs and sees none fails at once: training a 7B model on CPU would look like progress
    for days (a node without the device plugin, a CPU-only image, a wrong runtime class).
    """
    import torch

    visible = torch.cuda.device_count()
    if gpus > 0 and visible == 0:
        raise VigosError(f"{gpus} GPU(s) requested but none usable here: {_gpu_report()}. Check the node pool "
                         "(gpu_node_selector), the NVIDIA device plugin and the image; set the GPU count to 0 for "
                         "a CPU run")
    if gpus > visible > 0:
        print(f"[vigos] warning: {gpus} GPUs requested but {visible} visible; using {visible}", flush=True)
    return max(1, min(gpus, visible)) if gpus > 0 else 1


def _run(cmd: list[str], env: dict[str, str], timeout_h: float, what: str) -> None:
    """Run a (torchrun) command in its own process group; past `timeout_h` hours (0: none) the whole group is
    stopped, so a hung collective cannot hold the pod's GPUs forever."""
    timeout = timeout_h * 3600 if timeout_h and timeout_h > 0 else None
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        raise VigosError(f"{what} ran past its timeout of {timeout_h:g} h and was stopped; raise the timeout "
                         "parameter, or retry the run: it resumes from its last checkpoint") from None
    except BaseException:  # the step itself was stopped (KFP cancel): take the workers down with it
        os.killpg(proc.pid, signal.SIGTERM)
        raise
    if code != 0:
        raise RuntimeError(f"{what} exited with code {code} (its log is above)")


@_one_line_errors
def train(
    ctx: StepContext,
    dataset_dir: str,
    adapter_dir: str,
    base_model: str = "",
    volume_root: str = "",
    gpus: int = 0,
    timeout_h: float = 0.0,
    nodes: int = 1,
    image: str = "",
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
) -> StepResult:
    """ViGOS training: on one node, on every GPU of this pod (one process per GPU under torchrun; one CPU process
    without); on `nodes` > 1, as a Kubeflow Trainer TrainJob of `nodes` pods with `gpus` GPUs each, running
    `image` on the GPU pool (`node_selector`, `tolerations`), which this pod creates, follows and deletes.

    Checkpoints and the final adapter live in `<volume_root>/<kfp run id>/train` (the shared volume on the
    cluster), not in the output artifact, which gets the adapter's manifest: a retried pod of the same run finds
    the checkpoints there and resumes, on one node or several.
    """
    import mlflow

    from vigos.config import dump_config
    from vigos.data.prepare import STATS_FILE
    from vigos.tracking import (
        JOURNAL,
        log_dataset_input,
        log_metrics,
        log_params,
        replay,
        stage_metrics,
        step_run,
        tracking_uri,
        vigos_home,
    )

    values: dict[str, Any] = {"model.name_or_path": base_model} if base_model else {}
    dataset = volume.resolve(dataset_dir)
    # the data section the run records (adapter's vigos_train_config.json -> card, registry) is the one data prep
    # used, which pipeline parameters may have changed: not the preset's default source
    stats_path = dataset / STATS_FILE
    stats: dict[str, Any] = {}
    if stats_path.is_file():
        stats = json.loads(stats_path.read_text())
        values |= {"data.source": stats["source"], "data.split": stats["split"]}
        values |= {f"data.{k}": v for k, v in (stats.get("config") or {}).items()}
    cfg = ctx.config(values)
    work = volume.run_folder(volume_root or vigos_home() / "runs", ctx.kfp_run_id, "train")
    config_path = work / "config.yaml"
    config_path.write_text(dump_config(cfg))
    if nodes < 1:
        raise VigosError(f"train_nodes must be >= 1, got {nodes}")
    nproc = _processes(gpus) if nodes == 1 else max(gpus, 1) * nodes
    params = {k: v for k, v in cfg.flat().items() if k.split(".")[0] in ("model", "lora", "train", "data")}
    params |= ctx.params()
    with step_run("train", kfp_run_id=ctx.kfp_run_id, experiment=cfg.tracking.experiment, params=params) as run:
        mlflow.log_dict(cfg.to_dict(), "config.json")
        if stats:
            digest = hashlib.sha256(json.dumps({k: stats.get(k) for k in ("source", "split", "config", "rows_out")},
                                               sort_keys=True, default=str).encode()).hexdigest()
            log_dataset_input(Path(stats["source"]).name or stats["source"], stats["source"], stats["split"], digest,
                              rows=int(stats["rows_out"]),
                              run_ids=[run.info.run_id, run.data.tags.get("mlflow.parentRunId") or run.info.run_id])
        mlflow.set_tags({"vigos.processes": str(nproc), "vigos.nodes": str(nodes), "vigos.checkpoints": str(work)})
        run_env = {"MLFLOW_RUN_ID": run.info.run_id, "MLFLOW_TRACKING_URI": tracking_uri()}
        if nodes > 1:
            _train_on_nodes(ctx, cfg, dataset, work, config_path, run_env, nodes=nodes, gpus=gpus, image=image,
                            node_selector=node_selector, tolerations=tolerations, timeout_h=timeout_h)
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", "vigos.training.launch", "--dataset", str(dataset), "--output", str(work),
                   "--preset", cfg.preset, "--config", str(config_path)]
            print(f"[vigos] training with {nproc} process(es); checkpoints in {work}", flush=True)
            _run(cmd, {**os.environ, **run_env}, timeout_h, "training")
        # what a tracking outage kept from MLflow during training is sent now, before the summary (in order)
        left = replay(work, run.info.run_id)
        if left:
            raise VigosError(f"MLflow at {tracking_uri()} did not take {left} training record(s) (kept in "
                             f"{work / JOURNAL}); retry the step once the server is back: training is not repeated")
        state = json.loads((work / "trainer_state.json").read_text())
        if state.get("resumed_from"):
            mlflow.set_tag("vigos.resumed_from_step", str(state["resumed_from"]))
        final = state["history"][-1] if state["history"] else {}
        means = _train_means(state["history"])
        # the per-step history is already in MLflow (train/<name> at every step): add only the run's means
        log_metrics(stage_metrics("train", means))
        log_params({"train.steps_done": state["steps"]})
    volume.write_manifest(adapter_dir, work / "adapter", "adapter", extra={"checkpoints": str(work)})
    keys = ("loss", "format_valid_rate", "answer_accuracy", "truncated_rate", "tokens_per_second")
    metrics = stage_metrics("train", {k: final[k] for k in keys if k in final} | means
                            | {"steps": state["steps"]})
    return StepResult(metrics=metrics, markdown=_train_markdown(cfg, state))


_POD_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _train_on_nodes(ctx: StepContext, cfg: VigosConfig, dataset: Path, work: Path, config_path: Path,
                    env: dict[str, str], *, nodes: int, gpus: int, image: str, node_selector: dict[str, str] | None,
                    tolerations: list[dict[str, Any]] | None, timeout_h: float) -> None:
    """Training as a Kubeflow Trainer TrainJob in this pod's namespace; every node reads the data and writes the
    checkpoints on the shared volume (ReadWriteMany), so resume works as on one node."""
    from vigos.training.trainjob import TrainJobSpec, run_trainjob

    if not image:
        raise VigosError("multi-node training needs the trainer image (the pipeline passes its GPU image)")
    namespace = _POD_NAMESPACE.read_text().strip() if _POD_NAMESPACE.is_file() else "vigos"
    spec = TrainJobSpec(run_id=ctx.kfp_run_id, image=image, dataset=str(dataset), output=str(work),
                        preset=cfg.preset, config=str(config_path), namespace=namespace, num_nodes=nodes,
                        gpus_per_node=gpus, env=env, node_selector=node_selector or {},
                        tolerations=tolerations or [])
    print(f"[vigos] training on {nodes} nodes x {max(gpus, 1)} process(es) (TrainJob {spec.name} in {namespace}); "
          f"checkpoints in {work}", flush=True)
    run_trainjob(spec, timeout_s=timeout_h * 3600 if timeout_h > 0 else None)


# Averaged over the run's steps for the summary: one step's value says little (a tiny run's last step may hold no
# well-formed rollout, so its perception/reasoning losses are 0), the run's mean shows which teachers had work.
_MEAN_KEYS = ("loss", "loss_perception", "loss_reasoning", "loss_reference", "format_valid_rate", "answer_accuracy")


def _train_means(history: list[dict[str, float]]) -> dict[str, float]:
    """`<key>_mean` over the steps of this run, for the losses of the three teachers and the rollout rates."""
    return {f"{k}_mean": sum(h[k] for h in history) / len(history)
            for k in _MEAN_KEYS if history and all(k in h for h in history)}


def _train_markdown(cfg: VigosConfig, state: dict[str, Any]) -> str:
    hist = state["history"]
    first, last = (hist[0], hist[-1]) if hist else ({}, {})
    mean = {k.removesuffix("_mean"): v for k, v in _train_means(hist).items()}
    rows = [("loss", "loss"), ("perception KL", "loss_perception"), ("reasoning KL", "loss_reasoning"),
            ("reference KL", "loss_reference"), ("format-valid rate", "format_valid_rate"),
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
def merge(ctx: StepContext, adapter_dir: str, merged_dir: str, base_model: str = "", volume_root: str = "",
          prune_checkpoints: bool = False) -> StepResult:
    """Adapter + base -> full model in the preset's dtype, verified on a probe before it is written.

    The merged model goes to `<volume_root>/<kfp run id>/merged` and `merged_dir` gets its manifest (without a
    volume root: into `merged_dir` itself). `prune_checkpoints`: once the merge is verified, the training's
    checkpoints are deleted (the adapter stays).
    """
    from vigos.merge import merge as merge_model
    from vigos.tracking import log_metrics, log_params, stage_metrics, step_run
    from vigos.training.trainer import prune_checkpoints as prune

    values: dict[str, Any] = {"model.name_or_path": base_model} if base_model else {}
    cfg = ctx.config(values)
    adapter = volume.resolve(adapter_dir)
    out = volume.run_folder(volume_root, ctx.kfp_run_id, "merged") if volume_root else Path(merged_dir)
    params = {"merge.dtype": cfg.model.dtype, "merge.base_model": base_model or "(from adapter_config.json)"}
    with step_run("merge", kfp_run_id=ctx.kfp_run_id, experiment=cfg.tracking.experiment, params=params):
        r = merge_model(adapter, out, dtype=cfg.model.dtype, base_model=base_model or None,
                        overwrite=True)  # a retried step replaces its own half-written output
        measures = {"probe_max_abs_diff": r.max_abs_diff, "probe_allowed_diff": r.allowed_diff,
                    "duration_seconds": r.seconds}
        counts = {"shards": r.shards}
        if volume_root:
            counts["total_bytes"] = volume.write_manifest(merged_dir, out, "merged model")["total_bytes"]
        checkpoints = (volume.read_manifest(adapter_dir).get("checkpoints")
                       if (Path(adapter_dir) / volume.MANIFEST).is_file() else None)
        if prune_checkpoints and checkpoints:
            counts["checkpoint_bytes_freed"] = prune(Path(checkpoints))
        log_metrics(stage_metrics("merge", measures))
        log_params({f"merge.{k}": v for k, v in counts.items()})
    metrics = stage_metrics("merge", measures | counts)
    md = (f"# LoRA merge\n\n`{r.base_model}` + adapter -> {r.shards} safetensors shard(s) in `{cfg.model.dtype}`"
          f" in `{out}`.\n\nProbe check: max |merged - adapter-on| logits = {r.max_abs_diff:.3g} "
          f"(allowed {r.allowed_diff:.3g}).\n")
    if "checkpoint_bytes_freed" in counts:
        md += f"\nTraining checkpoints deleted: {counts['checkpoint_bytes_freed'] / 2**30:.2f} GiB freed.\n"
    return StepResult(metrics=metrics, markdown=md)


def eval_values(benchmarks: list[str] | None, sources: list[str] | None, backend: str = "") -> dict[str, Any]:
    """Pipeline parameters -> config values (empty lists and strings keep the preset's)."""
    values: dict[str, Any] = {"eval.backend": backend} if backend else {}
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
    volume_root: str = "",
    timeout_h: float = 0.0,
    backend: str = "",
) -> StepResult:
    """Pass@k evaluation of one model: responses (resumable), grades, scores.json and a report, all in MLflow.

    `model_path`: a Hub id, a folder, or an artifact holding a manifest (the merged model on the shared volume).
    Outputs go to `<volume_root>/<kfp run id>/eval-<label>` (a retried pod resumes its responses there) and
    `output_dir` gets their manifest; without a volume root, into `output_dir`. With GPUs, stopped after `timeout_h`
    hours (0: no limit): the `engine` backend data-parallel under torchrun, one process per GPU; `vllm` / `openai`
    in one process (`vllm serve` takes every GPU itself; a server elsewhere needs none); without GPUs: in this
    process. `backend`: eval.backend ("": the preset's).
    """
    import mlflow

    from vigos.config import dump_config
    from vigos.evaluation.metrics import tracking_metrics
    from vigos.evaluation.report import REPORT_SETTINGS, write_report
    from vigos.evaluation.run import run_eval
    from vigos.evaluation.score import ensure_complete, score_responses
    from vigos.tracking import log_metrics, log_params, stage_metrics, step_run, tracking_uri

    cfg = ctx.config(eval_values(benchmarks, sources, backend))
    if Path(model_path, volume.MANIFEST).is_file():
        model_path = str(volume.resolve(model_path))
    out = volume.run_folder(volume_root, ctx.kfp_run_id, f"eval-{label}") if volume_root else Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    nproc = _processes(gpus)
    shared = {f"eval.{k}": v for k, v in cfg.to_dict()["eval"].items()} | {"prompt.student": cfg.prompt.student}
    shared |= ctx.params()
    with step_run(f"evaluate-{label}", kfp_run_id=ctx.kfp_run_id, experiment=cfg.tracking.experiment,
                  params=shared | {"eval.model": model_path}, parent_params=shared) as run:
        if gpus > 0:
            config_path = out / "config.yaml"
            config_path.write_text(dump_config(cfg))
            launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
            cmd = [sys.executable, *(launcher if cfg.eval.backend == "engine" else []),
                   "-m", "vigos.cli", "eval", "run", "--output", str(out), "--model", model_path,
                   "--preset", cfg.preset, "--config", str(config_path)]
            env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri()}
            _run(cmd, env, timeout_h, "evaluation")
        else:
            run_eval(model_path, cfg, out)
        # the judge cache sits beside the responses: a retried pod asks the judge only what it did not answer yet
        scores = score_responses(out / "responses", cfg.eval, grades_dir=out / "grades", output=out / "scores.json",
                                 judge_cache=out / "judge-cache")
        report = write_report(scores, out / "report", title=f"ViGOS evaluation ({label})", model=model_path,
                              base_model=cfg.model.name_or_path,
                              run_ids={"KFP run": ctx.kfp_run_id, "MLflow run": run.info.run_id},
                              settings={key: getattr(cfg.eval, key) for key in REPORT_SETTINGS})
        scored, counts = tracking_metrics(scores)  # every score, breakdowns too (docs/metrics.md)
        metrics = stage_metrics("eval", scored)
        log_metrics(metrics)
        log_params({f"eval.counts.{k.replace('/', '.')}": v for k, v in counts.items()})
        metrics |= stage_metrics("eval", counts)  # the KFP UI's table shows the counts beside the scores
        volume.remove_temp_files(out)  # a killed earlier attempt's temp files are not results
        for folder in ("responses", "grades", "report"):
            mlflow.log_artifacts(str(out / folder), folder)
        mlflow.log_artifact(str(out / "scores.json"))
        ensure_complete(scores, out / "scores.json")  # logged for a look, then the step fails (and may be retried)
    if volume_root:
        volume.write_manifest(output_dir, out, "evaluation", extra={"model": model_path})
    return StepResult(metrics=metrics, markdown=report.markdown.read_text().split("![")[0])


@_one_line_errors
def eval_report(ctx: StepContext, model_eval_dir: str, base_eval_dir: str, html_path: str) -> StepResult:
    """The run's comparison card: this model vs the base model vs the model card, chart included."""
    import mlflow

    from vigos.evaluation.metrics import tracking_metrics
    from vigos.evaluation.report import REPORT_SETTINGS, write_report
    from vigos.tracking import log_metrics, stage_metrics, step_run

    cfg = ctx.config()
    scores = json.loads((volume.resolve(model_eval_dir) / "scores.json").read_text())
    base = json.loads((volume.resolve(base_eval_dir) / "scores.json").read_text())
    with step_run("eval-report", kfp_run_id=ctx.kfp_run_id, experiment=cfg.tracking.experiment) as run:
        folder = Path(tempfile.mkdtemp(prefix="vigos-eval-report-"))
        # what each evaluation evaluated: its manifest says (evaluations on the shared volume)
        models = [volume.read_manifest(d).get("model", "") if Path(d, volume.MANIFEST).is_file() else ""
                  for d in (model_eval_dir, base_eval_dir)]
        report = write_report(scores, folder, baseline=base, title="ViGOS vs base model vs ViGOS-7B card",
                              model=models[0], base_model=models[1] or cfg.model.name_or_path,
                              run_ids={"KFP run": ctx.kfp_run_id, "MLflow run": run.info.run_id,
                                       "MLflow pipeline run": run.data.tags.get("mlflow.parentRunId", "")},
                              settings={key: getattr(cfg.eval, key) for key in REPORT_SETTINGS})
        model, base_metrics = tracking_metrics(scores)[0], tracking_metrics(base)[0]
        metrics = stage_metrics("model", model) | stage_metrics("base", base_metrics)
        metrics |= stage_metrics("delta", {k: v - base_metrics[k] for k, v in model.items()
                                           if k.startswith("mean/") and k in base_metrics})
        log_metrics(metrics)
        mlflow.log_artifacts(str(folder), "eval-report")
        # the pipeline's parent run carries the headline numbers and the card too
        parent = run.data.tags.get("mlflow.parentRunId")
        if parent:
            from mlflow.tracking import MlflowClient

            client = MlflowClient()
            for key in [k for k in metrics if k.split("/")[1:2] == ["mean"]]:  # model/mean/pass_at_5, delta/...
                client.log_metric(parent, key, metrics[key])
            client.log_artifact(parent, str(report.html), "eval-report")
    shutil.copyfile(report.html, html_path)
    return StepResult(metrics=metrics, markdown=report.markdown.read_text().split("![")[0])


@_one_line_errors
def register(ctx: StepContext, merged_dir: str, eval_dir: str) -> StepResult:
    """A registry version of the merged model with every score and its evaluation settings as tags; `candidate`
    always, `champion` only when the evaluation settings equal the champion's and the gate metric beats its value
    (`vigos.publish.registry`). A re-run of the same KFP run reuses its version.

    The dataset tag names what the model was trained on: the adapter's recorded training config (the merged model's
    `vigos_merge.json` names the adapter), not this step's preset.
    The model is copied into the MLflow run's artifacts (the tracking server's own store) and registered from
    there (`runs:/`), so `models:/<name>@champion` resolves wherever the tracking server is reachable: a path on
    the pipeline's volume or a KFP object-store URI (`minio://`) would not load outside the pipeline.
    """
    from vigos.publish.provenance import eval_settings, find_training, merge_record
    from vigos.publish.registry import log_model_dir, register_model_version
    from vigos.tracking import stage_metrics, step_run

    cfg = ctx.config()
    merged = volume.resolve(merged_dir)
    evaluation = volume.resolve(eval_dir)
    scores = json.loads((evaluation / "scores.json").read_text())
    merge_info = merge_record(merged) or {}
    if not merge_info.get("base_model"):
        raise VigosError(f"{merged} has no vigos_merge.json naming its base model (run the merge step)")
    training = find_training(merged)
    params = {"publish.registered_model": cfg.publish.registered_model, "publish.gate_metric": cfg.publish.gate_metric}
    with step_run("register", kfp_run_id=ctx.kfp_run_id, experiment=cfg.tracking.experiment, params=params) as run:
        source = log_model_dir(merged, run_id=run.info.run_id)
        r = register_model_version(
            cfg.publish.registered_model, source, run_id=run.info.run_id, kfp_run_id=ctx.kfp_run_id, scores=scores,
            base_model=merge_info["base_model"], dataset=training.dataset, gate_metric=cfg.publish.gate_metric,
            eval_settings=eval_settings(evaluation),
        )
        import mlflow

        # what happened is a fact about the run, not a measure: tags (the gate value stays in the version's tags)
        mlflow.set_tags({"registry.version": str(r.version), "registry.champion_moved": str(r.champion_moved),
                         "registry.reused": str(r.reused), "registry.decision": r.decision[:5000]})
        metrics = stage_metrics("register", {"version": r.version, "champion_moved": float(r.champion_moved),
                                             "reused": float(r.reused)})
    if r.champion_moved:
        outcome = "new champion"
    elif r.previous_champion == r.version:
        outcome = "already champion"
    else:
        outcome = f"champion stays version {r.previous_champion}"
    md = (f"# MLflow registry\n\n`{r.uri}` ({', '.join(r.aliases)}); gate `{cfg.publish.gate_metric}` = "
          f"{r.gate_value:.2f} - {outcome}.\n\nWhy: {r.decision}.\n\nTrained on `{training.dataset}`; "
          "the evaluation settings the gate compares are the version's `eval.*` tags.\n")
    return StepResult(metrics=metrics, markdown=md)


@_one_line_errors
def publish_hub(
    ctx: StepContext, merged_dir: str, adapter_dir: str, eval_dir: str, base_eval_dir: str, staging_dir: str,
    repo_id: str = "", private: bool | None = None, volume_root: str = "",
) -> StepResult:
    """Stage the merged model + a generated model card; upload it to the Hub, or (no repo id) only stage it.

    With `volume_root` the staging folder is `<volume_root>/<kfp run id>/hub` (hard links to the merged model on
    the same volume, not a copy) and `staging_dir` gets its manifest and the upload manifest."""
    from vigos.publish.hub import publish_to_hub
    from vigos.publish.model_card import render_model_card
    from vigos.publish.provenance import eval_settings, merge_record, read_training
    from vigos.tracking import log_params, stage_metrics, step_run

    values: dict[str, Any] = {"publish.hub_repo_id": repo_id} if repo_id else {}
    if private is not None:
        values["publish.hub_private"] = private
    cfg = ctx.config(values)
    p = cfg.publish
    dry_run = not p.hub_repo_id
    card_repo = p.hub_repo_id or f"your-org/{p.registered_model}"
    merged_dir, adapter_dir = str(volume.resolve(merged_dir)), str(volume.resolve(adapter_dir))
    eval_dir, base_eval_dir = str(volume.resolve(eval_dir)), str(volume.resolve(base_eval_dir))
    artifact_dir = staging_dir
    if volume_root:
        staging_dir = str(volume.run_folder(volume_root, ctx.kfp_run_id, "hub"))
    # what the model was trained with and on: the adapter's records, not this step's preset
    training = read_training(adapter_dir)
    hardware = training.hardware()
    if hardware is None:
        raise VigosError(f"{adapter_dir} has no vigos_train_info.json (world size, device): the card cannot state "
                         "the training hardware; re-run the train step")
    merge_info = merge_record(merged_dir) or {}
    # the evaluation's own record; this run's evaluate step ran with this config's max_examples when the record
    # does not carry it
    settings = {"max_examples": cfg.eval.max_examples, **eval_settings(eval_dir)}
    card = render_model_card(
        repo_id=card_repo,
        base_model=merge_info.get("base_model") or training.config["model"]["name_or_path"],
        train_config=training.config, scores=json.loads((Path(eval_dir) / "scores.json").read_text()),
        baseline=json.loads((Path(base_eval_dir) / "scores.json").read_text()), license=p.license,
        num_gpus=hardware[0], gpu_type=hardware[1], eval_settings=settings,
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
        log_params({"publish.files": len(r.files), "publish.dry_run": dry_run})
        metrics = stage_metrics("publish", {"files": len(r.files), "dry_run": float(dry_run)})
    if volume_root:
        # the artifact: what would be (or was) uploaded, with sizes and hashes; the files stay on the volume
        Path(artifact_dir).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(r.manifest, Path(artifact_dir) / r.manifest.name)
        volume.write_manifest(artifact_dir, staging_dir, "hub staging", hashes=False)
    where = f"uploaded to {r.url}" if r.url else f"dry run: staged in `{r.folder}`, nothing uploaded"
    md = f"# Hugging Face Hub\n\n{len(r.files)} files, {where}.\n\n" + "\n".join(f"- `{f}`" for f in r.files) + "\n"
    return StepResult(metrics=metrics, markdown=md)
