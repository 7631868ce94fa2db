"""k8s/: the kustomizations render, every object validates against Kubernetes 1.30 (strict schema), the objects
the pipeline names exist with the properties it relies on, and nothing breaks when the overlay moves everything to
another namespace (k8s/overlays/namespace-example)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from pipeline import pipeline as dag

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
KUBECTL = shutil.which("kubectl")
VALIDATE = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent)) or shutil.which(
    "kubernetes-validate")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with kustomize) not on PATH: cannot render k8s/")
PLACEHOLDER = re.compile(r"^(REPLACE_ME.*|)$")
IN_CLUSTER_HOSTS = ["mlflow", "mlflow.vigos", "mlflow.vigos.svc", "mlflow.vigos.svc.cluster.local"]
NAMESPACE_EXAMPLE = "overlays/namespace-example"
CLUSTER_SCOPED = {"Namespace", "PriorityClass", "ClusterRole", "ClusterRoleBinding"}
ISTIO_INJECT = "sidecar.istio.io/inject"
# The Role, rule by rule: (apiGroup, resource, resourceNames or None, verbs). Anything more is a finding.
RUNNER_RULES = {
    ("", "secrets", ("vigos-hf-token", "vigos-mlflow-credentials", "vigos-judge"), ("get",)),
    ("", "configmaps", ("vigos-mlflow",), ("get",)),
    ("trainer.kubeflow.org", "trainjobs", None, ("get", "list", "watch", "create", "delete")),
    ("trainer.kubeflow.org", "trainjobs/status", None, ("get",)),
    ("", "pods", None, ("get", "list", "watch")),
    ("", "pods/log", None, ("get",)),
}


def _render(path: Path) -> str:
    result = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module", params=["base", "overlays/a100"])
def rendered(request):
    if KUBECTL is None:
        pytest.skip("kubectl (with kustomize) not on PATH: cannot render k8s/")
    text = _render(K8S / request.param)
    return text, [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="module")
def a100():
    if KUBECTL is None:
        pytest.skip("kubectl (with kustomize) not on PATH: cannot render k8s/")
    return [d for d in yaml.safe_load_all(_render(K8S / "overlays/a100")) if d]


@pytest.fixture(scope="module")
def other_namespace():
    """k8s/overlays/namespace-example rendered: (its namespace, the text, the objects)."""
    if KUBECTL is None:
        pytest.skip("kubectl (with kustomize) not on PATH: cannot render k8s/")
    namespace = yaml.safe_load((K8S / NAMESPACE_EXAMPLE / "kustomization.yaml").read_text())["namespace"]
    text = _render(K8S / NAMESPACE_EXAMPLE)
    return namespace, text, [d for d in yaml.safe_load_all(text) if d]


def _get(docs, kind, name):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def _pod_specs(docs):
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]


def _mlflow_container(docs):
    spec = _get(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]
    return spec, next(c for c in spec["containers"] if c["name"] == "mlflow")


def _expanded(container, namespace: str) -> list[str]:
    """The container's args as the kubelet passes them: `$(VAR)` replaced from its env, a downward-API
    `metadata.namespace` being the pod's namespace."""
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[e["name"]] = namespace
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container["args"]]


def _args(container, namespace: str = "vigos") -> dict[str, str]:
    return dict(a.split("=", 1) if "=" in a else (a, "") for a in _expanded(container, namespace))


def _rules(role) -> set[tuple]:
    return {(group, resource, tuple(r["resourceNames"]) if "resourceNames" in r else None, tuple(r["verbs"]))
            for r in role["rules"] for group in r["apiGroups"] for resource in r["resources"]}


def _validate(path: Path, n_docs: int):
    if VALIDATE is None:
        pytest.skip("kubernetes-validate not installed: `pip install -e '.[dev]'`")
    result = subprocess.run([VALIDATE, "-k", "1.30.0", "--strict", str(path)], capture_output=True, text=True,
                            timeout=60)
    out = (result.stdout + result.stderr).splitlines()
    # it exits 0 on some errors (e.g. an unknown version): judge by what it prints
    problems = [ln for ln in out if not re.match(r"INFO .* passed for resource .* against version 1\.30$", ln)]
    assert result.returncode == 0 and not problems and len(out) == n_docs, "\n".join(out)


