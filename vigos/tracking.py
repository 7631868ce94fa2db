"""MLflow tracking: one parent run per pipeline run, one nested run per step.

Every DAG step runs in its own process (its own pod on the cluster), so the parent run cannot be handed around
in memory: it is found by its `kfp.run_id` tag, and created by whichever step gets there first. Two steps that
start at the same moment may both create one; both then pick the oldest, and the loser deletes its own, so
everything lands under a single parent. A step's run is found the same way (`kfp.run_id` + `vigos.step`), so a
retried step (KFP retry, or a resumed training pod) logs into the run it started instead of a new one.

The parent run carries what a runs table compares: the params every step logs (config sections, pipeline
inputs), the source commit (`mlflow.source.git.commit`), the training dataset as an input, and the headline scores.

Metric names follow one scheme (docs/metrics.md): `<stage>/<name>` (`train/loss`, `eval/mmmu/pass_at_5`,
`model/mean/pass_at_5`), every rate and score a fraction in [0, 1], times in seconds with a `_seconds` suffix;
counts that describe a run (rows, steps, questions) are params, not metrics. `stage_metrics` applies it.

The tracking URI comes from `MLFLOW_TRACKING_URI`; without it, a SQLite store under `.vigos/` (see `vigos_home`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vigos.errors import VigosError
from vigos.redact import has_password, redact
from vigos.volume import write_atomic

PARENT_ROLE = "pipeline"
TAG_KFP_RUN = "kfp.run_id"
TAG_ROLE = "vigos.role"
TAG_STEP = "vigos.step"
TAG_PARENT = "mlflow.parentRunId"
TAG_COMMIT = "mlflow.source.git.commit"


def vigos_home() -> Path:
    """Local state (MLflow store, tiny model, demo data, KFP local outputs): `$VIGOS_HOME` or `./.vigos`."""
    return Path(os.environ.get("VIGOS_HOME") or Path.cwd() / ".vigos").resolve()


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri and has_password(uri):  # MLflow itself prints the URI (`View run at ...`), and it reaches subprocesses
        raise VigosError(f"MLFLOW_TRACKING_URI={redact(uri)} carries a password; remove it from the URI and set "
                         "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead")
    if uri:
        return uri
    home = vigos_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def _client():
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri())
    return MlflowClient()


EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
"""MLflow 3's UI opens an experiment without this tag on its GenAI overview; ours are training runs: the runs table."""


