"""MLflow tracking: one parent run per pipeline run, one nested run per step.

Every DAG step runs in its own process (its own pod on the cluster), so the parent run cannot be handed around
in memory: it is found by its `kfp.run_id` tag, and created by whichever step gets there first. Two steps that
start at the same moment may both create one; both then pick the oldest, and the loser deletes its own, so
everything lands under a single parent. A step's run is found the same way (`kfp.run_id` + `vigos.step`), so a
retried step (KFP retry, or a resumed training pod) logs into the run it started instead of a new one.

The tracking URI comes from `MLFLOW_TRACKING_URI`; without it, a SQLite store under `.vigos/` (see `vigos_home`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vigos.errors import VigosError
from vigos.redact import has_password, redact

PARENT_ROLE = "pipeline"
TAG_KFP_RUN = "kfp.run_id"
TAG_ROLE = "vigos.role"
TAG_STEP = "vigos.step"
TAG_PARENT = "mlflow.parentRunId"


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
) -> Iterator[Any]:
    """Run the body inside the step's nested MLflow run (active, so `mlflow.log_*` lands there).

    The run is marked FAILED if the body raises, FINISHED otherwise.
    """
    import mlflow

    client = _client()
    exp_id = _experiment_id(client, experiment)
    parent = parent_run_id(kfp_run_id, experiment)
    tags = {TAG_KFP_RUN: kfp_run_id, TAG_STEP: step, TAG_ROLE: "step", TAG_PARENT: parent}
    run_id = _get_or_create(client, exp_id, tags, run_name=step)
    with mlflow.start_run(run_id=run_id) as run:
        if params:
            log_params(params)
        mlflow.set_tag("vigos.attempt_started", time.strftime("%Y-%m-%dT%H:%M:%S"))
        yield run


def log_params(params: dict[str, Any]) -> None:
    """Log params, skipping keys already logged with the same value (MLflow refuses to change a param, and a
    retried step logs them again)."""
    import mlflow

    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params if run else {}
    fresh = {k: _param_value(v) for k, v in params.items() if k not in existing}
    changed = {k: v for k, v in params.items() if k in existing and existing[k] != _param_value(v)}
    if changed:
        mlflow.set_tags({f"param_changed.{k}": _param_value(v) for k, v in changed.items()})
    if fresh:
        mlflow.log_params(fresh)


def _param_value(v: Any) -> str:
    s = "None" if v is None else redact(str(v))
    return s[:6000]


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log the numeric entries of `metrics` (nested dicts flattened with '.')."""
    import mlflow

    from vigos.config import flatten_dict

    flat = {k: float(v) for k, v in flatten_dict(metrics) if isinstance(v, (int, float)) and not isinstance(v, bool)}
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