def test_every_rendered_object_validates_strictly_against_kubernetes_1_30(rendered, tmp_path):
    text, docs = rendered
    (tmp_path / "rendered.yaml").write_text(text)
    _validate(tmp_path / "rendered.yaml", len(docs))


def test_one_off_jobs_validate():
    for path in sorted((K8S / "jobs").glob("*.yaml")):
        _validate(path, len([d for d in yaml.safe_load_all(path.read_text()) if d]))


def test_the_names_the_pipeline_uses_exist(rendered):
    _, docs = rendered
    assert _get(docs, "Namespace", "vigos")
    for d in docs:
        if d["kind"] not in ("Namespace", "PriorityClass"):
            assert d["metadata"]["namespace"] == "vigos", d["metadata"]["name"]
    assert _get(docs, "ServiceAccount", "vigos-pipeline-runner")
    cache = _get(docs, "PersistentVolumeClaim", dag.CACHE_PVC)
    assert cache["spec"]["accessModes"] == ["ReadWriteMany"]
    # a short name: it resolves to the Service of the reading pod's namespace, which is the ConfigMap's own
    assert _get(docs, "ConfigMap", dag.MLFLOW_CONFIG_MAP)["data"] == {"tracking_uri": "http://mlflow:5000"}
    secrets = {dag.HF_TOKEN_SECRET: {"token"}, dag.MLFLOW_CREDENTIALS_SECRET: {"username", "password"},
               "vigos-judge": {"api_key"}, "mlflow-postgres": {"password"},
               "mlflow-auth": {"admin_username", "admin_password", "flask_secret_key"}}
    for name, keys in secrets.items():
        secret = _get(docs, "Secret", name)
        assert set(secret.get("stringData", {})) | set(secret.get("data", {})) == keys, name
    assert _get(docs, "PriorityClass", "vigos-training")["globalDefault"] is False
    quota = _get(docs, "ResourceQuota", "vigos-quota")["spec"]["hard"]
    assert {"requests.nvidia.com/gpu", "requests.cpu", "requests.memory", "persistentvolumeclaims"} <= set(quota)
    service = _get(docs, "Service", "mlflow")
    assert [p["port"] for p in service["spec"]["ports"]] == [5000]
    assert _get(docs, "Service", "mlflow-postgres")
    assert _get(docs, "StatefulSet", "mlflow-postgres")["spec"]["volumeClaimTemplates"]
    assert _get(docs, "PersistentVolumeClaim", "mlflow-artifacts")


def test_the_runner_role_is_least_privilege_and_may_run_trainjobs(rendered):
    """Reads the pipeline's own Secrets/ConfigMap by name; runs Kubeflow Trainer TrainJobs (create/watch/delete) and
    reads their pods and logs; nothing else (no update/patch/exec, no wildcard, nothing cluster-wide)."""
    _, docs = rendered
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = _get(docs, "Role", "vigos-pipeline-runner")
    assert _rules(role) == RUNNER_RULES
    named = {(res, n) for _, res, names, _ in RUNNER_RULES if names for n in names}
    assert named == {("secrets", dag.HF_TOKEN_SECRET), ("secrets", dag.MLFLOW_CREDENTIALS_SECRET),
                     ("secrets", dag.JUDGE_SECRET), ("configmaps", dag.MLFLOW_CONFIG_MAP)}
    assert not any("*" in r["verbs"] + r["resources"] + r["apiGroups"] for r in role["rules"])
    binding = _get(docs, "RoleBinding", "vigos-pipeline-runner")
    namespace = binding["metadata"]["namespace"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "vigos-pipeline-runner"}
    # rbac.yaml names no subject namespace: kustomize fills in the account's, and RBAC reads an absent one as the
    # binding's own, so an overlay that moves everything elsewhere keeps binding the right account
    [subject] = binding["subjects"]
    assert subject["kind"] == "ServiceAccount" and subject["name"] == dag.SERVICE_ACCOUNT
    assert subject.get("namespace", namespace) == namespace
    assert _get(docs, "ServiceAccount", dag.SERVICE_ACCOUNT)["metadata"]["namespace"] == namespace


