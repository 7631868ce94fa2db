"""Submit the pipeline to a Kubeflow Pipelines endpoint: compile, upload as a new pipeline version, then start a
run (or a recurring run) in an experiment.

Where and who come from the environment, never from the command line or the repository:
    KF_PIPELINES_ENDPOINT   the KFP API/UI URL, e.g. https://kubeflow.example.com/pipeline (required)
    KF_PIPELINES_NAMESPACE  the profile namespace of multi-user installs, where the runs' pods go and where
                            k8s/ must be applied (default: vigos, the namespace of k8s/base). Standalone
                            (single-user) KFP ignores it and runs every pod in its own namespace.
    KF_PIPELINES_TOKEN      a bearer token, when the endpoint needs one (e.g. `kubectl create token ...`)
    KF_PIPELINES_SERVICE_ACCOUNT  the runs' service account (default: vigos-pipeline-runner, k8s/base/rbac.yaml)

Run parameters come from a YAML file (a mapping of pipeline parameters) and `key=value` overrides; every name and
type is checked against the compiled pipeline before anything is sent.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vigos.errors import VigosError

ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"
NAMESPACE_ENV = "KF_PIPELINES_NAMESPACE"
TOKEN_ENV = "KF_PIPELINES_TOKEN"
SERVICE_ACCOUNT_ENV = "KF_PIPELINES_SERVICE_ACCOUNT"
DEFAULT_NAMESPACE = "vigos"
"""k8s/base's namespace, which holds the PVC, ConfigMap, Secrets and service account every step uses."""
_KFP_TYPES = {"STRING": str, "NUMBER_INTEGER": int, "NUMBER_DOUBLE": float, "BOOLEAN": bool, "LIST": list,
              "STRUCT": dict}


@dataclass
class Submission:
    pipeline_id: str
    version_id: str
    experiment_id: str
    run_id: str
    url: str
    recurring: bool


def pipeline_parameters(package: Path) -> dict[str, dict[str, Any]]:
    """The compiled pipeline's parameters: name -> {parameterType, defaultValue, description}."""
    spec = next(yaml.safe_load_all(package.read_text()))
    return spec["root"]["inputDefinitions"]["parameters"]


def resolve_parameters(package: Path, params_file: Path | None, overrides: list[str]) -> dict[str, Any]:
    """YAML file <- `key=value` overrides, checked against the pipeline's parameters (names and types)."""
    from vigos.config import parse_override

    values: dict[str, Any] = {}
    if params_file:
        loaded = yaml.safe_load(Path(params_file).read_text()) or {}
        if not isinstance(loaded, dict):
            raise VigosError(f"{params_file}: expected a mapping of pipeline parameters, got {type(loaded).__name__}")
        values.update(loaded)
    for item in overrides:
        key, value = parse_override(item)
        values[key] = value
    known = pipeline_parameters(package)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise VigosError(f"unknown pipeline parameter(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    for name, value in values.items():
        kind = known[name]["parameterType"]
        expected = _KFP_TYPES.get(kind, object)
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise VigosError(f"pipeline parameter {name} expects {kind.lower()}, got {value!r}")
    return values


def _version_name(pipeline_name: str) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sha = "nogit"
    return f"{pipeline_name}-{stamp}-{sha}"


def namespace() -> str:
    """The namespace runs are submitted to: KF_PIPELINES_NAMESPACE, else DEFAULT_NAMESPACE."""
    return os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE


def client_from_env():
    import kfp

    host = os.environ.get(ENDPOINT_ENV)
    if not host:
        raise VigosError(f"set {ENDPOINT_ENV} to the Kubeflow Pipelines endpoint "
                         "(e.g. https://kubeflow.example.com/pipeline), and KF_PIPELINES_TOKEN if it needs a token")
    return kfp.Client(host=host, existing_token=os.environ.get(TOKEN_ENV) or None, namespace=namespace())


def submit(
    package: Path,
    params: dict[str, Any],
    *,
    experiment: str,
    pipeline_name: str,
    run_name: str | None = None,
    cron: str | None = None,
) -> Submission:
    """Upload `package` as a new version of `pipeline_name` and start a run (a recurring one with `cron`)."""
    client = client_from_env()
    version_name = _version_name(pipeline_name)
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(str(package), pipeline_name=pipeline_name,
                                          description="ViGOS: train, evaluate and publish Qwen2.5-VL models")
        pipeline_id = pipeline.pipeline_id
        versions = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc")
        version_id = versions.pipeline_versions[0].pipeline_version_id
    else:
        version = client.upload_pipeline_version(str(package), pipeline_version_name=version_name,
                                                 pipeline_id=pipeline_id)
        version_id = version.pipeline_version_id
    exp = client.create_experiment(experiment, namespace=namespace())
    prefix = client._get_url_prefix()  # the UI URL kfp itself prints links with
    job_name = run_name or version_name
    from pipeline.pipeline import SERVICE_ACCOUNT

    account = os.environ.get(SERVICE_ACCOUNT_ENV) or SERVICE_ACCOUNT
    if cron:
        rec = client.create_recurring_run(
            exp.experiment_id, job_name, cron_expression=cron, params=params, pipeline_id=pipeline_id,
            version_id=version_id, max_concurrency=1, no_catchup=True, enabled=True, service_account=account,
        )
        return Submission(pipeline_id, version_id, exp.experiment_id, rec.recurring_run_id,
                          f"{prefix}/#/recurringrun/details/{rec.recurring_run_id}", True)
    run = client.run_pipeline(exp.experiment_id, job_name, params=params, pipeline_id=pipeline_id,
                              version_id=version_id, service_account=account)
    return Submission(pipeline_id, version_id, exp.experiment_id, run.run_id,
                      f"{prefix}/#/runs/details/{run.run_id}", False)
