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
type is checked against the compiled pipeline before anything is sent, and so are the images (digest-pinned, see
components/images.py). Every failure a user can fix is a one-line VigosError: bad input exits 2 (the CLI's
usage code), an endpoint that cannot be reached or refuses the request exits 1 (EndpointError). The experiment
is looked up (or created) before the pipeline is uploaded, so a refused token or namespace uploads nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from vigos.errors import VigosError
from vigos.redact import redact

ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"
NAMESPACE_ENV = "KF_PIPELINES_NAMESPACE"
TOKEN_ENV = "KF_PIPELINES_TOKEN"
SERVICE_ACCOUNT_ENV = "KF_PIPELINES_SERVICE_ACCOUNT"
DEFAULT_NAMESPACE = "vigos"
"""k8s/base's namespace, which holds the PVC, ConfigMap, Secrets and service account every step uses."""
PARAMS_EXAMPLE = "configs/pipeline-params.example.yaml"
REQUEST_TIMEOUT_S: tuple[float, float] = (15.0, 120.0)
"""(connect, read) timeout of each request to the KFP API; a connection is tried twice at most."""
_KFP_TYPES = {"STRING": str, "NUMBER_INTEGER": int, "NUMBER_DOUBLE": float, "BOOLEAN": bool, "LIST": list,
              "STRUCT": dict}
_TYPE_WORDS = {"STRING": "a string", "NUMBER_INTEGER": "an integer", "NUMBER_DOUBLE": "a number",
               "BOOLEAN": "true or false", "LIST": "a list, e.g. [a, b]", "STRUCT": "a mapping, e.g. {key: value}"}
"""What each KFP parameter type is called in an error (never KFP's internal NUMBER_INTEGER etc.)."""


class EndpointError(VigosError):
    """The KFP endpoint cannot be reached, or refuses the request: not a usage error (exit code 1)."""

    exit_code = 1


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


def read_params_file(path: Path) -> dict[str, Any]:
    """The mapping of pipeline parameters in a YAML file; a missing or broken file is one VigosError line."""
    path = Path(path)
    fix = (f"pass --params FILE (make submit-pipeline PARAMS=FILE), a YAML mapping of pipeline parameters like "
           f"{PARAMS_EXAMPLE}")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise VigosError(f"params file {path} not found: {fix}") from None
    except IsADirectoryError:
        raise VigosError(f"params file {path} is a directory: {fix}") from None
    except UnicodeDecodeError:
        raise VigosError(f"params file {path} is not a text file: {fix}") from None
    except OSError as e:
        raise VigosError(f"params file {path} cannot be read ({e.strerror}): {fix}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise VigosError(f"params file {path} is not valid YAML ({where}{problem}): fix it; "
                         f"the format is in {PARAMS_EXAMPLE}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise VigosError(f"params file {path}: expected a mapping of pipeline parameters (`name: value` lines), "
                         f"got {type(loaded).__name__}; the format is in {PARAMS_EXAMPLE}")
    return loaded


def load_parameters(params_file: Path | None, overrides: list[str]) -> dict[str, Any]:
    """YAML file <- `name=value` overrides (values parsed as YAML), before anything is compiled."""
    values: dict[str, Any] = read_params_file(params_file) if params_file else {}
    for item in overrides:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise VigosError(f"--set {item!r} is not of the form name=value (e.g. --set train_gpus=4)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        values[name.strip()] = value
    return values


def check_parameters(package: Path, values: dict[str, Any]) -> dict[str, Any]:
    """`values` checked against the compiled pipeline's parameters: names, then types."""
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
            words = _TYPE_WORDS.get(kind, kind.lower())
            raise VigosError(f"pipeline parameter {name} expects {words}, got {value!r}")
    return values


def resolve_parameters(package: Path, params_file: Path | None, overrides: list[str]) -> dict[str, Any]:
    """YAML file <- `key=value` overrides, checked against the pipeline's parameters (names and types)."""
    return check_parameters(package, load_parameters(params_file, overrides))


def pipeline_images(package: Path) -> list[str]:
    """Every image the compiled pipeline names: each step's, and the TrainJob's (a task input named `image`)."""
    spec = next(yaml.safe_load_all(package.read_text()))
    images = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values() if "container" in ex}
    for comp in [spec.get("root", {}), *spec.get("components", {}).values()]:
        for task in comp.get("dag", {}).get("tasks", {}).values():
            image = task.get("inputs", {}).get("parameters", {}).get("image", {})
            constant = image.get("runtimeValue", {}).get("constant")
            if isinstance(constant, str):
                images.add(constant)
    return sorted(images)


def unpinned_images(package: Path) -> list[str]:
    """The compiled pipeline's images that are not digest-pinned (or are the built-in placeholder names)."""
    from components.images import is_pinned

    return [image for image in pipeline_images(package) if not is_pinned(image)]


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