def test_no_secret_carries_a_real_value(rendered):
    _, docs = rendered
    for d in docs:
        if d["kind"] == "Secret":
            assert not d.get("data"), d["metadata"]["name"]
            for key, value in d.get("stringData", {}).items():
                assert PLACEHOLDER.match(value), f"{d['metadata']['name']}.{key} is not a placeholder"
            assert d["metadata"]["labels"]["vigos.dev/secret-template"] == "true"


def test_mlflow_server_allows_the_in_cluster_names_and_reads_the_db_password_from_the_secret(rendered):
    _, docs = rendered
    spec, container = _mlflow_container(docs)
    assert container["command"] == ["mlflow", "server"]
    args = _args(container)
    hosts = set(args["--allowed-hosts"].split(","))
    assert {*IN_CLUSTER_HOSTS, *(f"{h}:5000" for h in IN_CLUSTER_HOSTS)} <= hosts
    assert args["--port"] == "5000" and "--workers" in args and "--serve-artifacts" in args
    assert args["--artifacts-destination"] == "/mlflow/artifacts"
    uri = args["--backend-store-uri"]
    assert re.fullmatch(r"postgresql://mlflow@mlflow-postgres:5432/mlflow", uri), uri  # no password in the URI
    env = {e["name"]: e for e in container["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-postgres", "key": "password"}
    db = _get(docs, "StatefulSet", "mlflow-postgres")["spec"]["template"]["spec"]["containers"][0]
    db_env = {e["name"]: e for e in db["env"]}
    assert db_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-postgres", "key": "password"}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    assert spec["enableServiceLinks"] is False  # else MLFLOW_PORT=tcp://... reaches `mlflow server`
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/mlflow/artifacts"]]["persistentVolumeClaim"]["claimName"] == "mlflow-artifacts"


def test_mlflow_server_runs_behind_basic_auth_reachable_from_its_namespace_only(rendered):
    """MLflow's basic-auth app with the admin and the CSRF key from the Secret `mlflow-auth` (never in the pod spec
    or the ConfigMap), and a NetworkPolicy admitting port 5000 from pods of the namespace only."""
    _, docs = rendered
    spec, container = _mlflow_container(docs)
    assert _args(container)["--app-name"] == "basic-auth"
    env = {e["name"]: e for e in container["env"]}
    for name, key in (("MLFLOW_AUTH_ADMIN_USERNAME", "admin_username"),
                      ("MLFLOW_AUTH_ADMIN_PASSWORD", "admin_password"),
                      ("MLFLOW_FLASK_SERVER_SECRET_KEY", "flask_secret_key")):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-auth", "key": key}, name
    config_dir = Path(env["MLFLOW_AUTH_CONFIG_PATH"]["value"]).parent
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = {v["name"]: v for v in spec["volumes"]}[mounts[str(config_dir)]]
    ini = _get(docs, "ConfigMap", volume["configMap"]["name"])["data"]["basic_auth.ini"]
    assert "database_uri = postgresql://mlflow@mlflow-postgres:5432/mlflow" in ini  # PGPASSWORD: no password here
    assert "admin_password" not in ini and "default_permission = READ" in ini
    policy = _get(docs, "NetworkPolicy", "mlflow")["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "mlflow"}
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["ingress"] == [{"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 5000}]}]


def test_every_container_runs_non_root_with_resource_limits(rendered):
    _, docs = rendered
    specs = list(_pod_specs(docs))
    assert {name for name, _ in specs} == {"Deployment/mlflow", "StatefulSet/mlflow-postgres"}
    for name, spec in specs:
        pod_sc = spec.get("securityContext", {})
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = {**pod_sc, **c.get("securityContext", {})}
            assert sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) > 0, f"{name}/{c['name']}"
            assert sc.get("allowPrivilegeEscalation") is False and sc["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), f"{name}/{c['name']}"
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), f"{name}/{c['name']}"
            assert re.search(r":[\w.-]+$|@sha256:", c["image"]) and not c["image"].endswith(":latest"), c["image"]


def test_the_cache_init_job_is_the_only_root_container_and_only_chowns():
    job = yaml.safe_load((K8S / "jobs/cache-init.yaml").read_text())
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "DAC_OVERRIDE", "FOWNER"]}
    assert c["volumeMounts"] == [{"name": "cache", "mountPath": dag.CACHE_MOUNT}]
    assert "chown 1000:1000" in c["command"][-1] and {"cpu", "memory"} <= set(c["resources"]["limits"])


def test_every_container_requests_local_disk_by_default(rendered):
    # KFP 2.17 cannot request ephemeral storage per task: the namespace's LimitRange gives every container one
    limits = _get(rendered[1], "LimitRange", "vigos-defaults")["spec"]["limits"][0]
    assert limits["defaultRequest"]["ephemeral-storage"] == "20Gi"
    assert "ephemeral-storage" not in limits.get("default", {})  # no limit: a burst must not evict training


def test_a100_overlay_sets_the_pool_specifics(a100):
    cache = _get(a100, "PersistentVolumeClaim", dag.CACHE_PVC)["spec"]
    assert cache["storageClassName"] and cache["resources"]["requests"]["storage"] == "2Ti"
    assert _get(a100, "ResourceQuota", "vigos-quota")["spec"]["hard"]["requests.nvidia.com/gpu"] == "8"
    _, container = _mlflow_container(a100)
    assert {e["name"]: e.get("value") for e in container["env"]}["VIGOS_MLFLOW_WORKERS"] == "4"


def _pod_template(docs, kind, name):
    return _get(docs, kind, name)["spec"]["template"]


def test_mlflow_and_postgres_pods_run_without_an_istio_sidecar(rendered):
    """In a Kubeflow profile namespace Istio would inject a sidecar; the profile's AuthorizationPolicy then answers
    403 to the step pods (KFP runs them without a sidecar), and `wait-for-postgres` would run before the proxy is
    up. The pod-template label (Istio's current form, and Kubeflow's own manifests'), kept out of the selectors."""
    _, docs = rendered
    for kind, name in (("Deployment", "mlflow"), ("StatefulSet", "mlflow-postgres")):
        workload = _get(docs, kind, name)
        assert workload["spec"]["template"]["metadata"]["labels"][ISTIO_INJECT] == "false", name
        assert ISTIO_INJECT not in workload["spec"]["selector"]["matchLabels"], name  # selectors are immutable
    service_selectors = [d["spec"]["selector"] for d in docs if d["kind"] == "Service"]
    assert service_selectors and all(ISTIO_INJECT not in sel for sel in service_selectors)


def test_every_object_of_the_namespace_example_validates_strictly(other_namespace, tmp_path):
    _, text, docs = other_namespace
    (tmp_path / "rendered.yaml").write_text(text)
    _validate(tmp_path / "rendered.yaml", len(docs))


def test_the_namespace_example_moves_every_namespaced_object(other_namespace, a100):
    """Same objects as the a100 overlay, minus the Namespace (it exists already and is not ours), each namespaced
    one in the other namespace; the RoleBinding still binds the account of that namespace."""
    namespace, _, docs = other_namespace
    assert namespace != "vigos"
    assert not [d for d in docs if d["kind"] == "Namespace"]
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == {
        (d["kind"], d["metadata"]["name"]) for d in a100 if d["kind"] != "Namespace"}
    for d in docs:
        if d["kind"] not in CLUSTER_SCOPED:
            assert d["metadata"].get("namespace") == namespace, f"{d['kind']}/{d['metadata']['name']}"
    binding = _get(docs, "RoleBinding", "vigos-pipeline-runner")
    assert all(s.get("namespace", namespace) == namespace for s in binding["subjects"])
    assert _rules(_get(docs, "Role", "vigos-pipeline-runner")) == RUNNER_RULES
    for kind, name in (("Deployment", "mlflow"), ("StatefulSet", "mlflow-postgres")):
        assert _pod_template(docs, kind, name)["metadata"]["labels"][ISTIO_INJECT] == "false"


def test_in_cluster_addresses_follow_the_namespace(other_namespace):
    """Every address a pod uses resolves in the namespace the objects landed in: short Service names (resolved in
    the pod's own namespace) or names that carry that namespace; the literal `vigos` namespace appears nowhere."""
    namespace, text, docs = other_namespace
    assert not re.search(r"\.vigos(\.svc|\b(?!-))|namespace: vigos\b", text), "a hard-coded vigos namespace"
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}

    def resolves_here(host: str) -> bool:
        name, _, rest = host.partition(".")
        return name in services and rest in ("", namespace, f"{namespace}.svc", f"{namespace}.svc.cluster.local")

    uri = urllib.parse.urlsplit(_get(docs, "ConfigMap", dag.MLFLOW_CONFIG_MAP)["data"]["tracking_uri"])
    assert resolves_here(uri.hostname) and uri.port == 5000
    spec, container = _mlflow_container(docs)
    args = _args(container, namespace)
    db = urllib.parse.urlsplit(args["--backend-store-uri"])
    assert resolves_here(db.hostname) and db.port == 5432
    [wait] = spec["initContainers"]
    assert resolves_here(re.search(r"--host=(\S+)", wait["command"][-1]).group(1))
    # the server accepts the Host header of the tracking URI and every in-cluster name of its Service
    hosts = set(args["--allowed-hosts"].split(","))
    assert uri.netloc in hosts
    assert {f"mlflow.{namespace}.svc.cluster.local:5000", f"mlflow.{namespace}:5000"} <= hosts
    assert not [h for h in hosts if "vigos" in h]


