"""Multi-node training through Kubeflow Trainer: the TrainJob manifest against the Trainer's published CRD, the
launcher's create/watch/fail/delete flow against a local double of the Kubernetes API, and two torchrun "nodes"
(the TrainJob's own command under the Trainer's PET_* variables) against one node of two processes."""

from __future__ import annotations

import _thread
import copy
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from vigos.errors import VigosError
from vigos.training.trainjob import (
    NAME_MAX,
    Terminated,
    TrainJobSpec,
    build_trainjob,
    load_api_client,
    node0_selector,
    run_trainjob,
    trainjob_name,
)

CRD = Path(__file__).parents[1] / "data" / "trainer" / "trainer.kubeflow.org_trainjobs.yaml"
RUN_ID = "3f2b6c1e-8d4a-4b7e-9c21-5a6f0e7d8b90"  # a KFP run id (a UUID)


def _trainer_test_module():
    """tests/training/test_trainer.py, for its `prepared` and `peaky_model_dir` fixtures (imported, not copied:
    the test folders are not packages, so a plain import cannot reach it)."""
    spec = importlib.util.spec_from_file_location("_vigos_test_trainer", Path(__file__).with_name("test_trainer.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_trainer_tests = _trainer_test_module()
prepared, peaky_model_dir = _trainer_tests.prepared, _trainer_tests.peaky_model_dir


def make_spec(**kw: Any) -> TrainJobSpec:
    values: dict[str, Any] = dict(
        run_id=RUN_ID, image="registry.example/vigos-cuda@sha256:" + "0" * 64,
        dataset="/mnt/vigos/runs/datasets/9a1c", output=f"/mnt/vigos/runs/{RUN_ID}/train",
        config=f"/mnt/vigos/runs/{RUN_ID}/train/config.yaml",
        env={"MLFLOW_RUN_ID": "0123abcd", "MLFLOW_TRACKING_URI": "http://mlflow.vigos.svc.cluster.local:5000"},
        node_selector={"vigos.dev/gpu-pool": "a100"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    return TrainJobSpec(**(values | kw))


# --- the manifest against the published CRD ---------------------------------------------------------------------

def _strict(schema: Any) -> Any:
    """The CRD's schema with unknown fields rejected: structural CRD schemas leave `additionalProperties` out
    (the API server prunes unknown fields silently), so a misspelled field would pass plain validation."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    doc = yaml.safe_load(CRD.read_text())
    version = next(v for v in doc["spec"]["versions"] if v["name"] == "v1alpha1")
    return version["schema"]["openAPIV3Schema"]


def schema_errors(crd: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(_strict(crd))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


def name_rules(crd: dict[str, Any]) -> tuple[re.Pattern[str], int]:
    """The CRD's own CEL rules on metadata.name (jsonschema does not run CEL): its pattern and length limit."""
    rules = [v["rule"] for v in crd["x-kubernetes-validations"]]
    pattern = next(re.search(r"matches\('(.+)'\)", r).group(1) for r in rules if "matches(" in r)
    size = next(int(re.search(r"<= (\d+)", r).group(1)) for r in rules if "size(" in r)
    return re.compile(pattern), size


@pytest.mark.parametrize("nodes", [1, 4])
def test_manifest_validates_against_the_trainer_crd(crd, nodes):
    manifest = build_trainjob(make_spec(num_nodes=nodes))
    assert schema_errors(crd, manifest) == []
    pattern, size = name_rules(crd)
    assert pattern.fullmatch(manifest["metadata"]["name"]) and len(manifest["metadata"]["name"]) <= size

    trainer = manifest["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (nodes, 8)
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    # torchrun, without --standalone/--nnodes: its settings come from the Trainer's PET_* variables
    assert trainer["command"] == ["python", "-m", "torch.distributed.run"]
    assert trainer["args"][:2] == ["-m", "vigos.training.launch"] and "--standalone" not in trainer["args"]
    env = {e["name"]: e for e in trainer["env"]}
    assert not any(n.startswith("PET_") for n in env)
    assert env["MLFLOW_TRACKING_URI"] == {"name": "MLFLOW_TRACKING_URI",  # a plain value wins over the ConfigMap
                                          "value": "http://mlflow.vigos.svc.cluster.local:5000"}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "vigos-hf-token", "key": "token",
                                                            "optional": True}
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "vigos-mlflow-credentials"

    (patch,) = manifest["spec"]["runtimePatches"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[-\w.]+", patch["manager"])  # the webhook: domain/path
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]
    assert pod["metadata"]["labels"]["vigos.dev/kfp-run-id"] == RUN_ID
    assert pod["spec"]["nodeSelector"] == {"vigos.dev/gpu-pool": "a100"}
    assert pod["spec"]["securityContext"]["runAsUser"] == 1000 and pod["spec"]["securityContext"]["runAsNonRoot"]
    (container,) = pod["spec"]["containers"]
    assert container["name"] == "node" and "env" not in container  # the webhook forbids env for `node` here
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/mnt/vigos", "/dev/shm"}
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}} in pod["spec"]["volumes"]


def test_strict_schema_catches_a_misspelled_field(crd):
    manifest = build_trainjob(make_spec())
    bad = copy.deepcopy(manifest)
    bad["spec"]["trainer"]["numNode"] = 2
    assert any("numNode" in e for e in schema_errors(crd, bad))
    bad = copy.deepcopy(manifest)
    patch = bad["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    patch["template"]["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    assert any("volumeMount" in e for e in schema_errors(crd, bad))
    bad = copy.deepcopy(manifest)
    bad["spec"]["podTemplateOverrides"] = []  # v2.1's API, gone since v2.2
    assert schema_errors(crd, bad)


def test_names_are_dns_safe_and_deterministic(crd):
    pattern, size = name_rules(crd)
    ids = [RUN_ID, "local", "", "Run_ID with spaces/and:colons", "x" * 200, "-leading-and-trailing-"]
    names = [trainjob_name(i) for i in ids]
    for run_id, name in zip(ids, names, strict=True):
        assert pattern.fullmatch(name), (run_id, name)
        assert len(name) <= min(size, NAME_MAX)
        assert len(f"{name}-node-0-999") <= 63  # JobSet's pod hostnames are DNS labels too
        assert trainjob_name(run_id) == name
    assert len(set(names)) == len(names)
    assert trainjob_name(RUN_ID) == f"vigos-train-{RUN_ID}"  # a KFP run id fits as it is
    assert trainjob_name("Abc") != trainjob_name("abc")  # changed ids get a hash of the raw id


def test_what_the_trainer_would_reject_fails_early():
    with pytest.raises(VigosError, match="MPI-based"):
        build_trainjob(make_spec(runtime="deepspeed-distributed"))
    with pytest.raises(VigosError, match="PET_NODE_RANK"):
        build_trainjob(make_spec(env={"PET_NODE_RANK": "0"}))
    with pytest.raises(VigosError, match="at least one node"):
        build_trainjob(make_spec(num_nodes=0))


def test_cpu_only_job_runs_one_process_per_node(crd):
    manifest = build_trainjob(make_spec(gpus_per_node=0, config=None))
    trainer = manifest["spec"]["trainer"]
    assert trainer["numProcPerNode"] == 1 and "nvidia.com/gpu" not in trainer["resourcesPerNode"]["limits"]
    assert "--config" not in trainer["args"] and schema_errors(crd, manifest) == []


def test_cli_writes_the_trainjob_the_step_would_create(crd, tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    out = tmp_path / "trainjob.yaml"
    res = CliRunner().invoke(app, ["trainjob", "--nodes", "4", "--output", str(out), "--run-id", RUN_ID,
                                   "--image", "registry.example/vigos-cuda:1", "--dataset", "/mnt/vigos/runs/d",
                                   "--images-env", str(tmp_path / "none.env")])
    assert res.exit_code == 0, res.output
    manifest = yaml.safe_load(out.read_text())
    assert schema_errors(crd, manifest) == []
    assert manifest["metadata"]["name"] == trainjob_name(RUN_ID) and manifest["spec"]["trainer"]["numNodes"] == 4
    assert f"/mnt/vigos/runs/{RUN_ID}/train" in manifest["spec"]["trainer"]["args"]


def test_without_a_cluster_the_error_says_what_is_needed(monkeypatch, tmp_path):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config either
    with pytest.raises(VigosError) as e:
        load_api_client()
    assert "\n" not in str(e.value) and "in-cluster" in str(e.value) and "KUBECONFIG" in str(e.value)


# --- the launcher against a double of the Kubernetes API --------------------------------------------------------

CREATED = {"type": "Created", "status": "True", "reason": "JobSetCreated", "message": "JobSet created"}
COMPLETE = {"type": "Complete", "status": "True", "reason": "JobSetCompleted", "message": "jobset completed"}
FAILED = {"type": "Failed", "status": "True", "reason": "FailedJobs",
          "message": "jobset failed: job vigos-train-x-node-0 has failed (BackoffLimitExceeded)"}


class FakeKube:
    """Test double for the API server of a cluster with Kubeflow Trainer, which cannot run here: a stdlib
    `http.server` on 127.0.0.1 that serves only what the launcher calls (create/get/delete trainjobs, list pods
    by label, a pod's log). The real `kubernetes.client` code talks to it over HTTP.

    `script`: the TrainJob's status on successive GETs after it was created (the last one repeats; None: answer
    503). `hooks`:
    {GET number after creation: callable run after that response is sent} (to send SIGTERM, Ctrl-C).
    `delete_lag`: GETs that still see a deleted job (foreground deletion waiting for its pods)."""

    def __init__(self, script: list[dict[str, Any] | None], log_text: str = "", installed: bool = True) -> None:
        self.script, self.log_text, self.installed = script, log_text, installed
        self.jobs: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, dict[str, list[str]]]] = []
        self.hooks: dict[int, Any] = {}
        self.delete_lag = 0
        self.deleting: dict[str, int] = {}
        self.gets = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.handle(self, "GET")

            def do_POST(self) -> None:
                fake.handle(self, "POST")

            def do_DELETE(self) -> None:
                fake.handle(self, "DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeKube:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def api(self):
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        return client.ApiClient(cfg)

    def pod(self, name: str) -> dict[str, Any]:
        return {"metadata": {"name": f"{name}-node-0-0-x7k2p", "creationTimestamp": "2026-12-01T10:00:00Z"},
                "status": {"phase": "Running"}}

    def handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(req.path)
        query = parse_qs(url.query)
        self.calls.append((method, url.path, query))
        body = json.loads(req.rfile.read(int(req.headers.get("Content-Length") or 0)) or b"null")
        after = None
        if m := re.fullmatch(r"/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/trainjobs(?:/([^/]+))?",
                             url.path):
            status, out, after = self.trainjobs(method, m.group(2), body)
        elif m := re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods", url.path):
            selector = query["labelSelector"][0]
            items = [self.pod(n) for n in self.jobs if selector == node0_selector(n)]
            status, out = 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}
        elif re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)/log", url.path):
            data = self.log_text.encode()
            req.send_response(200)
            req.send_header("Content-Type", "text/plain")
            req.send_header("Content-Length", str(len(data)))
            req.end_headers()
            req.wfile.write(data)
            return
        else:
            status, out = 404, {"kind": "Status", "status": "Failure", "message": "not found", "code": 404}
        data = json.dumps(out).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)
        req.wfile.flush()
        if after:
            after()

    def trainjobs(self, method: str, name: str | None, body: Any) -> tuple[int, dict[str, Any], Any]:
        missing = {"kind": "Status", "status": "Failure", "code": 404, "reason": "NotFound",
                   "message": f'trainjobs.trainer.kubeflow.org "{name}" not found'}
        if not self.installed:
            return 404, {"kind": "Status", "status": "Failure", "code": 404,
                         "message": "the server could not find the requested resource"}, None
        if method == "POST":
            name = body["metadata"]["name"]
            if name in self.jobs:
                return 409, {"kind": "Status", "code": 409, "message": "already exists"}, None
            self.jobs[name], self.gets = body, 0
            return 201, body, None
        if name not in self.jobs:
            return 404, missing, None
        if method == "DELETE":
            self.deleting[name] = self.delete_lag
            if not self.delete_lag:
                del self.jobs[name]
            return 200, {"kind": "Status", "status": "Success"}, None
        if name in self.deleting:  # GET of a job being deleted
            self.deleting[name] -= 1
            if self.deleting[name] < 0:
                del self.jobs[name], self.deleting[name]
                return 404, missing, None
            return 200, {**self.jobs[name], "metadata": {**self.jobs[name]["metadata"],
                                                         "deletionTimestamp": "2026-12-01T10:00:00Z"}}, None
        status = self.script[min(self.gets, len(self.script) - 1)]
        self.gets += 1
        if status is None:  # the API server out for a moment
            return 503, {"kind": "Status", "code": 503, "message": "etcdserver: leader changed"}, None
        return 200, {**self.jobs[name], "status": status}, self.hooks.get(self.gets)

    def methods(self) -> list[str]:
        return [f"{m} {'trainjob' if 'trainjobs' in p else 'log' if p.endswith('/log') else 'pods'}"
                for m, p, _ in self.calls]


