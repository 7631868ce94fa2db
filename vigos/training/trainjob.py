"""Training on more than one node: a Kubeflow Trainer v2 `TrainJob` (API `trainer.kubeflow.org/v1alpha1`).

The train step's pod stays the driver: it creates one TrainJob, streams node 0's log, and deletes the job when it
ends. The Trainer's `torch-distributed` runtime turns the TrainJob into a JobSet of `num_nodes` pods and gives each
node's `node` container the torchrun settings as environment variables (Trainer source, plugins/torch/torch.go):

    PET_NNODES          num_nodes
    PET_NPROC_PER_NODE  spec.trainer.numProcPerNode (our GPUs per node)
    PET_NODE_RANK       the pod's Job completion index (0 .. num_nodes-1)
    PET_MASTER_ADDR     <job name>-node-0-0.<job name> (node 0's pod, through the JobSet's headless Service)
    PET_MASTER_PORT     29500

torchrun reads every `PET_<OPTION>` as the default of its `--<option>`, so the trainer command is plain
`python -m torch.distributed.run -m vigos.training.launch ...` without `--standalone` or `--nnodes`: torchrun then
starts numProcPerNode workers per node, each with RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT set,
which is what `vigos.training.distributed.init_distributed` reads. (Plain `python -m vigos.training.launch` would
see no WORLD_SIZE and train one independent copy per node.)

Written against the CRD of Trainer v2.3.0 (tests/data/trainer/); the fields used here exist from v2.2.0 on, where
`runtimePatches` replaced v2.1's `podTemplateOverrides` (and v2.0's `podSpecOverrides`).
"""

from __future__ import annotations

import hashlib
import re
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from vigos.errors import VigosError

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
API_VERSION = f"{GROUP}/{VERSION}"
TORCH_RUNTIME = "torch-distributed"
# MPI runtimes: their worker pods run sshd from the runtime's own image (spec.trainer.image reaches only the
# launcher pod, and a runtime patch cannot change an image) and get their ranks from mpirun, not torchrun.
MPI_RUNTIMES = ("deepspeed-distributed",)
NODE = "node"
"""The runtime's replicated job and container of the training nodes (Trainer constant `Node`)."""
MANAGER = "vigos.dev/train-step"
"""Owner of our entry in spec.runtimePatches (a list keyed by manager: Kueue and webhooks add their own)."""
NAME_PREFIX = "vigos-train"
NAME_MAX = 52
"""The CRD allows 63, but JobSet names the pods' hostnames `<name>-node-0-<index>` and requires each to be a
DNS-1035 label (<= 63): 52 leaves room for up to 999 nodes."""
RUN_ID_LABEL = "vigos.dev/kfp-run-id"
ISTIO_INJECT = "sidecar.istio.io/inject"
TERMINAL = ("Complete", "Failed")
GONE_TIMEOUT_S = 600.0
"""How long to wait for a previous attempt's TrainJob (and, foreground deletion, its pods) to go away."""
REQUEST_TIMEOUT_S = 60
API_OUTAGE_S = 900.0
"""How long the API server may fail to answer (a control-plane upgrade, a network blip) before the wait gives up:
a days-long training run must not fail on one lost GET."""


@dataclass(frozen=True)
class EnvRef:
    """An env var the kubelet fills from a Secret or ConfigMap key (the launcher itself reads neither)."""

    name: str
    kind: Literal["secret", "configMap"]
    source: str
    key: str
    optional: bool = False

    def manifest(self) -> dict[str, Any]:
        ref = f"{self.kind}KeyRef"
        return {"name": self.name, "valueFrom": {ref: {"name": self.source, "key": self.key,
                                                      "optional": self.optional}}}


# The same Secrets/ConfigMap as the pipeline's steps (pipeline/pipeline.py, k8s/base/secrets.yaml, config.yaml).
DEFAULT_ENV_REFS: tuple[EnvRef, ...] = (
    EnvRef("HF_TOKEN", "secret", "vigos-hf-token", "token", optional=True),
    EnvRef("MLFLOW_TRACKING_URI", "configMap", "vigos-mlflow", "tracking_uri"),
    EnvRef("MLFLOW_TRACKING_USERNAME", "secret", "vigos-mlflow-credentials", "username", optional=True),
    EnvRef("MLFLOW_TRACKING_PASSWORD", "secret", "vigos-mlflow-credentials", "password", optional=True),
)
RESERVED_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
"""Set by the Trainer; its webhook rejects a TrainJob that sets them."""