def test_pipeline_gpu_defaults_match_the_node_pool_readme():
    readme = (K8S / "README.md").read_text()
    [(key, value)] = dag.DEFAULT_GPU_NODE_SELECTOR.items()
    assert f"{key}={value}" in readme
    [toleration] = dag.DEFAULT_GPU_TOLERATIONS
    assert f"{toleration['key']}=present:{toleration['effect']}" in readme
    assert "kubectl apply -k k8s/overlays/a100" in readme and "port-forward svc/mlflow 5000:5000" in readme


def test_readme_covers_namespace_istio_kfp_version_and_retries():
    readme = (K8S / "README.md").read_text()
    for section in ("## Namespace", "## Istio (multi-user Kubeflow)", "## Kubeflow Pipelines version",
                    "## Preemption, retries and the Retry button"):
        assert section in readme
    assert f"k8s/{NAMESPACE_EXAMPLE}" in readme and (K8S / NAMESPACE_EXAMPLE / "kustomization.yaml").is_file()
    assert f'{ISTIO_INJECT}: "false"' in readme and "KF_PIPELINES_NAMESPACE" in readme
    assert "http://mlflow:5000" in readme and "2.16.0" in readme


ADMIN = ("admin", "admin-password-for-tests")
needs_server = pytest.mark.skipif(os.environ.get("VIGOS_SKIP_MLFLOW_SERVER") == "1",
                                  reason="VIGOS_SKIP_MLFLOW_SERVER=1")


