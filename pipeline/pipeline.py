"""The ViGOS DAG: data prep -> train -> merge -> evaluate (this model and its base) -> report, registry, Hub.

Every knob is a pipeline parameter with a default and a description, so a rerun from the Kubeflow UI needs no
code. Empty strings and -1 mean "the preset's value": the presets in `vigos/config.py` are the one home of the
defaults, and the pipeline does not copy them.

Large data (prepared dataset, checkpoints, adapter, merged model, evaluation responses, Hub staging) stays on the
shared volume under `volume_root`; the KFP artifacts between steps carry manifests (`vigos.volume`), so a run moves
kilobytes, not the 15 GB model, through KFP's object store.

Training runs in the step's pod on one node (`train_nodes` = 1), or as a Kubeflow Trainer TrainJob on several,
which a small CPU pod creates and follows (`dsl.If` on `train_nodes`; the adapter comes out of either branch through
`dsl.OneOf`). KFP's local runner cannot select an artifact through `dsl.OneOf`, so the demo compiles
`build_pipeline(multi_node=False)`: the same DAG without the several-nodes branch (no cluster there anyway).

The base model is evaluated once the merge is done by default, so it never competes with training for the GPU
quota; `build_pipeline(base_eval_alongside=True)` (`python -m pipeline compile|submit --base-eval-alongside`) starts
it beside training, for a quota with room for both (a compile-time choice for the same reason).
"""

from kfp import dsl, kubernetes

from components.evaluate import eval_report, evaluate_base, evaluate_model
from components.finalize_run import finalize_run
from components.images import GPU_IMAGE
from components.merge import merge
from components.prepare_data import prepare_data, record_data_stats
from components.publish import publish_hub, register
from components.train import train, train_on_nodes

PIPELINE_NAME = "vigos"
# Names of the cluster objects the steps use (k8s/base defines them; k8s/README.md says how to fill the secrets).
HF_TOKEN_SECRET = "vigos-hf-token"
"""Kubernetes Secret (key `token`) read as HF_TOKEN by steps that download from or upload to the Hub."""
MLFLOW_CONFIG_MAP = "vigos-mlflow"
"""ConfigMap whose key `tracking_uri` becomes MLFLOW_TRACKING_URI in every step."""
MLFLOW_CREDENTIALS_SECRET = "vigos-mlflow-credentials"
JUDGE_SECRET = "vigos-judge"
"""Secret (key `api_key`) for the optional LLM judge, read as the env var named by `eval.judge_api_key_env`."""
SERVICE_ACCOUNT = "vigos-pipeline-runner"
"""The service account runs are submitted with (k8s/base/rbac.yaml)."""
IMAGE_UID = 1000
CACHE_PVC = "vigos-cache"
CACHE_MOUNT = "/mnt/vigos"
"""The shared volume: training checkpoints (resume after a retry) and the Hugging Face cache (HF_HOME, set in the
images), so a 7B model is downloaded once per cluster, not once per step."""
# Pod deadlines (activeDeadlineSeconds): a backstop for a step that hangs outside the work it times itself. The
# GPU steps time their own work with the `*_timeout_h` parameters (killing a hung collective); their pod deadline
# is only a last resort, above any sensible parameter value. KFP sets these at compile time only.
HOUR = 3600
POD_DEADLINE_S = {"prep": 12 * HOUR, "light": 2 * HOUR, "merge": 6 * HOUR, "register": 12 * HOUR,
                  "hub": 24 * HOUR, "gpu": 14 * 24 * HOUR}
GPU_RETRIES = 2
# Argo counts `backoff_max_duration` from the FIRST attempt's start and retries nothing after it (nor lets a retry
# run past it): it must outlast every attempt, or a step that fails after its first hour is never retried.
GPU_RETRY = dict(num_retries=GPU_RETRIES, backoff_duration="120s", backoff_factor=2.0,
                 backoff_max_duration=f"{(GPU_RETRIES + 1) * POD_DEADLINE_S['gpu'] + 24 * HOUR}s")
DEFAULT_GPU_NODE_SELECTOR = {"vigos.dev/gpu-pool": "a100"}
DEFAULT_GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def in_cluster(task):
    """Every step: the shared volume and MLflow's location/credentials from the cluster (none as parameters)."""
    kubernetes.mount_pvc(task, pvc_name=CACHE_PVC, mount_path=CACHE_MOUNT)
    kubernetes.use_config_map_as_env(task, MLFLOW_CONFIG_MAP, {"tracking_uri": "MLFLOW_TRACKING_URI"})
    kubernetes.use_secret_as_env(task, MLFLOW_CREDENTIALS_SECRET,
                                 {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"},
                                 optional=True)
    kubernetes.set_security_context(task, run_as_user=IMAGE_UID, run_as_group=IMAGE_UID, run_as_non_root=True)
    return task


def on_gpu_pool(task, gpus, node_selector, tolerations):
    """GPU scheduling for a step: accelerator request, the GPU node pool, its taint, a RAM-backed /dev/shm
    (NCCL and dataloader workers need more than the container default of 64 MiB), the Hub token, and the node's
    name (a pod that sees no GPU names its node in the error)."""
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)
    kubernetes.use_field_path_as_env(task, "NODE_NAME", "spec.nodeName")
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit="64Gi")
    kubernetes.use_secret_as_env(task, HF_TOKEN_SECRET, {"token": "HF_TOKEN"}, optional=True)
    task.set_retry(**GPU_RETRY)  # resume makes a retry cheap: a preempted pod continues from its checkpoint
    return task