@dataclass(frozen=True)
class TrainJobSpec:
    """What one multi-node training needs; `build_trainjob` turns it into the manifest."""

    run_id: str
    """KFP run id: names the job (a retried step finds its own) and labels its pods."""
    image: str
    dataset: str
    """Prepared dataset folder on the shared volume (every node reads it)."""
    output: str
    """Work folder on the shared volume: checkpoints/, adapter/, trainer_state.json (every rank writes there)."""
    preset: str = "paper-7b"
    config: str | None = None
    """YAML of config overrides on the shared volume (the step writes `<output>/config.yaml`)."""
    namespace: str = "vigos"
    runtime: str = TORCH_RUNTIME
    num_nodes: int = 1
    gpus_per_node: int = 8
    cpu: str = "32"
    memory: str = "400G"
    memory_limit: str = "900G"
    env: Mapping[str, str] = field(default_factory=dict)
    """Plain values, e.g. MLFLOW_RUN_ID of the step's nested run; a name here wins over `env_refs`."""
    env_refs: Sequence[EnvRef] = DEFAULT_ENV_REFS
    pvc: str = "vigos-cache"
    mount_path: str = "/mnt/vigos"
    shm_size: str = "64Gi"
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: Sequence[Mapping[str, Any]] = ()
    """Kubernetes toleration objects, as the pipeline's `gpu_tolerations` parameter."""
    uid: int = 1000
    """The images' user (docker/*.Dockerfile); the shared volume's folders are owned by it."""
    service_account: str | None = None
    deadline_s: int | None = None
    """spec.activeDeadlineSeconds: the cluster fails the job past it, even if this driver is gone."""

    @property
    def name(self) -> str:
        return trainjob_name(self.run_id)


def trainjob_name(run_id: str) -> str:
    """`vigos-train-<run id>` as an RFC 1035 label: lower case, [a-z0-9-], <= NAME_MAX. The same run id always
    gives the same name; a hash of the raw id is appended when the id had to be changed or cut, so two runs
    cannot collide on one name."""
    slug = re.sub(r"[^a-z0-9]+", "-", run_id.lower()).strip("-")
    name = f"{NAME_PREFIX}-{slug}" if slug else NAME_PREFIX
    if slug != run_id or len(name) > NAME_MAX:
        digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]
        name = f"{name[:NAME_MAX - len(digest) - 1].rstrip('-')}-{digest}"
    return name