def _experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        for key, value in EXPERIMENT_KIND.items():
            if key not in exp.tags:  # created before the tag was set, or by hand: never override a user's choice
                client.set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id
    location = None
    if tracking_uri().startswith("sqlite:"):
        # without this MLflow puts a SQLite store's artifacts in ./mlruns of whatever the working directory is
        location = (vigos_home() / "mlflow-artifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    except Exception:  # another step created it in the meantime
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def use_experiment(name: str) -> str:
    """Make `name` the active MLflow experiment, created like the pipeline's (a local SQLite store keeps its
    artifacts under `vigos_home()`, never in ./mlruns of the working directory); returns its id."""
    import mlflow

    experiment_id = _experiment_id(_client(), name)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _find_runs(client, experiment_id: str, tags: dict[str, str]) -> list:
    filt = " and ".join(f"tags.`{k}` = '{_quote(v)}'" for k, v in tags.items())
    return client.search_runs([experiment_id], filter_string=filt, order_by=["attributes.start_time ASC"])


def _quote(value: str) -> str:
    return str(value).replace("'", "\\'")


def _get_or_create(client, experiment_id: str, tags: dict[str, str], run_name: str) -> str:
    """The oldest run carrying `tags`, created if there is none (race-safe, see the module docstring)."""
    found = _find_runs(client, experiment_id, tags)
    if found:
        return found[0].info.run_id
    mine = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    found = _find_runs(client, experiment_id, tags)
    oldest = found[0].info.run_id if found else mine
    if oldest != mine:
        client.delete_run(mine)
    return oldest


def parent_run_id(kfp_run_id: str, experiment: str, pipeline_name: str = "vigos") -> str:
    client = _client()
    exp_id = _experiment_id(client, experiment)
    tags = {TAG_KFP_RUN: kfp_run_id, TAG_ROLE: PARENT_ROLE}
    return _get_or_create(client, exp_id, tags, run_name=f"{pipeline_name}-{kfp_run_id[:8]}")


@contextlib.contextmanager
def step_run(
    step: str,
    *,
    kfp_run_id: str,
    experiment: str,
    params: dict[str, Any] | None = None,
    parent_params: dict[str, Any] | None = None,
) -> Iterator[Any]:
    """Run the body inside the step's nested MLflow run (active, so `mlflow.log_*` lands there).

    `params` go to the step's run and, unless `parent_params` says otherwise (a step whose params differ between
    its instances, e.g. the two evaluations' `eval.model`), to the pipeline's parent run too.
    The run is marked FAILED if the body raises, FINISHED otherwise.
    """
    import mlflow

    client = _client()
    exp_id = _experiment_id(client, experiment)
    parent = parent_run_id(kfp_run_id, experiment)
    tags = {TAG_KFP_RUN: kfp_run_id, TAG_STEP: step, TAG_ROLE: "step", TAG_PARENT: parent}
    run_id = _get_or_create(client, exp_id, tags, run_name=step)
    # every step writes these on the parent, possibly at the same moment as another pod: conflicts are retried
    commit = source_commit()
    if commit:
        retry_conflicts(client.set_tag, parent, TAG_COMMIT, commit)
    shared = params if parent_params is None else parent_params
    if shared:  # the parent's row in the runs table shows every step's settings side by side
        retry_conflicts(_log_params_to, client, parent, shared)
    with mlflow.start_run(run_id=run_id) as run:
        if params:
            log_params(params)
        if commit:
            mlflow.set_tag(TAG_COMMIT, commit)
        mlflow.set_tag("vigos.attempt_started", time.strftime("%Y-%m-%dT%H:%M:%S"))
        yield run


_WRITE_ATTEMPTS = 6  # conflicting concurrent writes of one row: the retry updates the winner's row
# how the tracking server's database (SQLite, PostgreSQL, MySQL) words a write that lost a race for the same row
_CONFLICT = re.compile(r"IntegrityError|UNIQUE constraint|UniqueViolation|duplicate key|Duplicate entry|"
                       r"database is locked|Deadlock", re.I)


def retry_conflicts(write: Any, *args: Any) -> Any:
    """Run an idempotent MLflow write (a tag, an alias, params already checked); again, after a short jittered
    pause, when the tracking server's database reports a conflict with a concurrent write of the same row (two
    pods writing the parent run's tags, two registrations of one model): the next attempt updates that row."""
    import logging
    import random

    from mlflow.exceptions import MlflowException

    for attempt in range(_WRITE_ATTEMPTS):
        try:
            return write(*args)
        except MlflowException as e:
            if attempt == _WRITE_ATTEMPTS - 1 or not _CONFLICT.search(str(e)):
                raise
            logging.getLogger(__name__).info("MLflow write conflicted with a concurrent one, retrying: %s",
                                             str(e).splitlines()[0][:200])
        time.sleep(0.05 * 2**attempt * random.uniform(0.5, 1.0))
    raise AssertionError("unreachable")


@functools.cache
def source_commit() -> str | None:
    """The commit of the code that runs: `VIGOS_GIT_COMMIT` (baked into the images by `make images`), else the
    checkout this package is imported from (`-dirty` when it has uncommitted changes), else None."""
    baked = os.environ.get("VIGOS_GIT_COMMIT", "").strip()
    if baked and baked != "unknown":
        return baked
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


def log_dataset_input(name: str, source: str, split: str, digest: str, *, rows: int, run_ids: list[str],
                      context: str = "training") -> None:
    """Record the dataset a run used as an MLflow dataset input (the UI's "Datasets used" column): its name, where
    it came from and a digest of its settings, on each of `run_ids` (the step's run and the pipeline's parent)."""
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.types import ColSpec, Schema

    schema = Schema([ColSpec("string", "problem"), ColSpec("string", "answer"), ColSpec("binary", "images")])
    # the source as `datasets.load_dataset` takes it (a Hub id or a folder): what data prep read
    dataset = MetaDataset(HuggingFaceDatasetSource(source, split=split), name=name, digest=digest[:36], schema=schema)
    entity = dataset._to_mlflow_entity()
    tags = [InputTag("mlflow.data.context", context), InputTag("vigos.rows", str(rows))]
    client = _client()
    for run_id in run_ids:
        client.log_inputs(run_id, datasets=[DatasetInput(entity, tags=tags)])


def log_params(params: dict[str, Any], run_id: str | None = None) -> None:
    """Log params to `run_id` (default: the active run), skipping keys already logged with the same value (MLflow
    refuses to change a param, and a retried step logs them again); a changed value becomes a
    `param_changed.<key>` tag."""
    import mlflow

    _log_params_to(_client(), run_id or mlflow.active_run().info.run_id, params)


def _log_params_to(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param, RunTag

    existing = client.get_run(run_id).data.params
    values = {k: _param_value(v) for k, v in params.items()}
    fresh = [Param(k, v) for k, v in values.items() if k not in existing]
    changed = [RunTag(f"param_changed.{k}", v) for k, v in values.items() if k in existing and existing[k] != v]
    for i in range(0, len(fresh), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=fresh[i:i + 100])
    if changed:
        client.log_batch(run_id, tags=changed)


def _param_value(v: Any) -> str:
    s = "None" if v is None else redact(str(v))
    return s[:6000]


def finite_numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """The entries of `metrics` MLflow can log as metrics: finite numbers (not booleans, NaN, None or text)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def stage_metrics(stage: str, metrics: dict[str, Any]) -> dict[str, float]:
    """`{name: value}` -> `{"<stage>/<name>": value}` for the finite numbers (the scheme in the module docstring;
    names inside may already hold `/`, e.g. `mmmu/pass_at_5`)."""
    return {f"{stage}/{k}": v for k, v in finite_numbers(metrics).items()}


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log the finite numeric entries of `metrics` (already named by the scheme) to the active run."""
    import mlflow

    flat = finite_numbers(metrics)
    if flat:
        mlflow.log_metrics(flat, step=step)


def finish_parent(kfp_run_id: str, experiment: str, status: str, kfp_state: str = "", error_message: str = "") -> str:
    """Close the pipeline's parent run with `status` (FINISHED / FAILED / KILLED); returns its run id."""
    client = _client()
    run_id = parent_run_id(kfp_run_id, experiment)
    client.set_tag(run_id, "kfp.final_state", kfp_state or status)
    if error_message:
        client.set_tag(run_id, "kfp.error", redact(error_message)[:5000])
    client.set_terminated(run_id, status=status)
    return run_id


def step_runs(kfp_run_id: str, experiment: str) -> list:
    """The step runs of one pipeline run, oldest first (for summaries and tests)."""
    client = _client()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return _find_runs(client, exp.experiment_id, {TAG_KFP_RUN: kfp_run_id, TAG_ROLE: "step"})


# ------------------------------------------------------------------------------------------------------------------
# Tracking that never blocks a long job


JOURNAL = "mlflow-journal.jsonl"
"""Every record a `BackgroundLogger` was given, in order, one JSON line each; beside it `<JOURNAL>.sent` holds the
sequence number of the last record the server acknowledged, and `mlflow-run.json` the run they belong to."""
RUN_FILE = "mlflow-run.json"
FLUSH_ENV = "VIGOS_TRACKING_FLUSH_S"
"""Seconds a finishing job waits for an unreachable server before leaving the rest in the journal (default 120)."""


def quick_failing_client_env() -> None:
    """Make this process's MLflow HTTP calls fail in seconds instead of retrying for minutes (MLflow's defaults:
    120 s timeout, 7 retries with back-off), unless the user set them: `BackgroundLogger` retries on its own."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


class BackgroundLogger:
    """Metrics and artifacts of one MLflow run, sent by a background thread, so the job never waits for the server.

    `log_metrics` / `log_artifact` append the record to a local journal (`folder/JOURNAL`) and return; the thread
    sends records in order, one at a time, and on a failure (server away, timeout, 5xx) keeps the record and
    retries with jittered exponential back-off up to `retry_max_s`. `close` waits at most `flush_s` for the rest;
    what is still unsent stays in the journal and is sent, in order and once, by the next `BackgroundLogger` on
    the same folder (a resumed job, or `replay` at the end of the DAG step). Without a run id the run is created
    on first contact (in `experiment`) and remembered in `folder/RUN_FILE`, so a rerun logs into the same run.
    """

    def __init__(self, folder: Path, run_id: str | None = None, *, experiment: str = "vigos",
                 run_name: str = "train", retry_max_s: float = 30.0) -> None:
        import collections
        import threading

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.journal = self.folder / JOURNAL
        self.sent_file = self.folder / (JOURNAL + ".sent")
        self.experiment, self.run_name, self.retry_max_s = experiment, run_name, retry_max_s
        self.uri = tracking_uri()  # fixed for the job's life: the thread never reads the environment again
        self.run_id = run_id or self._remembered_run()
        if run_id:
            self._remember_run(run_id)
        self._sent = int(self.sent_file.read_text() or 0) if self.sent_file.is_file() else 0
        self._pending: collections.deque[dict[str, Any]] = collections.deque(self._unsent())
        self._seq = self._pending[-1]["seq"] if self._pending else self._sent
        self._cond = threading.Condition()
        self._closing = False
        self.failures = 0  # consecutive failed sends (0 while the server answers)
        self.last_error = ""
        self._thread = threading.Thread(target=self._work, name="vigos-tracking", daemon=True)
        self._thread.start()

    # -- the job's side: never blocks on the network

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        values = finite_numbers(metrics)
        if values:
            self._append({"kind": "metrics", "step": step or 0, "metrics": values})

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self._append({"kind": "artifact", "path": str(path), "artifact_path": artifact_path})

    def log_params(self, params: dict[str, Any]) -> None:
        self._append({"kind": "params", "params": {k: _param_value(v) for k, v in params.items()}})

    def close(self, status: str | None = None, flush_s: float | None = None) -> int:
        """Queue the run's end (`status`: FINISHED / FAILED / KILLED, None to leave it to the caller), wait up to
        `flush_s` (default `$VIGOS_TRACKING_FLUSH_S` or 120) for the server; returns the records left unsent."""
        if status:
            self._append({"kind": "end", "status": status})
        deadline = time.monotonic() + (float(os.environ.get(FLUSH_ENV, "120")) if flush_s is None else flush_s)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while self._pending and time.monotonic() < deadline:
                self._cond.wait(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            left = len(self._pending)
            self._pending.clear()  # they stay in the journal; the thread stops
            self._cond.notify_all()
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
        if left:
            print(f"[vigos] warning: MLflow unreachable ({self.last_error or 'no answer'}); {left} tracking "
                  f"record(s) kept in {self.journal}: they are sent when the job runs again on this folder "
                  "(the DAG step does it at its end)", flush=True)
        return left

    def _append(self, record: dict[str, Any]) -> None:
        with self._cond:
            self._seq += 1
            record = {"seq": self._seq, "ts": int(time.time() * 1000), **record}
            with open(self.journal, "a") as f:  # before the send: a crash loses nothing already logged
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self._pending.append(record)
            self._cond.notify_all()

    # -- the thread's side

    def _work(self) -> None:
        import random

        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                record = self._pending[0]
            try:
                self._send(record)
            except Exception as e:  # noqa: BLE001 - any failure of the server or the network: keep and retry
                self.failures += 1
                self.last_error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                wait = min(self.retry_max_s, 0.5 * 2 ** min(self.failures, 16)) * random.uniform(0.5, 1.0)
                with self._cond:
                    if self._pending and self._pending[0] is record:
                        self._cond.wait(timeout=wait)  # close() wakes it for a last try
                continue
            self.failures = 0
            with self._cond:
                if self._pending and self._pending[0] is record:
                    self._pending.popleft()
                self._sent = record["seq"]
                write_atomic(self.sent_file, str(self._sent))
                self._cond.notify_all()

    def _send(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.uri)
        if self.run_id is None:
            experiment_id = _experiment_id(client, self.experiment)
            commit = source_commit()
            run = client.create_run(experiment_id, run_name=self.run_name, tags={TAG_COMMIT: commit} if commit else {})
            self._remember_run(run.info.run_id)
        kind = record["kind"]
        if kind == "metrics":
            metrics = [Metric(k, v, record["ts"], record["step"]) for k, v in record["metrics"].items()]
            for i in range(0, len(metrics), 1000):  # MLflow's batch limit
                client.log_batch(self.run_id, metrics=metrics[i:i + 1000])
        elif kind == "artifact":
            if Path(record["path"]).exists():  # a rollout sample deleted since is not worth a stuck queue
                client.log_artifact(self.run_id, record["path"], record.get("artifact_path"))
        elif kind == "params":
            _log_params_to(client, self.run_id, record["params"])
        elif kind == "end":
            client.set_terminated(self.run_id, status=record["status"], end_time=record["ts"])

    # -- the journal

    def _unsent(self) -> list[dict[str, Any]]:
        if not self.journal.is_file():
            return []
        out = []
        for line in self.journal.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line torn by a crash mid-write: nothing after it was acknowledged either
                continue
            if record.get("seq", 0) > self._sent:
                out.append(record)
        return out

    def _remembered_run(self) -> str | None:
        path = self.folder / RUN_FILE
        if path.is_file():
            try:
                return json.loads(path.read_text()).get("run_id")
            except ValueError:
                return None
        return None

    def _remember_run(self, run_id: str) -> None:
        self.run_id = run_id
        write_atomic(self.folder / RUN_FILE, json.dumps({"run_id": run_id, "tracking_uri": self.uri}))


def replay(folder: Path, run_id: str | None = None, flush_s: float = 60.0) -> int:
    """Send what a job left unsent in `folder`'s journal (the DAG step calls it once training has ended);
    returns the records still unsent."""
    if not (Path(folder) / JOURNAL).is_file():
        return 0
    return BackgroundLogger(folder, run_id).close(flush_s=flush_s)
