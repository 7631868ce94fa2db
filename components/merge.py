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
    adapter: Input[Model],
    merged_model: Output[Model],
    metrics: Output[Metrics],
    summary: Output[Markdown],
):
    """Merge the LoRA adapter into the base model (full safetensors), verified on a probe input."""
    from vigos import steps

    result = steps.merge(
        steps.StepContext(preset, config_overrides, mlflow_experiment, kfp_run_id),
        adapter_dir=adapter.path,
        merged_dir=merged_model.path,
        base_model=base_model,
    )
    result.write_kfp(metrics, summary)