def label_value(value: str) -> str:
    """A Kubernetes label value: <= 63 of [A-Za-z0-9-_.], alphanumeric at both ends."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[:63].strip("-_.")


def launch_command(spec: TrainJobSpec) -> tuple[list[str], list[str]]:
    """(command, args) of the `node` container: torchrun (its settings come from the PET_* variables) running
    the same `vigos.training.launch` invocation as the single-pod train step."""
    if spec.runtime in MPI_RUNTIMES:
        raise VigosError(
            f"runtime {spec.runtime!r} is MPI-based: its worker pods run sshd from the runtime's own image "
            "(spec.trainer.image only reaches the launcher) and take their ranks from mpirun; ViGOS's DeepSpeed "
            f"ZeRO-2 runs under torchrun, use runtime {TORCH_RUNTIME!r}")
    args = ["-m", "vigos.training.launch", "--dataset", spec.dataset, "--output", spec.output,
            "--preset", spec.preset]
    if spec.config:
        args += ["--config", spec.config]
    return ["python", "-m", "torch.distributed.run"], args


def build_trainjob(spec: TrainJobSpec) -> dict[str, Any]:
    """The TrainJob manifest (a plain dict, ready for the API or YAML)."""
    if spec.num_nodes < 1:
        raise VigosError(f"a TrainJob needs at least one node; got num_nodes={spec.num_nodes}")
    if spec.gpus_per_node < 0:
        raise VigosError(f"gpus_per_node must be >= 0; got {spec.gpus_per_node}")
    reserved = sorted(set(spec.env) & set(RESERVED_ENV))
    if reserved:
        raise VigosError(f"env {reserved} is set by Kubeflow Trainer on every node; remove it from the spec")
    command, args = launch_command(spec)
    env = [{"name": k, "value": str(v)} for k, v in spec.env.items()]
    env += [ref.manifest() for ref in spec.env_refs if ref.name not in spec.env]
    # GPUs are an extended resource: the scheduler needs them as a limit (requests default to it). Memory gets a
    # limit; CPU none, so data loading may use an idle node's cores (like the pipeline's train step).
    requests: dict[str, str] = {"cpu": spec.cpu, "memory": spec.memory}
    limits: dict[str, str] = {"memory": spec.memory_limit}
    if spec.gpus_per_node:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(spec.gpus_per_node)
    labels = {"app.kubernetes.io/part-of": "vigos", "app.kubernetes.io/component": "train",
              RUN_ID_LABEL: label_value(spec.run_id)}
    pod_spec: dict[str, Any] = {
        # the pipeline's identity for its pods (k8s/base: pod-security `restricted` asks for the rest)
        "securityContext": {"runAsUser": spec.uid, "runAsGroup": spec.uid, "runAsNonRoot": True,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": [
            {"name": "vigos-cache", "persistentVolumeClaim": {"claimName": spec.pvc}},
            # NCCL and the data loader need more shared memory than the container runtime's 64 MiB default
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}},
        ],
        # env of the `node` container goes through spec.trainer.env: the webhook rejects it in a patch
        "containers": [{
            "name": NODE,
            "volumeMounts": [{"name": "vigos-cache", "mountPath": spec.mount_path},
                             {"name": "dshm", "mountPath": "/dev/shm"}],
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        }],
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.service_account:
        pod_spec["serviceAccountName"] = spec.service_account
    trainjob: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "TrainJob",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": dict(labels),
                     "annotations": {RUN_ID_LABEL: spec.run_id}},  # the label value may be cut; this is not
        "spec": {
            "runtimeRef": {"apiGroup": GROUP, "kind": "ClusterTrainingRuntime", "name": spec.runtime},
            "trainer": {
                "image": spec.image,
                "numNodes": spec.num_nodes,
                "numProcPerNode": max(spec.gpus_per_node, 1),  # one CPU process without GPUs, not one per core
                "command": command,
                "args": args,
                "env": env,
                "resourcesPerNode": {"requests": requests, "limits": limits},
            },
            # TrainJob labels do not reach the JobSet or the pods: patch them in, so `-l vigos.dev/kfp-run-id=`
            # finds everything a run started.
            "runtimePatches": [{
                "manager": MANAGER,
                "trainingRuntimeSpec": {"template": {
                    "metadata": {"labels": dict(labels)},  # copies: no YAML anchors when it is dumped
                    "spec": {"replicatedJobs": [{
                        "name": NODE,
                        # no Istio sidecar (as KFP's own step pods): in a multi-user profile namespace an
                        # injected proxy would keep the pods from finishing and block NCCL's ports
                        "template": {"spec": {"template": {"metadata": {"labels": {**labels, ISTIO_INJECT: "false"}},
                                                           "spec": pod_spec}}},
                    }]},
                }},
            }],
        },
    }
    if spec.deadline_s:
        trainjob["spec"]["activeDeadlineSeconds"] = int(spec.deadline_s)
    return trainjob


def node0_selector(name: str) -> str:
    """Label selector of node 0's pod: JobSet's labels plus the Job controller's completion index (each node is
    one index of the `node` Job, and index 0 is the master: PET_MASTER_ADDR points at it)."""
    return (f"jobset.sigs.k8s.io/jobset-name={name},jobset.sigs.k8s.io/replicatedjob-name={NODE},"
            "batch.kubernetes.io/job-completion-index=0")


def load_api_client() -> ApiClient:
    """The pod's service account when run in a cluster, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError):
            raise VigosError("no Kubernetes cluster to create the TrainJob in: run in a pod with a service account "
                             "(in-cluster config) or set KUBECONFIG to a kubeconfig file") from None
    return client.ApiClient()


class Terminated(BaseException):
    """SIGTERM while a TrainJob ran: KFP cancels a run by deleting the step's pod. A BaseException, so no
    `except Exception` on the way up swallows it."""


