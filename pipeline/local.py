"""Run the ViGOS DAG on this machine through `kfp.local` (the demo, and the end-to-end tests' backbone).

Same DAG, same components as on the cluster (less the several-nodes training branch: no Kubernetes here); only
the inputs differ: a tiny random Qwen2.5-VL and a synthetic
dataset built here first, and MLflow on a local store (`MLFLOW_TRACKING_URI`, default SQLite under .vigos/).
Kubernetes settings (node selectors, secrets, timeouts) are ignored by kfp.local; the shared volume is the folder
`.vigos/volume` (`$VIGOS_HOME/volume`), and the GPU counts are 0.
"""

from __future__ import annotations

import io
import os
import re
import sys
import time
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console()


@dataclass
class LocalRun:
    ok: bool
    parent_run_id: str | None
    kfp_run_id: str | None
    outputs_dir: Path


def _phase(title: str):
    console.print(f"[bold cyan]==>[/] {title}")
    return time.time()


def _done(t0: float, what: str = "") -> None:
    print(f"    done in {time.time() - t0:.1f}s{(' - ' + what) if what else ''}")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TASK_START = re.compile(r"Executing task '([^']+)'")
_TASK_END = re.compile(r"Task '([^']+)' finished with status (\w+)")


class _StepLog(io.TextIOBase):
    """Stands in for sys.stdout while kfp.local runs: everything goes to a log file; the terminal gets a line
    per step (start, end with wall time), the steps' progress bars, and the tail of a failed step's output.

    kfp.local echoes every task's stdout through `print` and its own logging (executor inputs included), which
    buries what a person wants to see; `--verbose` restores the raw stream.
    """

    def __init__(self, terminal, log_path: Path):
        self.terminal = terminal
        self.log = open(log_path, "w")
        self.buffer_ = ""
        self.recent: deque[str] = deque(maxlen=40)
        self.started: dict[str, float] = {}
        self.durations: dict[str, float] = {}
        self.last_bar = ""

    def write(self, text: str) -> int:
        self.log.write(text)
        self.buffer_ += text
        *lines, self.buffer_ = self.buffer_.split("\n")
        for line in lines:
            self._line(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.terminal.flush()

    def _line(self, line: str) -> None:
        if m := _TASK_START.search(line):
            self.started[m.group(1)] = time.time()
            self.recent.clear()
            self.terminal.write(f"    step {m.group(1)} ...\n")
        elif m := _TASK_END.search(line):
            name, status = m.groups()
            secs = self.durations[name] = time.time() - self.started.get(name, time.time())
            self.terminal.write(f"    step {name}: {status} in {secs:.1f}s\n")
            if status != "SUCCESS":
                self.terminal.write("".join(f"      | {r}\n" for r in self.recent))
        else:
            self.recent.append(line)
            # a finished tqdm bar arrives as one line of \r-separated updates: show its final state once
            # the steps' own lines, which kfp.local indents and which may follow a bar's last redraw on the same line;
            # not evaluation's plain progress lines (the bars show that progress here)
            bar, _, own = line.partition("[vigos]")
            bar = bar.split("\r")[-1].strip()
            if own and not own.startswith(" eval "):
                self.terminal.write(f"      [vigos]{own.rstrip()}\n")
            label = bar.split("%|")[0]
            if "%|" in bar and not re.search(r"(^|\s)0%\|", bar) and label != self.last_bar:
                self.terminal.write(f"      {bar}\n")
                self.last_bar = label
        self.terminal.flush()

    def close(self) -> None:
        self.log.close()


def prepare_inputs(home: Path, rows: int, benchmarks: list[str], seed: int = 0) -> tuple[Path, Path, list[str]]:
    """Build (or reuse) the tiny model, warm it up, the synthetic training set and benchmark fixtures under `home`.

    The DAG's base model is the warmed-up one: a random model never writes the ViGOS format, so without the
    warm-up every rollout would be malformed and only the reference teacher would ever run.
    """
    from vigos.data.synthetic import write_synthetic
    from vigos.modeling.tiny import build_tiny_model
    from vigos.modeling.warmup import WarmupSettings, read_warmup_info, warm_up_model

    t0 = _phase("building the tiny random Qwen2.5-VL")
    tiny_dir = build_tiny_model(home / "tiny-model", seed=seed)
    _done(t0, str(tiny_dir))
    t0 = _phase("warming it up on well-formed ViGOS answers (so some rollouts are well formed: every teacher runs)")
    model_dir = warm_up_model(tiny_dir, home / "tiny-model-warm", WarmupSettings(seed=seed))  # cached
    info = read_warmup_info(model_dir)
    _done(t0, f"{model_dir} ({info['settings']['steps']} steps, loss {info['first_loss']:.3g} -> "
              f"{info['final_loss']:.3g})")
    t0 = _phase(f"generating {rows} rows of synthetic data (Vision-SR1-47K schema, parquet as on the Hub)")
    data_dir = home / f"synthetic-{rows}-{seed}"
    if not (data_dir / "data").exists():
        # with a few planted bad rows (corrupt bytes, 1x1 image, empty answer, duplicate...): data prep drops them
        write_synthetic(data_dir, n=rows, seed=seed, fmt="parquet", bad_rows=True)
    _done(t0, str(data_dir))
    from vigos.evaluation.fixtures import write_benchmark_fixtures

    t0 = _phase(f"writing tiny copies of {len(benchmarks)} benchmarks in their Hub schemas")
    sources = write_benchmark_fixtures(home / "benchmarks", benchmarks, seed=seed)
    _done(t0, str(home / "benchmarks"))
    return model_dir, data_dir, sources


def run_local(
    preset: str = "tiny", rows: int = 96, overrides: list[str] | None = None, verbose: bool = False
) -> LocalRun:
    from kfp import local

    from pipeline.pipeline import build_pipeline
    from vigos.config import load_config
    from vigos.tracking import tracking_uri, vigos_home

    home = vigos_home()
    home.mkdir(parents=True, exist_ok=True)
    # Every component runs in a subprocess that inherits this environment: one tracking store for all of them.
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri()
    overrides = list(overrides or [])
    cfg = load_config(preset, overrides=overrides)  # fail fast on a bad override, before any work

    model_dir, data_dir, sources = prepare_inputs(home, rows, cfg.eval.benchmarks)

    outputs = home / "kfp-runs"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(outputs), raise_on_error=False)
    t0 = _phase("running the DAG with kfp.local (SubprocessRunner)")
    started_ms = int(time.time() * 1000)
    log_path = home / "logs" / f"run-local-{time.strftime('%Y%m%d-%H%M%S')}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    ok = True
    terminal, step_log = sys.stdout, None
    if not verbose:
        step_log = _StepLog(terminal, log_path)
        sys.stdout = step_log
    try:
        with warnings.catch_warnings():
            # kfp.local says, for every task, that it ignores Kubernetes resources and the image: expected here
            warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            # the cluster's DAG less its several-nodes branch (Kubeflow Trainer), which kfp.local cannot select
            build_pipeline(multi_node=False)(
                preset=preset, dataset_source=str(data_dir), base_model=str(model_dir), eval_sources=sources,
                # the shared volume is a local folder; no GPUs here (a pod that asks for GPUs and sees none fails)
                volume_root=str(home / "volume"), train_gpus=0, eval_gpus=0, config_overrides=overrides,
            )
    except Exception as e:  # kfp.local raises on a failed task only with raise_on_error=True; be safe anyway
        console.print(f"[red]pipeline failed:[/] {e}")
        ok = False
    finally:
        if step_log is not None:
            sys.stdout = terminal
            step_log.close()
    _done(t0, f"full log: {log_path}" if not verbose else "")
    parent, kfp_run_id, steps = _find_run(cfg.tracking.experiment, started_ms)
    # the exit handler closed the parent run with the DAG's final state; a step's own run says FINISHED/FAILED
    ok = ok and parent is not None and parent.info.status == "FINISHED"
    ok = ok and bool(steps) and all(s.info.status == "FINISHED" for s in steps)
    _summary(steps, parent, outputs, ok, step_log.durations if step_log else {})
    return LocalRun(ok=ok, parent_run_id=parent.info.run_id if parent else None, kfp_run_id=kfp_run_id,
                    outputs_dir=outputs)


