from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from components.images import CPU_IMAGE, GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train(
    preset: str,
    config_overrides: list,
    mlflow_experiment: str,
    kfp_run_id: str,
    base_model: str,
    volume_root: str,
    gpus: int,
    timeout_h: float,
    dataset: Input[Dataset],
    adapter: Output[Model],
    metrics: Output[Metrics],
    summary: Output[Markdown],
):
    """ViGOS LoRA training (DeepSpeed ZeRO-2, one process per GPU); resumes from checkpoints on retry. The adapter
    and checkpoints stay on the shared volume; `adapter` holds their manifest."""
    from vigos import steps

    result = steps.train(
        steps.StepContext(preset, config_overrides, mlflow_experiment, kfp_run_id),
        dataset_dir=dataset.path,
        adapter_dir=adapter.path,
        base_model=base_model,
        volume_root=volume_root,
        gpus=gpus,
        timeout_h=timeout_h,
    )
    result.write_kfp(metrics, summary, adapter)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def train_on_nodes(
    preset: str,
    config_overrides: list,
    mlflow_experiment: str,
    kfp_run_id: str,
    base_model: str,
    volume_root: str,
    gpus: int,
    timeout_h: float,
    nodes: int,
    image: str,
    node_selector: dict,
    tolerations: list,
    dataset: Input[Dataset],
    adapter: Output[Model],
    metrics: Output[Metrics],
    summary: Output[Markdown],
):
    """ViGOS training on several nodes: this CPU pod creates a Kubeflow Trainer TrainJob of `nodes` GPU pods running
    `image`, follows it and deletes it; checkpoints and the adapter land on the shared volume as on one node."""
    from vigos import steps

    result = steps.train(
        steps.StepContext(preset, config_overrides, mlflow_experiment, kfp_run_id),
        dataset_dir=dataset.path,
        adapter_dir=adapter.path,
        base_model=base_model,
        volume_root=volume_root,
        gpus=gpus,
        timeout_h=timeout_h,
        nodes=nodes,
        image=image,
        node_selector=node_selector,
        tolerations=tolerations,
    )
    result.write_kfp(metrics, summary, adapter)