def run_trainjob(spec: TrainJobSpec, *, api: ApiClient | None = None, poll_s: float = 10.0,
                 log: Callable[[str], None] = print, timeout_s: float | None = None) -> None:
    """Create the TrainJob, stream node 0's log through `log`, and return when it completes.

    Raises VigosError when it fails (with the reason and message of its Failed condition) or runs past
    `timeout_s`. The TrainJob is deleted whenever this returns or raises, SIGTERM and Ctrl-C included, so a
    cancelled or failed step never leaves GPUs held by an orphan job.
    """
    from kubernetes import client

    api = api or load_api_client()
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    manifest = build_trainjob(spec)
    name, ns = spec.name, spec.namespace
    in_main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    previous = signal.getsignal(signal.SIGTERM) if in_main else None
    if previous is None:  # a handler installed from C cannot be put back; the default is the closest
        previous = signal.SIG_DFL

    def on_sigterm(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: a second must not cut the cleanup short
        raise Terminated(f"SIGTERM while TrainJob {name} ran")

    if in_main:
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        # A retried step must not attach to its previous attempt's job: that one may be half failed (a node lost,
        # a JobSet restart under way) or finished with an older config. Replace it with a fresh one.
        if _get(custom, ns, name) is not None:
            log(f"[vigos] TrainJob {name} is left from a previous attempt; deleting it first")
            _delete(custom, ns, name)
            _wait_gone(custom, ns, name, poll_s)
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, manifest,
                                                   _request_timeout=REQUEST_TIMEOUT_S)
        except client.ApiException as e:
            raise VigosError(f"could not create TrainJob {name} in namespace {ns}: {_why(e)}") from None
        log(f"[vigos] TrainJob {name}: {spec.num_nodes} node(s) x {max(spec.gpus_per_node, 1)} process(es), "
            f"runtime {spec.runtime}")
        _wait(custom, core, spec, poll_s, log, None if timeout_s is None else time.monotonic() + timeout_s)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if _delete(custom, ns, name):
                log(f"[vigos] TrainJob {name} deleted")
        except Exception as e:  # must not hide the error that brought us here
            log(f"[vigos] warning: could not delete TrainJob {name}: {e}; delete it by hand")
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, previous)


def _why(e: Exception) -> str:
    """One line from an ApiException: what the API server (or the Trainer's webhook) said."""
    import json

    from kubernetes.client import ApiException

    if not isinstance(e, ApiException):
        return str(e)
    try:
        message = json.loads(e.body or "{}").get("message", "")
    except ValueError:
        message = ""
    hint = {404: "is Kubeflow Trainer (>= v2.2) installed? (the trainjobs API is not served)",
            403: "the step's service account needs create/get/delete on trainjobs.trainer.kubeflow.org "
                 "and list pods, get pods/log (k8s/README.md)"}.get(e.status or 0, "")
    return "; ".join(x for x in (f"HTTP {e.status} {message or e.reason}", hint) if x)


def _get(custom: CustomObjectsApi, ns: str, name: str) -> dict[str, Any] | None:
    """The TrainJob, or None when there is none. A refusal (401/403) is a VigosError; other errors propagate."""
    from kubernetes.client import ApiException

    try:
        return custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name,
                                                   _request_timeout=REQUEST_TIMEOUT_S)
    except ApiException as e:
        if e.status == 404:
            return None
        if e.status in (401, 403):
            raise VigosError(f"may not read TrainJob {name}: {_why(e)}") from None
        raise


def _delete(custom: CustomObjectsApi, ns: str, name: str) -> bool:
    """Foreground deletion: the TrainJob is gone only once its JobSet and pods are, so a new job of the same
    name never meets the old one's pods. False when there was none."""
    from kubernetes.client import ApiException

    try:
        custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, propagation_policy="Foreground",
                                               _request_timeout=REQUEST_TIMEOUT_S)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


def _wait_gone(custom: CustomObjectsApi, ns: str, name: str, poll_s: float) -> None:
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while _get(custom, ns, name) is not None:
        if time.monotonic() > deadline:
            raise VigosError(f"TrainJob {name} of a previous attempt is still being deleted after "
                             f"{GONE_TIMEOUT_S:g} s; check its pods' finalizers (kubectl -n {ns} get pods "
                             f"-l jobset.sigs.k8s.io/jobset-name={name})")
        time.sleep(poll_s)