def endpoint() -> str:
    """KF_PIPELINES_ENDPOINT, checked before anything is compiled or sent."""
    host = (os.environ.get(ENDPOINT_ENV) or "").strip()
    if not host:
        raise VigosError(f"set {ENDPOINT_ENV} to the Kubeflow Pipelines endpoint "
                         "(e.g. https://kubeflow.example.com/pipeline), and KF_PIPELINES_TOKEN if it needs a token")
    if "://" not in host:
        return f"https://{host}"  # what kfp.Client assumes, said once here instead of in a warning
    if not host.startswith(("http://", "https://")):
        raise VigosError(f"{ENDPOINT_ENV}={host}: use an http:// or https:// URL "
                         "(e.g. https://kubeflow.example.com/pipeline)")
    return host


def _error_text(body: Any) -> str:
    """The message of a KFP API error body (JSON `message` / `error_message`), on one line."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    text = str(body or "").strip()
    with contextlib.suppress(ValueError, TypeError):
        data = json.loads(text)
        if isinstance(data, dict):
            text = str(data.get("message") or data.get("error_message") or data.get("error") or text)
    if text.lstrip().startswith("<"):  # an HTML page: a login form or a proxy's error page
        return "an HTML page"
    return " ".join(redact(text).split())[:300]  # a server may quote the token it refused


def _endpoint_error(e: BaseException, host: str, action: str) -> EndpointError | None:
    """A one-line EndpointError for a failure to talk to the KFP API, or None when `e` is something else."""
    import urllib3.exceptions as u3
    from kfp_server_api.exceptions import ApiException

    check = f"check {ENDPOINT_ENV}={host}"
    where = f"Kubeflow Pipelines at {host}"
    reason = getattr(e, "reason", None) if isinstance(e, u3.MaxRetryError) else e
    if os.environ.get(TOKEN_ENV):
        token_fix = f"the token in {TOKEN_ENV} is not accepted (expired? for another audience?): set a fresh one"
    else:
        token_fix = f"the endpoint needs a token: set {TOKEN_ENV} to a bearer token it accepts"
    if isinstance(e, ApiException):
        status = e.status or 0
        detail = _error_text(e.body)
        detail = f": {detail}" if detail else ""
        if status == 0:  # the client's own failure, e.g. TLS
            first = str(e.reason or "").splitlines()
            what = " ".join(first[1:2] or first[:1]) or "no response"
            return EndpointError(f"cannot talk to {where} ({what}); {check} (http:// or https://, the port, the "
                                 "server certificate)")
        if status == 401:
            return EndpointError(f"{where} refused the request (401 Unauthorized) while {action}: {token_fix}")
        if status == 403:
            return EndpointError(f"{where} refused the request (403 Forbidden) while {action} in namespace "
                                 f"{namespace()}{detail}; set {NAMESPACE_ENV} to a profile namespace your token "
                                 f"may use, or {TOKEN_ENV} to a token of that namespace")
        if status == 404:
            return EndpointError(f"no Kubeflow Pipelines API at {host} (404 while {action}): set {ENDPOINT_ENV} "
                                 "to the KFP API/UI URL, e.g. https://kubeflow.example.com/pipeline")
        if status in (301, 302, 303, 307, 308):
            return EndpointError(f"{where} redirected the request ({status}, probably to a login page) while "
                                 f"{action}: {token_fix}")
        return EndpointError(f"{where} answered {status} {e.reason or ''} while {action}{detail}".rstrip())
    if isinstance(reason, u3.NameResolutionError) or (
            isinstance(reason, u3.NewConnectionError) and "resolve" in str(reason).lower()):
        name = urlparse(host).hostname or host
        return EndpointError(f"cannot reach {where}: host name {name} does not resolve; {check} (and the VPN / "
                             "DNS it needs)")
    if isinstance(e, TimeoutError) and not isinstance(e, u3.HTTPError):  # kfp.Client's own health check gave up
        return EndpointError(f"{where} did not answer its health check ({e}); {check} and {TOKEN_ENV}")
    # (urllib3's NewConnectionError subclasses ConnectTimeoutError: a refused connection is no timeout)
    timed_out = isinstance(reason, u3.ReadTimeoutError) or (
        isinstance(reason, u3.ConnectTimeoutError) and (not isinstance(reason, u3.NewConnectionError)
                                                        or "timed out" in str(reason).lower()))
    if timed_out:
        return EndpointError(f"cannot reach {where}: no answer within {REQUEST_TIMEOUT_S[0]:g} s (connect) / "
                             f"{REQUEST_TIMEOUT_S[1]:g} s (response) while {action}; {check}, the network path "
                             "to it (VPN, port-forward) and that KFP is up")
    if isinstance(reason, u3.SSLError):
        return EndpointError(f"cannot talk to {where}: TLS failed ({reason}); {check} (http:// or https://, the "
                             "server certificate)")
    if isinstance(reason, u3.NewConnectionError | ConnectionError) or isinstance(e, u3.MaxRetryError):
        why = "connection refused" if "refused" in str(reason).lower() else "connection failed"
        return EndpointError(f"cannot reach {where}: {why}; {check} (the URL and port; a port-forward such as "
                             "`kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80` must be running)")
    if isinstance(reason, u3.ProtocolError | u3.HTTPError):
        return EndpointError(f"cannot talk to {where}: {reason}; {check}")
    if isinstance(e, NotKfpApi):
        return EndpointError(f"{where} did not answer as the KFP API while {action} ({e}; a login page or another "
                             f"service?): {check} (the KFP API/UI URL) and {TOKEN_ENV}")
    return None


class NotKfpApi(Exception):
    """The endpoint answered, but not with the KFP API's JSON."""


