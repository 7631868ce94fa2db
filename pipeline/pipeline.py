"""The ViGOS DAG: data prep -> (train -> merge -> evaluate, later issues) -> publish.

Every knob is a pipeline parameter with a default and a description, so a rerun from the Kubeflow UI needs no
code. Empty strings and -1 mean "the preset's value": the presets in `vigos/config.py` are the one home of the
defaults, and the pipeline does not copy them.
"""

from kfp import dsl, kubernetes

from components.evaluate import eval_report, evaluate_base, evaluate_model
from components.finalize_run import finalize_run
from components.merge import merge
from components.prepare_data import prepare_data, record_data_stats
from components.publish import publish_hub, register
from components.train import train

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
GPU_RETRY = dict(num_retries=2, backoff_duration="120s", backoff_factor=2.0, backoff_max_duration="3600s")
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
    (NCCL and dataloader workers need more than the container default of 64 MiB), and the Hub token."""
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit="64Gi")
    kubernetes.use_secret_as_env(task, HF_TOKEN_SECRET, {"token": "HF_TOKEN"}, optional=True)
    task.set_retry(**GPU_RETRY)  # resume makes a retry cheap: a preempted pod continues from its checkpoint
    return task


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
    gpu_node_selector: dict = DEFAULT_GPU_NODE_SELECTOR,
    gpu_tolerations: list = DEFAULT_GPU_TOLERATIONS,
    checkpoint_root: str = f"{CACHE_MOUNT}/checkpoints",
    eval_benchmarks: list = [],  # noqa: B006 - KFP reads defaults from the signature
    eval_sources: list = [],  # noqa: B006
    eval_gpus: int = 8,
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
        train_gpus: GPUs for the training pod (one DeepSpeed process each); the model card used 8 A100s.
        gpu_node_selector: Node labels that select the GPU node pool for training and evaluation.
        gpu_tolerations: Tolerations for the GPU pool's taints (Kubernetes toleration objects).
        checkpoint_root: Folder on the shared volume for training checkpoints (a retried pod resumes from them).
        eval_benchmarks: Benchmarks to evaluate (names from the registry); empty = the preset's (the eight + ViLP-F/P).
        eval_sources: `benchmark=path` entries pointing benchmarks at local copies (default: the Hub).
        eval_gpus: GPUs per evaluation pod (data-parallel generation, one process each).
        hub_repo_id: Hugging Face Hub repo to upload the merged model to (`org/name`); empty = dry run (the exact folder is staged as an artifact, nothing is uploaded).
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
        )
        prep.set_display_name("data prep")
        prep.set_caching_options(True)  # no run id among its inputs: unchanged inputs reuse the last result
        prep.set_cpu_request("8").set_memory_request("32G").set_memory_limit("64G")
        stats = record_data_stats(dataset=prep.outputs["dataset"], **context)
        stats.set_display_name("record data stats in MLflow")
        tasks += [prep, stats]

        trained = train(
            dataset=prep.outputs["dataset"],
            base_model=base_model,
            checkpoint_root=checkpoint_root,
            # also an input (not only the accelerator request): KFP 2.17 does not wire a parameter used only in a
            # resource field into the exit handler's sub-DAG
            gpus=train_gpus,
            **context,
        )
        trained.set_display_name("ViGOS training")
        tasks.append(trained)
        trained.set_cpu_request("32").set_memory_request("400G").set_memory_limit("900G")
        on_gpu_pool(trained, train_gpus, gpu_node_selector, gpu_tolerations)

        merged = merge(adapter=trained.outputs["adapter"], base_model=base_model, **context)
        merged.set_display_name("LoRA merge")
        tasks.append(merged)
        # a 7B merge holds the base, the adapter-on copy and the reloaded model on CPU in bf16
        merged.set_cpu_request("8").set_memory_request("64G").set_memory_limit("128G")

        evaluation = dict(benchmarks=eval_benchmarks, sources=eval_sources, gpus=eval_gpus, **context)
        # the base model is evaluated from the start, beside training: every run carries its own baseline
        base_eval = evaluate_base(base_model=base_model, **evaluation)
        base_eval.set_display_name("evaluate base model")
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
            adapter=trained.outputs["adapter"], model_eval=model_eval.outputs["evaluation"],
            base_eval=base_eval.outputs["evaluation"], **context,
        )
        hub.set_display_name("Hugging Face Hub upload")
        kubernetes.use_secret_as_env(hub, HF_TOKEN_SECRET, {"token": "HF_TOKEN"}, optional=True)
        hub.set_memory_request("16G").set_memory_limit("32G")
        tasks += [base_eval, model_eval, report, registered, hub]

    for task in tasks:
        in_cluster(task)
        if task is not prep:
            task.set_caching_options(False)  # they log to this run's MLflow run (and train/publish must re-run)