def _finished(job: dict[str, Any]) -> dict[str, Any] | None:
    """The True Complete or Failed condition, if any."""
    for cond in job.get("status", {}).get("conditions", []):
        if cond.get("type") in TERMINAL and cond.get("status") == "True":
            return cond
    return None


def _wait(custom: CustomObjectsApi, core: CoreV1Api, spec: TrainJobSpec, poll_s: float,
          log: Callable[[str], None], deadline: float | None) -> None:
    name, ns = spec.name, spec.namespace
    logs = _NodeZeroLog(core, ns, name, log)
    seen: set[tuple[str, str, str]] = set()
    failing_since: float | None = None
    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise VigosError(f"TrainJob {name} did not finish in time; it is deleted (the checkpoints stay on "
                             "the shared volume: a retry resumes from them)")
        try:
            job = _get(custom, ns, name)
            failing_since = None
        except VigosError:
            raise
        except Exception as e:  # the API server restarting or out of reach: keep waiting a while
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since > API_OUTAGE_S:
                raise VigosError(f"the Kubernetes API did not answer for {API_OUTAGE_S:g} s while TrainJob "
                                 f"{name} ran: {_why(e)}") from None
            log(f"[vigos] warning: cannot read TrainJob {name} ({_why(e)}); retrying")
            time.sleep(poll_s)
            continue
        if job is None:
            raise VigosError(f"TrainJob {name} disappeared while it ran (deleted by someone else?)")
        for cond in job.get("status", {}).get("conditions", []):  # say each state change once
            key = (cond.get("type", ""), cond.get("status", ""), cond.get("reason", ""))
            if key not in seen:
                seen.add(key)
                log(f"[vigos] TrainJob {name}: {key[0]}={key[1]} {key[2]} {cond.get('message', '')}".rstrip())
        logs.poll()
        done = _finished(job)
        if done is not None:
            logs.drain(timeout_s=30.0)  # the pod has ended: let its last lines arrive before the job is deleted
            if done["type"] == "Failed":
                raise VigosError(f"TrainJob {name} failed: {done.get('reason', '?')}: "
                                 f"{done.get('message', '(no message)')} (node 0's log is above)")
            return
        time.sleep(poll_s)


class _NodeZeroLog:
    """Follows node 0's log in a daemon thread, one pod at a time: a JobSet restart makes a new pod, which is
    followed from its start. Pending pods are skipped (the API has no log for them yet)."""

    def __init__(self, core: CoreV1Api, ns: str, name: str, log: Callable[[str], None]) -> None:
        self.core, self.ns, self.selector, self.log = core, ns, node0_selector(name), log
        self.followed: set[str] = set()
        self.thread: threading.Thread | None = None

    def poll(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            return
        try:
            pods = self.core.list_namespaced_pod(self.ns, label_selector=self.selector,
                                                 _request_timeout=REQUEST_TIMEOUT_S).items
        except Exception as e:  # logs are a convenience; the job's status decides
            self.log(f"[vigos] warning: cannot list node 0's pod: {e}")
            return
        for pod in sorted(pods, key=lambda p: (p.metadata.creation_timestamp is not None,
                                               p.metadata.creation_timestamp, p.metadata.name)):
            name = pod.metadata.name
            if name not in self.followed and pod.status and pod.status.phase in ("Running", "Succeeded", "Failed"):
                self.followed.add(name)
                self.thread = threading.Thread(target=self._follow, args=(name,), daemon=True)
                self.thread.start()
                return

    def _follow(self, pod: str) -> None:
        self.log(f"[vigos] log of {pod} (node 0):")
        try:
            # no read timeout: a long quiet stretch (model download, a slow step) is not an error
            resp = self.core.read_namespaced_pod_log(pod, self.ns, container=NODE, follow=True,
                                                     _preload_content=False, _request_timeout=(30, None))
            rest = b""
            for chunk in resp.stream(64 << 10):
                *lines, rest = (rest + chunk).split(b"\n")
                for line in lines:
                    self.log(line.decode(errors="replace"))
            if rest:
                self.log(rest.decode(errors="replace"))
            resp.release_conn()
        except Exception as e:  # the job's status decides, not the log stream
            self.log(f"[vigos] log stream of {pod} ended: {e}")

    def drain(self, timeout_s: float) -> None:
        self.poll()  # a pod that ran and ended between two polls
        if self.thread is not None:
            self.thread.join(timeout_s)