def run(fake: FakeKube, spec: TrainJobSpec | None = None, **kw: Any) -> list[str]:
    lines: list[str] = []
    run_trainjob(spec or make_spec(), api=fake.api(), poll_s=0.01, log=lines.append, **kw)
    return lines


def test_success_streams_node0_log_and_deletes_the_job():
    with FakeKube([{}, {"conditions": [CREATED]}, {"conditions": [CREATED, COMPLETE]}],
                  log_text="step 1 loss 0.5\nstep 2 loss 0.4\nadapter: /mnt/vigos/x") as fake:
        lines = run(fake)
    name = trainjob_name(RUN_ID)
    assert lines.index("step 1 loss 0.5") < lines.index("step 2 loss 0.4") < lines.index("adapter: /mnt/vigos/x")
    assert fake.jobs == {} and fake.methods()[0] == "GET trainjob" and fake.methods()[1] == "POST trainjob"
    assert fake.methods()[-1] == "DELETE trainjob" and "GET log" in fake.methods()
    (pods_query,) = {q["labelSelector"][0] for m, p, q in fake.calls if p.endswith("/pods")}
    assert pods_query == node0_selector(name)
    (delete,) = [q for m, p, q in fake.calls if m == "DELETE"]
    assert delete["propagationPolicy"] == ["Foreground"]
    assert any("Complete=True" in line for line in lines)