@pytest.fixture(scope="module")
def manifest_server(a100, tmp_path_factory, serve):
    """The manifest's MLflow server on this MLflow (the image's version): its exact args (basic-auth app,
    --allowed-hosts, --serve-artifacts) and the auth settings of its ConfigMap, with SQLite in place of PostgreSQL
    and the admin/secret-key env its Secret gives. Yields (base URL, port)."""
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs Flask-WTF (mlflow[auth]): "
                                            "`pip install -e '.[dev]'`")
    tmp_path = tmp_path_factory.mktemp("manifest-mlflow")
    _, container = _mlflow_container(a100)
    args = _expanded(container, "vigos")
    args = [a for a in args if not a.startswith(("--backend-store-uri", "--artifacts-destination", "--port",
                                                  "--host", "--workers"))]
    ini = _get(a100, "ConfigMap", "mlflow-auth")["data"]["basic_auth.ini"]
    ini = re.sub(r"(?m)^database_uri = .*$", f"database_uri = sqlite:///{tmp_path / 'auth.db'}", ini)
    (tmp_path / "basic_auth.ini").write_text(ini)
    env = {e["name"] for e in container["env"]}
    assert {"MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD",
            "MLFLOW_FLASK_SERVER_SECRET_KEY"} <= env
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"),
           "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0], "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key"}
    command = lambda port: [  # noqa: E731
        str(Path(sys.executable).with_name("mlflow")), "server", *args, "--workers=1", "--host=127.0.0.1",
        f"--port={port}", f"--backend-store-uri=sqlite:///{tmp_path / 'db.sqlite'}",
        f"--artifacts-destination={tmp_path / 'artifacts'}"]
    with serve(command, tmp_path / "server.log", timeout_s=120, env=env) as base:
        yield base, base.rsplit(":", 1)[1]