def _find_run(experiment: str, started_ms: int):
    """The parent run this local run created (newest parent started after `started_ms`) and its step runs."""
    from mlflow.tracking import MlflowClient

    from vigos.tracking import PARENT_ROLE, TAG_KFP_RUN, TAG_ROLE, step_runs

    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None, None, []
    parents = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{TAG_ROLE}` = '{PARENT_ROLE}' and attributes.start_time >= {started_ms}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not parents:
        return None, None, []
    parent = parents[0]
    kfp_run_id = parent.data.tags[TAG_KFP_RUN]
    return parent, kfp_run_id, step_runs(kfp_run_id, experiment)


# The one number per step that the summary shows; later steps add theirs. Each reads the step run's metrics, params
# and tags in one mapping (counts are params, outcomes tags: docs/metrics.md).
KEY_METRICS = {
    # rows in = kept + dropped as bad + valid rows left out by data.max_samples (the tiny preset keeps 64)
    "prepare-data": lambda m: f"{_n(m, 'data.rows_out')} rows kept ({_n(m, 'data.rows_in')} in, "
    f"{sum(int(v) for k, v in m.items() if k.startswith('data.dropped.'))} dropped as bad, "
    f"{_n(m, 'data.rows_valid') - _n(m, 'data.rows_out')} over data.max_samples)",
    # means over the run's steps: the three teachers' losses (perception and reasoning score well-formed rollouts,
    # reference the malformed ones) and the share of well-formed rollouts
    "train": lambda m: f"mean loss perception {m.get('train/loss_perception_mean', 0):.3g} / reasoning "
    f"{m.get('train/loss_reasoning_mean', 0):.3g} / reference {m.get('train/loss_reference_mean', 0):.3g}, "
    f"format-valid {m.get('train/format_valid_rate_mean', 0):.0%}, {_n(m, 'train.steps_done')} steps",
    "merge": lambda m: f"{_n(m, 'merge.shards')} shard(s), probe |diff| {m.get('merge/probe_max_abs_diff', 0):.2g}",
    "evaluate-base": lambda m: _pass_avg(m, "eval"),
    "evaluate-model": lambda m: _pass_avg(m, "eval"),
    "eval-report": lambda m: ", ".join(f"mean Pass@{k.rsplit('_at_', 1)[1]} {v * 100:+.1f} points vs base"
                                       for k, v in m.items() if k.startswith("delta/mean/pass_at_")),
    "register": lambda m: f"version {m.get('registry.version', '?')}"
    + (", new champion" if m.get("registry.champion_moved") == "True" else ", candidate"),
    "publish-hub": lambda m: f"{_n(m, 'publish.files')} files"
    + (" (dry run)" if m.get("publish.dry_run") == "True" else " uploaded"),
}


def _n(facts: dict, key: str) -> int:
    try:
        return int(float(facts.get(key, 0)))
    except (TypeError, ValueError):
        return 0


def _pass_avg(facts: dict, stage: str) -> str:
    """`Pass@5 41.7 / Avg@5 30.0` from `<stage>/mean/pass_at_5` and `<stage>/mean/avg_at_5` (fractions)."""
    found = {k.rsplit("/", 1)[1]: v for k, v in facts.items()
             if k.startswith(f"{stage}/mean/") and not k.endswith("_stderr")}
    return " / ".join(f"{name.split('_at_')[0].capitalize()}@{name.split('_at_')[1]} {found[name] * 100:.1f}"
                      for name in sorted(found, reverse=True))


def _summary(steps, parent, outputs: Path, ok: bool, durations: dict[str, float]) -> None:
    from vigos.tracking import TAG_STEP, tracking_uri

    table = Table(title="ViGOS local run", show_lines=False)
    for col in ("step", "status", "time", "key metric"):
        table.add_column(col)
    order = list(KEY_METRICS)  # the DAG's order, whatever order the steps started in
    for run in sorted(steps, key=lambda r: order.index(n) if (n := r.data.tags.get(TAG_STEP)) in order else 99):
        name = run.data.tags.get(TAG_STEP, run.info.run_name)
        # the step's wall time as the DAG saw it (process start, imports, work); else the MLflow run's
        secs = durations.get(name) or ((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000
        facts = {**run.data.tags, **run.data.params, **run.data.metrics}
        metric = KEY_METRICS.get(name, lambda m: "")(facts) if run.info.status == "FINISHED" else ""
        ok = run.info.status == "FINISHED"
        # KFP's words, as the step lines above print them (MLflow says FINISHED for a successful run)
        status = "SUCCESS" if ok else "FAILURE" if run.info.status == "FAILED" else run.info.status
        table.add_row(name, f"[{'green' if ok else 'red'}]{status}[/]", f"{secs:.1f}s", metric)
    console.print(table)
    uri = tracking_uri()
    if parent is not None:
        print(f"MLflow run: {parent.info.run_name} ({parent.info.run_id}) in experiment {parent.info.experiment_id}")
    ui = f".venv/bin/mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite") else uri
    print(f"MLflow UI:  {ui}")
    print(f"Artifacts:  {outputs} (manifests; the data is under {outputs.parent / 'volume'})")
    console.print("[bold green]demo finished[/]" if ok else "[bold red]demo failed[/] (see the step logs above)")
