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
        self.answer: tuple[int, bytes, dict] | None = None
        """(status, body, headers) to answer requests with, instead of the API (an auth proxy, an error)..."""
        self.answer_paths = "/"
        """... those whose path starts with this."""

    def uploads(self) -> list[dict]:
        return [r for r in self.requests if r["method"] == "POST"]

    def handle(self, method, path, query, body, headers):
        self.requests.append({"method": method, "path": path, "query": query, "body": body,
                              "auth": headers.get("Authorization")})
        name = (query.get("name") or query.get("display_name") or [""])[0]
        if method == "GET" and path == f"{API}/healthz":
            return {"commit_sha": "test", "tag_name": "2.17.0", "multi_user": True}
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
            if double.answer is not None and url.path.startswith(double.answer_paths):
                double.requests.append({"method": method, "path": url.path, "query": parse_qs(url.query),
                                        "body": body, "auth": self.headers.get("Authorization")})
                status, data, headers = double.answer
                self.send_response(status)
                for key, value in {"Content-Length": str(len(data)), **headers}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
                return
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


def run_cli(args, monkeypatch, tmp_path, allow_unpinned=True):
    """The CLI in this process. Its components were imported without build/images.env, so they name the
    placeholder images, which submit refuses unless `--allow-unpinned-images` (added here unless told not to)."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    monkeypatch.chdir(tmp_path)
    if allow_unpinned and args and args[0] in ("submit", "schedule"):
        args = [*args, "--allow-unpinned-images"]
    return CliRunner().invoke(app, args)


def run_main(argv, monkeypatch, tmp_path, capsys):
    """`python -m pipeline ARGV` as a user runs it: (exit code, stdout, stderr)."""
    from pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(argv)
    out, err = capsys.readouterr()
    return exited.value.code, out, err


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
        (["--set", "train_gpus=many"], "pipeline parameter train_gpus expects an integer, got 'many'"),
        (["--set", "train_gpus=true"], "pipeline parameter train_gpus expects an integer, got True"),
        (["--set", "prune_checkpoints=3"], "pipeline parameter prune_checkpoints expects true or false, got 3"),
        (["--set", "config_overrides=train.max_steps=3"], "config_overrides expects a list, e.g. [a, b]"),
        (["--set", "train_gpus"], "--set 'train_gpus' is not of the form name=value"),
    ],
)
def test_bad_parameters_fail_before_anything_is_sent(kfp_api, monkeypatch, tmp_path, args, message):
    result = run_cli(["submit", *args], monkeypatch, tmp_path)
    assert result.exit_code != 0
    assert isinstance(result.exception, VigosError) and message in str(result.exception)
    assert "number_" not in str(result.exception) and "boolean" not in str(result.exception)  # KFP's type names
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


# --- what a user sees when something is wrong: one line, the fix, exit 2 (usage) or 1 (endpoint), nothing sent ---

def _one_error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    "write, message",
    [
        (None, "params file {path} not found: pass --params FILE (make submit-pipeline PARAMS=FILE)"),
        ("preset: [paper-7b\n", "params file {path} is not valid YAML (line 2, column 1: expected ','"),
        ("- preset\n", "params file {path}: expected a mapping of pipeline parameters"),
    ],
)
def test_a_missing_or_broken_params_file_is_one_line(kfp_api, monkeypatch, tmp_path, capsys, write, message):
    path = tmp_path / "params.yaml"
    if write is not None:
        path.write_text(write)
    code, _, err = run_main(["submit", "--params", str(path)], monkeypatch, tmp_path, capsys)
    assert code == 2
    line = _one_error_line(err)
    assert message.format(path=path) in line and "configs/pipeline-params.example.yaml" in line
    assert kfp_api.requests == [] and not (tmp_path / "build").exists()  # failed before compiling


def test_a_missing_endpoint_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    code, _, err = run_main(["submit", "--allow-unpinned-images"], monkeypatch, tmp_path, capsys)
    assert code == 2
    assert "set KF_PIPELINES_ENDPOINT to the Kubeflow Pipelines endpoint" in _one_error_line(err)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sumbit"], "No such command 'sumbit'. Did you mean 'submit'? (see `python -m pipeline --help`)"),
        (["submit", "--parms", "p.yaml"], "No such option: --parms (Possible options: --params)"),
        (["schedule"], "Missing option '--cron'. (see `python -m pipeline schedule --help`)"),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(kfp_api, monkeypatch, tmp_path, capsys, argv, message):
    code, _, err = run_main(argv, monkeypatch, tmp_path, capsys)
    assert code == 2
    assert message in _one_error_line(err)
    assert kfp_api.requests == []


@pytest.mark.parametrize("command", [["submit"], ["schedule", "--cron", "0 0 2 * * 1"]])
def test_unpinned_images_are_refused(kfp_api, monkeypatch, tmp_path, capsys, command):
    """Without build/images.env the components name vigos/vigos-cpu:0.1.0 and vigos/vigos-cuda:0.1.0, which no
    registry holds: submit and schedule refuse them and say how to pin them."""
    code, _, err = run_main(command, monkeypatch, tmp_path, capsys)
    assert code == 2
    line = _one_error_line(err)
    assert "images not pinned to a digest (no build/images.env): vigos/vigos-cpu:0.1.0, vigos/vigos-cuda:0.1.0" in line
    assert "make images REGISTRY=" in line and "--allow-unpinned-images" in line
    assert kfp_api.requests == []


def test_allow_unpinned_images_submits_with_a_warning(kfp_api, monkeypatch, tmp_path, capsys):
    code, out, err = run_main(["submit", "--allow-unpinned-images"], monkeypatch, tmp_path, capsys)
    assert code == 0, err
    assert err.startswith("warning: images not pinned to a digest") and len(err.splitlines()) == 1
    assert len(kfp_api.runs) == 1 and "/#/runs/details/" in out


def test_an_images_env_that_is_not_there_pins_nothing(kfp_api, monkeypatch, tmp_path, capsys):
    code, _, err = run_main(["submit", "--images-env", "nope.env"], monkeypatch, tmp_path, capsys)
    assert code == 2
    assert "images not pinned to a digest (no nope.env): vigos/vigos-cpu:0.1.0" in _one_error_line(err)
    assert kfp_api.requests == []


def test_compile_warns_about_unpinned_images(monkeypatch, tmp_path, capsys):
    code, out, err = run_main(["compile", "-o", str(tmp_path / "p.yaml")], monkeypatch, tmp_path, capsys)
    assert code == 0 and (tmp_path / "p.yaml").exists()
    assert err.startswith("warning: images not pinned to a digest (no build/images.env)")
    assert "submit refuses them without --allow-unpinned-images" in err


def test_pinned_images_from_images_env_are_submitted(kfp_api, tmp_path):
    """`make images` writes build/images.env; a fresh process (the images are read at import) submits those."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    cpu = "registry.example.com/vigos/vigos-cpu@sha256:" + "1" * 64
    gpu = "registry.example.com/vigos/vigos-cuda@sha256:" + "2" * 64
    ev = "registry.example.com/vigos/vigos-vllm@sha256:" + "3" * 64
    (tmp_path / "build").mkdir()
    (tmp_path / "build/images.env").write_text(f"VIGOS_CPU_IMAGE={cpu}\nVIGOS_GPU_IMAGE={gpu}\nVIGOS_EVAL_IMAGE={ev}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGOS_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run([sys.executable, "-m", "pipeline", "submit"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr
    (upload,) = [r for r in kfp_api.requests if r["path"].endswith("/pipelines/upload")]
    assert cpu.encode() in upload["body"] and gpu.encode() in upload["body"] and ev.encode() in upload["body"]
    assert b"vigos/vigos-cpu:0.1.0" not in upload["body"] and b"vigos/vigos-cuda:0.1.0" not in upload["body"]
    assert b"vigos/vigos-vllm:0.1.0" not in upload["body"]


def test_is_pinned():
    from components.images import PLACEHOLDER_CPU_IMAGE, PLACEHOLDER_GPU_IMAGE, is_pinned

    assert is_pinned("registry.example.com/vigos/vigos-cpu@sha256:" + "a" * 64)
    assert not is_pinned(PLACEHOLDER_CPU_IMAGE) and not is_pinned(PLACEHOLDER_GPU_IMAGE)
    assert not is_pinned("registry.example.com/vigos/vigos-cpu:v1")
    assert not is_pinned("registry.example.com/vigos/vigos-cpu@sha256:abc")


def _refusing_endpoint(monkeypatch):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", f"http://127.0.0.1:{port}")
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(
    "answer, paths, message",
    [
        ((401, b'{"code": 16, "message": "Unauthenticated"}', {}), "/",
         "refused the request (401 Unauthorized) while checking the endpoint: the token in KF_PIPELINES_TOKEN is "
         "not accepted"),
        ((403, b'{"code": 7, "message": "User is not authorized to access namespace team-ml"}', {}),
         f"{API}/experiments",
         "refused the request (403 Forbidden) while looking up experiment vigos in namespace team-ml: User is not "
         "authorized to access namespace team-ml; set KF_PIPELINES_NAMESPACE"),
        ((302, b"", {"Location": "/dex/auth?client_id=kubeflow-oidc-authservice"}), "/",
         "redirected the request (302, probably to a login page) while checking the endpoint: the token in "
         "KF_PIPELINES_TOKEN"),
        ((200, b"<html><body>Sign in</body></html>", {"Content-Type": "text/html"}), "/",
         "did not answer as the KFP API while checking the endpoint (an HTML page from /apis/v2beta1/healthz"),
        ((404, b"404 page not found", {}), "/", "no Kubeflow Pipelines API at http://127.0.0.1:"),
        ((500, b'{"message": "database is locked"}', {}), f"{API}/pipelines",
         "answered 500 Internal Server Error while uploading pipeline vigos: database is locked"),
    ],
)
def test_an_endpoint_that_refuses_is_one_line_and_nothing_is_uploaded(kfp_api, monkeypatch, tmp_path, capsys,
                                                                      answer, paths, message):
    """An auth proxy without a token (401, or a redirect to its login page), a wrong URL (404, HTML), a namespace
    the token may not use (403): one line, exit 1, and no pipeline version uploaded, no run."""
    kfp_api.answer, kfp_api.answer_paths = answer, paths
    code, _, err = run_main(["submit", "--allow-unpinned-images"], monkeypatch, tmp_path, capsys)
    line = _one_error_line(err.split("\n", 1)[1])  # after the unpinned-images warning
    assert code == 1 and message in line, line
    assert kfp_api.requests and not [r for r in kfp_api.uploads() if "/pipelines" in r["path"] or "runs" in r["path"]]


def test_an_unreachable_endpoint_is_one_line(kfp_api, monkeypatch, tmp_path, capsys):
    host = _refusing_endpoint(monkeypatch)
    code, _, err = run_main(["schedule", "--cron", "0 0 2 * * 1", "--allow-unpinned-images"], monkeypatch,
                            tmp_path, capsys)
    assert code == 1
    assert f"cannot reach Kubeflow Pipelines at {host}: connection refused; check KF_PIPELINES_ENDPOINT=" in \
        _one_error_line(err.split("\n", 1)[1])


def test_an_unknown_host_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", "http://kfp.vigos.invalid")
    monkeypatch.setenv("HOME", str(tmp_path))
    code, _, err = run_main(["submit", "--allow-unpinned-images"], monkeypatch, tmp_path, capsys)
    assert code == 1
    line = _one_error_line(err.split("\n", 1)[1])
    assert "cannot reach Kubeflow Pipelines at http://kfp.vigos.invalid: host name kfp.vigos.invalid does not " \
           "resolve" in line


def test_an_endpoint_that_never_answers_times_out(monkeypatch, tmp_path, capsys):
    """A port that accepts connections and never answers (a stuck proxy): the request times out, one line."""
    import socket

    import pipeline.submit as submit_module

    monkeypatch.setattr(submit_module, "REQUEST_TIMEOUT_S", (0.5, 0.5))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)  # the kernel completes the handshake; nobody reads or answers
    try:
        monkeypatch.setenv("KF_PIPELINES_ENDPOINT", f"http://127.0.0.1:{sock.getsockname()[1]}")
        monkeypatch.setenv("HOME", str(tmp_path))
        code, _, err = run_main(["submit", "--allow-unpinned-images"], monkeypatch, tmp_path, capsys)
    finally:
        sock.close()
    assert code == 1
    line = _one_error_line(err.split("\n", 1)[1])
    assert "no answer within 0.5 s (connect) / 0.5 s (response) while checking the endpoint; check " \
           "KF_PIPELINES_ENDPOINT=" in line, line


def test_a_401_without_a_token_says_to_set_one(kfp_api, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("KF_PIPELINES_TOKEN")
    kfp_api.answer = (401, b"Unauthorized", {})
    code, _, err = run_main(["submit", "--allow-unpinned-images"], monkeypatch, tmp_path, capsys)
    assert code == 1
    assert "(401 Unauthorized) while checking the endpoint: the endpoint needs a token: set KF_PIPELINES_TOKEN" in \
        _one_error_line(err.split("\n", 1)[1])
    assert all(r["auth"] is None for r in kfp_api.requests) and kfp_api.uploads() == []