def _status(url: str, host: str | None = None, auth: tuple[str, str] | None = None, data: dict | None = None) -> int:
    import base64
    import json

    headers = {"Host": host} if host else {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    body = None
    if data is not None:
        body, headers["Content-Type"] = json.dumps(data).encode(), "application/json"
    try:
        # generous: the auth app hashes the password (PBKDF2) on every request, slow on a busy test machine
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@needs_server
def test_mlflow_server_with_the_manifest_args_accepts_in_cluster_hosts_and_rejects_others(manifest_server):
    """In-cluster Host headers pass, a foreign one gets 403."""
    base, port = manifest_server
    search = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
    for host in IN_CLUSTER_HOSTS:
        assert _status(search, f"{host}:5000", ADMIN) == 200, host
    assert _status(search, "mlflow.vigos.svc.cluster.local", ADMIN) == 200
    assert _status(search, f"localhost:{port}", ADMIN) == 200  # kubectl port-forward
    assert _status(search, "evil.example.com", ADMIN) == 403


@needs_server
def test_mlflow_server_accepts_writes_only_from_signed_in_users(manifest_server, monkeypatch):
    """Without credentials nothing is read or written (401; /health stays open for the probes). The one-off Job
    creates the pipeline's user (and sets its password when run again), printing no password; the project's own
    tracking code, given that user in MLFLOW_TRACKING_USERNAME/PASSWORD as the pipeline's Secret gives it, logs a
    step run; a wrong password is refused, and another signed-in user may read the pipeline's runs but not write."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient
    from mlflow.tracking import MlflowClient

    from vigos import tracking

    base, _ = manifest_server
    assert _status(f"{base}/health") == 200
    assert _status(f"{base}/api/2.0/mlflow/experiments/create", data={"name": "anonymous"}) == 401
    assert _status(f"{base}/api/2.0/mlflow/experiments/search?max_results=1") == 401

    job = yaml.safe_load((K8S / "jobs/mlflow-pipeline-user.yaml").read_text())
    container = job["spec"]["template"]["spec"]["containers"][0]
    pipeline_user = ("vigos-pipeline", "pipeline-password-for-tests")
    env = {**os.environ, "MLFLOW_TRACKING_URI": base, "MLFLOW_TRACKING_USERNAME": ADMIN[0],
           "MLFLOW_TRACKING_PASSWORD": ADMIN[1], "PIPELINE_USERNAME": pipeline_user[0],
           "PIPELINE_PASSWORD": pipeline_user[1]}
    assert {e["name"] for e in container["env"]} >= set(env) - set(os.environ)
    assert container["command"][0] == "python"  # the image's; here this environment's
    command = [sys.executable, *container["command"][1:]]
    for expected in ("created MLflow user vigos-pipeline", "MLflow user vigos-pipeline exists; password set"):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and expected in result.stdout, result.stderr[-2000:]
        assert ADMIN[1] not in result.stdout + result.stderr and pipeline_user[1] not in result.stdout

    monkeypatch.setenv("MLFLOW_TRACKING_URI", base)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", pipeline_user[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", pipeline_user[1])
    mlflow.set_tracking_uri(base)
    with tracking.step_run("probe", kfp_run_id="auth-1", experiment="vigos-auth", params={"probe": 1}) as run:
        tracking.log_metrics({"ok": 1.0})
    assert MlflowClient().get_run(run.info.run_id).data.params == {"probe": "1"}

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])
    AuthServiceClient(base).create_user("someone", "someone-password")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "someone")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "someone-password")
    assert MlflowClient().get_run(run.info.run_id).data.params == {"probe": "1"}  # default permission: READ
    with pytest.raises(MlflowException, match="PERMISSION_DENIED|Permission denied"):
        MlflowClient().log_param(run.info.run_id, "tampered", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", pipeline_user[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password")
    with pytest.raises(MlflowException, match="401"):
        tracking.parent_run_id("auth-2", "vigos-auth")
