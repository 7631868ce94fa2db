"""`python -m pipeline submit|schedule` against a local HTTP test double of the KFP v2beta1 API.

The double stands in for a Kubeflow cluster, which cannot run here: it implements just the endpoints the kfp
client calls (pipelines, upload, upload_version, versions, experiments, runs, recurringruns), records every
request, and answers with the JSON shapes of the real API server.
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from vigos.errors import VigosError

API = "/apis/v2beta1"


class KfpDouble:
    def __init__(self):
        self.requests: list[dict] = []
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}
        self.experiments: dict[str, dict] = {}
        self.runs: list[dict] = []
        self.recurring: list[dict] = []

    def handle(self, method, path, query, body, headers):
        self.requests.append({"method": method, "path": path, "query": query, "body": body,
                              "auth": headers.get("Authorization")})
        name = (query.get("name") or query.get("display_name") or [""])[0]
        if method == "GET" and path == f"{API}/pipelines":
            wanted = json.loads(query["filter"][0])["predicates"][0]["stringValue"] if "filter" in query else None
            found = [p for p in self.pipelines.values() if wanted in (None, p["display_name"])]
            return {"pipelines": found, "total_size": len(found)} if found else {}
        if method == "POST" and path == f"{API}/pipelines/upload":
            pid = str(uuid.uuid4())
            self.pipelines[pid] = {"pipeline_id": pid, "display_name": name}
            self.versions[pid] = [self._version(pid, name, body)]
            return self.pipelines[pid]
        if method == "POST" and path == f"{API}/pipelines/upload_version":
            pid = query["pipelineid"][0]
            self.versions[pid].append(self._version(pid, name, body))
            return self.versions[pid][-1]
        if method == "GET" and path.startswith(f"{API}/pipelines/") and path.endswith("/versions"):
            pid = path.split("/")[-2]
            return {"pipeline_versions": list(reversed(self.versions[pid]))[:1], "total_size": len(self.versions[pid])}
        if method == "GET" and path == f"{API}/experiments":
            wanted = json.loads(query["filter"][0])["predicates"][0]["stringValue"]
            found = [e for e in self.experiments.values() if e["display_name"] == wanted]
            return {"experiments": found, "total_size": len(found)} if found else {}
        if method == "POST" and path == f"{API}/experiments":
            exp = json.loads(body) | {"experiment_id": str(uuid.uuid4())}
            self.experiments[exp["experiment_id"]] = exp
            return exp
        if method == "POST" and path == f"{API}/runs":
            run = json.loads(body) | {"run_id": str(uuid.uuid4()), "state": "PENDING"}
            self.runs.append(run)
            return run
        if method == "POST" and path == f"{API}/recurringruns":
            rec = json.loads(body) | {"recurring_run_id": str(uuid.uuid4()), "status": "ENABLED"}
            self.recurring.append(rec)
            return rec
        raise KeyError(f"{method} {path}")

    @staticmethod
    def _version(pid, name, body):
        assert b"pipelineInfo" in body  # the compiled YAML travelled in the multipart upload
        return {"pipeline_id": pid, "pipeline_version_id": str(uuid.uuid4()), "display_name": name}


@pytest.fixture
def kfp_api(monkeypatch, tmp_path):
    double = KfpDouble()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self, method):
            url = urlparse(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                payload, status = double.handle(method, url.path, parse_qs(url.query), body, self.headers), 200
            except KeyError as e:
                payload, status = {"error": str(e)}, 404
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 - http.server's naming
            self._serve("GET")

        def do_POST(self):  # noqa: N802
            self._serve("POST")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("KF_PIPELINES_NAMESPACE", "team-ml")
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "test-token")
    monkeypatch.setenv("HOME", str(tmp_path))  # no stray ~/.config/kfp context
    yield double
    server.shutdown()


def run_cli(args, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    monkeypatch.chdir(tmp_path)
    return CliRunner().invoke(app, args)


def params_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"preset": "paper-7b", "max_samples": 1000, "train_gpus": 8,
                                    "config_overrides": ["train.max_steps=100"]}))
    return path


def test_submit_uploads_a_version_and_starts_a_run(kfp_api, monkeypatch, tmp_path):
    p = params_file(tmp_path)
    result = run_cli(["submit", "--params", str(p), "--set", "train_gpus=4", "--experiment", "nightly"],
                     monkeypatch, tmp_path)
    assert result.exit_code == 0, result.output
    (run,) = kfp_api.runs
    assert run["runtime_config"]["parameters"] == {"preset": "paper-7b", "max_samples": 1000, "train_gpus": 4,
                                                   "config_overrides": ["train.max_steps=100"]}
    (pipeline,) = kfp_api.pipelines.values()
    assert pipeline["display_name"] == "vigos"
    assert run["pipeline_version_reference"]["pipeline_id"] == pipeline["pipeline_id"]
    (exp,) = kfp_api.experiments.values()
    assert exp["display_name"] == "nightly" and exp["namespace"] == "team-ml"
    assert run["experiment_id"] == exp["experiment_id"]
    assert run["service_account"] == "vigos-pipeline-runner"
    assert all(r["auth"] == "Bearer test-token" for r in kfp_api.requests)
    assert f"/#/runs/details/{run['run_id']}" in result.output.strip().splitlines()[-1]

    # a second submit adds a pipeline version and reuses the experiment
    again = run_cli(["submit", "--params", str(p), "--experiment", "nightly"], monkeypatch, tmp_path)
    assert again.exit_code == 0, again.output
    assert len(kfp_api.pipelines) == 1 and len(kfp_api.versions[pipeline["pipeline_id"]]) == 2
    assert len(kfp_api.experiments) == 1 and len(kfp_api.runs) == 2
    assert kfp_api.runs[1]["pipeline_version_reference"]["pipeline_version_id"] == \
        kfp_api.versions[pipeline["pipeline_id"]][1]["pipeline_version_id"]


def test_schedule_creates_a_recurring_run(kfp_api, monkeypatch, tmp_path):
    result = run_cli(["schedule", "--cron", "0 0 2 * * 1", "--set", "preset=paper-7b"], monkeypatch, tmp_path)
    assert result.exit_code == 0, result.output
    (rec,) = kfp_api.recurring
    assert rec["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * 1"
    assert rec["max_concurrency"] in ("1", 1) and rec["no_catchup"] is True
    assert rec["runtime_config"]["parameters"] == {"preset": "paper-7b"}
    assert "/#/recurringrun/details/" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "train_gpu=4"], "unknown pipeline parameter(s) train_gpu; valid:"),
        (["--set", "train_gpus=many"], "pipeline parameter train_gpus expects number_integer, got 'many'"),
        (["--set", "config_overrides=train.max_steps=3"], "config_overrides expects list"),
    ],
)
def test_bad_parameters_fail_before_anything_is_sent(kfp_api, monkeypatch, tmp_path, args, message):
    result = run_cli(["submit", *args], monkeypatch, tmp_path)
    assert result.exit_code != 0
    assert isinstance(result.exception, VigosError) and message in str(result.exception)
    assert kfp_api.requests == []


def test_endpoint_is_required(monkeypatch, tmp_path):
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    result = run_cli(["submit"], monkeypatch, tmp_path)
    assert isinstance(result.exception, VigosError) and "set KF_PIPELINES_ENDPOINT" in str(result.exception)


@pytest.mark.parametrize("command", [["submit"], ["schedule", "--cron", "0 0 2 * * 1"]])
def test_namespace_defaults_to_the_one_k8s_base_creates(kfp_api, monkeypatch, tmp_path, command):
    """Without KF_PIPELINES_NAMESPACE the experiment (and so, on multi-user KFP, the runs' pods) goes to `vigos`,
    where k8s/base puts the PVC, ConfigMap, Secrets and service account every step needs."""
    from pathlib import Path

    from pipeline.submit import DEFAULT_NAMESPACE

    base = yaml.safe_load((Path(__file__).resolve().parents[2] / "k8s/base/kustomization.yaml").read_text())
    assert DEFAULT_NAMESPACE == base["namespace"] == "vigos"
    monkeypatch.delenv("KF_PIPELINES_NAMESPACE")
    result = run_cli(command, monkeypatch, tmp_path)
    assert result.exit_code == 0, result.output
    (exp,) = kfp_api.experiments.values()
    assert exp["namespace"] == "vigos"
    lookups = [r for r in kfp_api.requests if r["method"] == "GET" and r["path"] == f"{API}/experiments"]
    assert lookups and all(r["query"]["namespace"] == ["vigos"] for r in lookups)
    assert (kfp_api.runs or kfp_api.recurring)[0]["experiment_id"] == exp["experiment_id"]