def _check_reachable(client) -> None:
    """One request to the API's health endpoint, with the client's own headers and timeouts: an unreachable or
    wrong endpoint, a missing token (401, or a redirect to a login page) fail here, before anything is sent.
    (Namespace permissions are checked by the API's other calls, not by this one.)"""
    response = client._healthz_api.healthz_service_get_healthz(_preload_content=False)
    body = response.data.decode("utf-8", "replace") if isinstance(response.data, bytes) else str(response.data)
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        kind = "an HTML page" if body.lstrip().startswith("<") else "no JSON"
        raise NotKfpApi(f"{kind} from /apis/v2beta1/healthz")


@contextlib.contextmanager
def _talking_to(host: str, action: str) -> Iterator[None]:
    try:
        yield
    except Exception as e:
        error = _endpoint_error(e, host, action)
        if error is None:
            raise
        raise error from e


def client_from_env():
    """A kfp.Client for KF_PIPELINES_ENDPOINT / _TOKEN / _NAMESPACE, with request timeouts."""
    import urllib3

    host = endpoint()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "This client only works with ... v2.0.0-beta.2 and later"
        import kfp

        with _talking_to(host, "connecting"):
            client = kfp.Client(host=host, existing_token=os.environ.get(TOKEN_ENV) or None, namespace=namespace())
    # kfp sends every request without a timeout (an unreachable address would hang) and retries 3 times
    rest = client._run_api.api_client.rest_client
    rest.pool_manager.connection_pool_kw["retries"] = urllib3.Retry(total=1, redirect=False, raise_on_redirect=False)
    request = rest.request

    def request_with_timeout(*args, _request_timeout=None, **kwargs):
        return request(*args, _request_timeout=_request_timeout or REQUEST_TIMEOUT_S, **kwargs)

    rest.request = request_with_timeout
    with _talking_to(host, "checking the endpoint"):
        _check_reachable(client)
    return client


def submit(
    package: Path,
    params: dict[str, Any],
    *,
    experiment: str,
    pipeline_name: str,
    run_name: str | None = None,
    cron: str | None = None,
) -> Submission:
    """Upload `package` as a new version of `pipeline_name` and start a run (a recurring one with `cron`).

    The experiment comes first: it needs the namespace, so a token or namespace the endpoint refuses fails here,
    before anything is uploaded."""
    host = endpoint()
    client = client_from_env()
    version_name = _version_name(pipeline_name)
    with _talking_to(host, f"looking up experiment {experiment}"):
        exp = client.create_experiment(experiment, namespace=namespace())
    with _talking_to(host, f"uploading pipeline {pipeline_name}"):
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
    prefix = client._get_url_prefix()  # the UI URL kfp itself prints links with
    job_name = run_name or version_name
    from pipeline.pipeline import SERVICE_ACCOUNT

    account = os.environ.get(SERVICE_ACCOUNT_ENV) or SERVICE_ACCOUNT
    if cron:
        with _talking_to(host, "creating the recurring run"):
            rec = client.create_recurring_run(
                exp.experiment_id, job_name, cron_expression=cron, params=params, pipeline_id=pipeline_id,
                version_id=version_id, max_concurrency=1, no_catchup=True, enabled=True, service_account=account,
            )
        return Submission(pipeline_id, version_id, exp.experiment_id, rec.recurring_run_id,
                          f"{prefix}/#/recurringrun/details/{rec.recurring_run_id}", True)
    with _talking_to(host, "starting the run"):
        run = client.run_pipeline(exp.experiment_id, job_name, params=params, pipeline_id=pipeline_id,
                                  version_id=version_id, service_account=account)
    return Submission(pipeline_id, version_id, exp.experiment_id, run.run_id,
                      f"{prefix}/#/runs/details/{run.run_id}", False)
