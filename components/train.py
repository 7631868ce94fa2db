from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train(
    preset: str,
    config_overrides: list,
    mlflow_experiment: str,
    kfp_run_id: str,
    base_model: str,
    checkpoint_root: str,
    gpus: int,
    dataset: Input[Dataset],
    adapter: Output[Model],
    metrics: Output[Metrics],
    summary: Output[Markdown],
):
    """ViGOS LoRA training (DeepSpeed ZeRO-2, one process per GPU); resumes from checkpoints on retry."""
    from vigos import steps

    result = steps.train(
        steps.StepContext(preset, config_overrides, mlflow_experiment, kfp_run_id),
        dataset_dir=dataset.path,
        adapter_dir=adapter.path,
        base_model=base_model,
        checkpoint_root=checkpoint_root,
        gpus=gpus,
    )
    result.write_kfp(metrics, summary)