def test_failure_raises_the_conditions_reason_and_deletes_the_job():
    with FakeKube([{"conditions": [CREATED]}, {"conditions": [CREATED, FAILED]}], log_text="CUDA OOM") as fake:
        with pytest.raises(VigosError) as e:
            run(fake)
    assert "FailedJobs" in str(e.value) and "BackoffLimitExceeded" in str(e.value)
    assert fake.jobs == {} and fake.methods()[-1] == "DELETE trainjob"


def test_a_moment_without_api_server_does_not_fail_the_run():
    with FakeKube([{"conditions": [CREATED]}, None, None, {"conditions": [CREATED, COMPLETE]}]) as fake:
        lines = run(fake)
    assert sum("retrying" in line for line in lines) == 2 and fake.methods()[-1] == "DELETE trainjob"


def test_leftover_job_of_a_previous_attempt_is_replaced():
    name = trainjob_name(RUN_ID)
    with FakeKube([{"conditions": [CREATED, COMPLETE]}]) as fake:
        fake.jobs[name] = {"metadata": {"name": name}, "spec": {"old": True}}
        fake.delete_lag = 2  # two GETs still see it once deleted: the launcher must wait for it to go
        lines = run(fake)
    calls = fake.methods()
    assert calls[:6] == ["GET trainjob", "DELETE trainjob", "GET trainjob", "GET trainjob", "GET trainjob",
                         "POST trainjob"]
    assert any("previous attempt" in line for line in lines)
    assert "trainer" in fake.jobs[name]["spec"]  # the new job (still being deleted at the end)
    assert calls[-1] == "DELETE trainjob"