def build_pipeline(base_eval_alongside: bool = False, multi_node: bool = True):
    """The pipeline; `base_eval_alongside`: evaluate the base model beside training instead of after the merge;
    `multi_node`: with the `train_nodes` branch (Kubeflow Trainer), which kfp.local cannot run."""

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="ViGOS: data prep, LoRA self-distillation of Qwen2.5-VL, merge, Pass@5 evaluation, publish.",
    )
    def vigos_pipeline(
        preset: str = "paper-7b",
        dataset_source: str = "",
        dataset_split: str = "",
        max_samples: int = -1,
        mlflow_experiment: str = "",
        base_model: str = "",
        train_gpus: int = 8,
        train_nodes: int = 1,
        gpu_node_selector: dict = DEFAULT_GPU_NODE_SELECTOR,
        gpu_tolerations: list = DEFAULT_GPU_TOLERATIONS,
        volume_root: str = f"{CACHE_MOUNT}/runs",
        train_timeout_h: float = 120.0,
        prune_checkpoints: bool = True,
        eval_benchmarks: list = [],  # noqa: B006 - KFP reads defaults from the signature
        eval_sources: list = [],  # noqa: B006
        eval_gpus: int = 8,
        eval_timeout_h: float = 12.0,
        eval_backend: str = "",
        hub_repo_id: str = "",
        hub_private: bool = True,
        config_overrides: list = [],  # noqa: B006
    ):
        """Train, evaluate and publish a ViGOS model.

        Args:
            preset: Config preset: `paper-7b` (the ViGOS-7B model card) or `tiny` (CPU demo).
            dataset_source: HF dataset id or a path the pods can read; empty = the preset's (Vision-SR1-47K).
            dataset_split: Dataset split; empty = the preset's (`train`).
            max_samples: Keep at most this many training rows (seeded shuffle); -1 = the preset's value, 0 = all rows.
            mlflow_experiment: MLflow experiment; empty = the preset's (`vigos`).
            base_model: Model to post-train (HF id or a path the pods can read); empty = the preset's (Qwen2.5-VL-7B-Instruct).
            train_gpus: GPUs per training node (one DeepSpeed process each); the model card used 8 A100s.
            train_nodes: Training nodes. 1: in the step's pod; more: a Kubeflow Trainer TrainJob of this many pods with train_gpus GPUs each (needs Kubeflow Trainer >= 2.2 and a ReadWriteMany volume, k8s/README.md).
            gpu_node_selector: Node labels that select the GPU node pool for training and evaluation.
            gpu_tolerations: Tolerations for the GPU pool's taints (Kubernetes toleration objects).
            volume_root: Folder on the shared volume for each run's large data, in `<volume_root>/<KFP run id>/`: checkpoints (a retried pod resumes from them), adapter, merged model, evaluation responses (a retried evaluation resumes them), Hub staging; prepared data in `<volume_root>/datasets/`.
            train_timeout_h: Hours after which training is stopped (a hung collective must not hold the GPUs forever); 0 = no limit. The paper's run is projected at ~3-4 days on 8 A100s today.
            prune_checkpoints: Delete the training checkpoints once the merged model is verified (the adapter is kept).
            eval_benchmarks: Benchmarks to evaluate (names from the registry); empty = the preset's (the eight + ViLP-F/P).
            eval_sources: `benchmark=path` entries pointing benchmarks at local copies (default: the Hub).
            eval_gpus: GPUs per evaluation pod (data-parallel generation, one process each).
            eval_timeout_h: Hours after which one model's evaluation is stopped; 0 = no limit. A retry resumes its responses.
            eval_backend: Who generates the evaluation responses: `vllm` (a vLLM server started inside the evaluation pod, data-parallel over its GPUs), `engine` (the project's batched engine, one process per GPU), or `openai` (a shared OpenAI-compatible endpoint: set `eval.base_url` in config_overrides); empty = the preset's (paper-7b: vllm, tiny: engine).
            hub_repo_id: Hugging Face Hub repo to upload the merged model to (`org/name`); empty = dry run (the exact folder is staged on the shared volume and its manifest is the artifact, nothing is uploaded).
            hub_private: Create the Hub repo as private.
            config_overrides: Any other config value as `section.key=value` strings, e.g. `train.max_steps=100`.
        """
        context = dict(
            preset=preset,
            config_overrides=config_overrides,
            mlflow_experiment=mlflow_experiment,
            kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        exit_task = finalize_run(**context)
        exit_task.set_display_name("record final status in MLflow")
        tasks = [exit_task]

        with dsl.ExitHandler(exit_task, name="vigos-run"):
            prep = prepare_data(
                preset=preset,
                config_overrides=config_overrides,
                dataset_source=dataset_source,
                dataset_split=dataset_split,
                max_samples=max_samples,
                volume_root=volume_root,
            )
            prep.set_display_name("data prep")
            prep.set_caching_options(True)  # no run id among its inputs: unchanged inputs reuse the last result
            prep.set_cpu_request("8").set_memory_request("32G").set_memory_limit("64G")
            stats = record_data_stats(dataset=prep.outputs["dataset"], **context)
            stats.set_display_name("record data stats in MLflow")
            tasks += [prep, stats]

            train_args = dict(dataset=prep.outputs["dataset"], base_model=base_model, volume_root=volume_root,
                              timeout_h=train_timeout_h, gpus=train_gpus, **context)
            if multi_node:
                with dsl.If(train_nodes == 1, name="one-node"):
                    trained = train(**train_args)
                with dsl.Else(name="several-nodes"):
                    launcher = train_on_nodes(nodes=train_nodes, image=GPU_IMAGE, node_selector=gpu_node_selector,
                                              tolerations=gpu_tolerations, **train_args)
                    launcher.set_display_name("ViGOS training (Kubeflow Trainer)")
                    launcher.set_cpu_request("1").set_memory_request("2G").set_memory_limit("4G")
                    launcher.set_retry(**GPU_RETRY)  # the TrainJob resumes from the checkpoints too
                    tasks.append(launcher)
                adapter = dsl.OneOf(trained.outputs["adapter"], launcher.outputs["adapter"])
            else:
                trained = train(**train_args)
                adapter = trained.outputs["adapter"]
            trained.set_display_name("ViGOS training")
            tasks.append(trained)
            trained.set_cpu_request("32").set_memory_request("400G").set_memory_limit("900G")
            on_gpu_pool(trained, train_gpus, gpu_node_selector, gpu_tolerations)

            merged = merge(adapter=adapter, base_model=base_model, volume_root=volume_root,
                           prune_checkpoints=prune_checkpoints, **context)
            merged.set_display_name("LoRA merge")
            tasks.append(merged)
            # a 7B merge holds the base, the adapter-on copy and the reloaded model on CPU in bf16
            merged.set_cpu_request("8").set_memory_request("64G").set_memory_limit("128G")

            evaluation = dict(benchmarks=eval_benchmarks, sources=eval_sources, gpus=eval_gpus, volume_root=volume_root,
                              timeout_h=eval_timeout_h, backend=eval_backend, **context)
            # every run carries its own baseline; after training unless the quota has room for both at once
            base_eval = evaluate_base(base_model=base_model, **evaluation)
            base_eval.set_display_name("evaluate base model")
            if not base_eval_alongside:
                base_eval.after(merged)
            model_eval = evaluate_model(model=merged.outputs["merged_model"], **evaluation)
            model_eval.set_display_name("evaluate ViGOS model")
            for task in (base_eval, model_eval):
                task.set_cpu_request("32").set_memory_request("200G").set_memory_limit("400G")
                on_gpu_pool(task, eval_gpus, gpu_node_selector, gpu_tolerations)
                kubernetes.use_secret_as_env(task, JUDGE_SECRET, {"api_key": "VIGOS_JUDGE_API_KEY"}, optional=True)
            report = eval_report(model_eval=model_eval.outputs["evaluation"], base_eval=base_eval.outputs["evaluation"],
                                 **context)
            report.set_display_name("evaluation report")

            registered = register(merged_model=merged.outputs["merged_model"], model_eval=model_eval.outputs["evaluation"],
                                  **context)
            registered.set_display_name("MLflow registry")
            hub = publish_hub(
                hub_repo_id=hub_repo_id, hub_private=hub_private, merged_model=merged.outputs["merged_model"],
                adapter=adapter, model_eval=model_eval.outputs["evaluation"],
                base_eval=base_eval.outputs["evaluation"], volume_root=volume_root, **context,
            )
            hub.set_display_name("Hugging Face Hub upload")
            kubernetes.use_secret_as_env(hub, HF_TOKEN_SECRET, {"token": "HF_TOKEN"}, optional=True)
            hub.set_memory_request("16G").set_memory_limit("32G")
            tasks += [base_eval, model_eval, report, registered, hub]

        deadlines = {prep: "prep", stats: "light", exit_task: "light", report: "light", merged: "merge",
                     registered: "register", hub: "hub", trained: "gpu", base_eval: "gpu", model_eval: "gpu"}
        if multi_node:
            deadlines[launcher] = "gpu"
        for task in tasks:
            in_cluster(task)
            kubernetes.set_timeout(task, POD_DEADLINE_S[deadlines[task]])
            if task is not prep:
                task.set_caching_options(False)  # they log to this run's MLflow run (and train/publish must re-run)

    return vigos_pipeline


vigos_pipeline = build_pipeline()
