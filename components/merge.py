from kfp import dsl
from kfp.dsl import Input, Markdown, Metrics, Model, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def merge(
    preset: str,
    config_overrides: list,
    mlflow_experiment: str,
    kfp_run_id: str,
    base_model: str,
    volume_root: str,
    prune_checkpoints: bool,
    adapter: Input[Model],
    merged_model: Output[Model],
    metrics: Output[Metrics],
    summary: Output[Markdown],
):
    """Merge the LoRA adapter into the base model (full safetensors), verified on a probe input; the model stays on
    the shared volume and `merged_model` holds its manifest."""
    from vigos import steps

    result = steps.merge(
        steps.StepContext(preset, config_overrides, mlflow_experiment, kfp_run_id),
        adapter_dir=adapter.path,
        merged_dir=merged_model.path,
        base_model=base_model,
        volume_root=volume_root,
        prune_checkpoints=prune_checkpoints,
    )
    result.write_kfp(metrics, summary, merged_model)