def test_sigterm_while_waiting_deletes_the_job_and_restores_the_handler():
    called: list[int] = []

    def previous(signum, frame):
        called.append(signum)

    old = signal.signal(signal.SIGTERM, previous)
    try:
        with FakeKube([{"conditions": [CREATED]}]) as fake:
            fake.hooks[2] = lambda: os.kill(os.getpid(), signal.SIGTERM)  # KFP deletes the step's pod
            with pytest.raises(Terminated):
                run(fake)
        assert signal.getsignal(signal.SIGTERM) is previous and called == []
    finally:
        signal.signal(signal.SIGTERM, old)
    assert fake.jobs == {} and fake.methods()[-1] == "DELETE trainjob"


def test_ctrl_c_while_waiting_deletes_the_job():
    with FakeKube([{"conditions": [CREATED]}]) as fake:
        fake.hooks[2] = _thread.interrupt_main
        with pytest.raises(KeyboardInterrupt):
            run(fake)
    assert fake.jobs == {} and fake.methods()[-1] == "DELETE trainjob"


def test_timeout_raises_and_deletes_the_job():
    with FakeKube([{"conditions": [CREATED]}]) as fake:
        with pytest.raises(VigosError, match="did not finish in time"):
            run(fake, timeout_s=0.2)
    assert fake.jobs == {} and fake.methods()[-1] == "DELETE trainjob"


def test_cluster_without_trainer_is_one_clear_error():
    with FakeKube([{}], installed=False) as fake:
        with pytest.raises(VigosError, match=r"HTTP 404 .*Kubeflow Trainer \(>= v2.2\) installed"):
            run(fake)


# --- two nodes == one node of two processes ---------------------------------------------------------------------

@pytest.mark.slow
def test_two_nodes_match_one_node_of_two_processes(peaky_model_dir, prepared, tmp_path, tracking_env):
    """The TrainJob's own command, under the PET_* variables the Trainer sets on each of 2 nodes (1 process
    each, gloo, static rendezvous on 127.0.0.1, one shared output folder like the PVC) == the single-pod step's
    `torchrun --standalone --nproc_per_node 2`: same losses, same adapter."""
    from safetensors.torch import load_file

    from vigos.localserver import free_port

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(peaky_model_dir)},
        "train": {"max_steps": 2, "global_batch_size": 2, "per_device_train_batch_size": 1, "kl_token_clip": 10.0},
        "lora": {"dropout": 0.0},  # dropout masks come from each rank's RNG stream
    }))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # `python` = this venv's

    def trainer_command(out: Path) -> list[str]:
        spec = make_spec(dataset=str(prepared), output=str(out), preset="tiny", config=str(config),
                         gpus_per_node=0, num_nodes=2)
        trainer = build_trainjob(spec)["spec"]["trainer"]
        return trainer["command"] + trainer["args"]

    def start(cmd: list[str], extra_env: dict[str, str]) -> subprocess.Popen:
        return subprocess.Popen(cmd, env=env | extra_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)  # a group: a failed node takes its workers

    def check(procs: list[subprocess.Popen]) -> None:
        try:
            for p in procs:
                out, _ = p.communicate(timeout=600)
                assert p.returncode == 0, out[-4000:]
        finally:
            for p in procs:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    one = tmp_path / "one-node"  # the single-pod train step's command (vigos/steps.py)
    check([start([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                  *trainer_command(one)[3:]], {})])

    two = tmp_path / "two-nodes"
    pet = {"PET_NNODES": "2", "PET_NPROC_PER_NODE": "1", "PET_MASTER_ADDR": "127.0.0.1",
           "PET_MASTER_PORT": str(free_port())}
    check([start(trainer_command(two), pet | {"PET_NODE_RANK": str(rank)}) for rank in (0, 1)])

    a = json.loads((one / "trainer_state.json").read_text())["history"]
    b = json.loads((two / "trainer_state.json").read_text())["history"]
    assert len(a) == len(b) == 2
    for x, y in zip(a, b, strict=True):
        assert x["loss"] > 1e-3
        assert x["loss"] == pytest.approx(y["loss"], rel=0, abs=1e-6)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=0, abs=1e-6)
    wa = load_file(one / "adapter" / "adapter_model.safetensors")
    wb = load_file(two / "adapter" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        assert (wa[k] - wb[k]).abs().max().item() <= 1e-6, k
