from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Metrics, Model, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register(
    preset: str,
    config_overrides: list,
    mlflow_experiment: str,
    kfp_run_id: str,
    merged_model: Input[Model],
    model_eval: Input[Artifact],
    metrics: Output[Metrics],
    summary: Output[Markdown],
):
    """Register the merged model in MLflow: alias `candidate`; `champion` when it beats the current one."""
    from vigos import steps

    result = steps.register(
        steps.StepContext(preset, config_overrides, mlflow_experiment, kfp_run_id),
        merged_dir=merged_model.path, eval_dir=model_eval.path,
    )
    result.write_kfp(metrics, summary)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def publish_hub(
    preset: str,
    config_overrides: list,
    mlflow_experiment: str,
    kfp_run_id: str,
    hub_repo_id: str,
    hub_private: bool,
    volume_root: str,
    merged_model: Input[Model],
    adapter: Input[Model],
    model_eval: Input[Artifact],
    base_eval: Input[Artifact],
    hub_folder: Output[Artifact],
    metrics: Output[Metrics],
    summary: Output[Markdown],
):
    """Upload the merged model with a generated model card (HF_TOKEN from a Secret); no repo id: dry run."""
    from vigos import steps

    result = steps.publish_hub(
        steps.StepContext(preset, config_overrides, mlflow_experiment, kfp_run_id),
        merged_dir=merged_model.path, adapter_dir=adapter.path, eval_dir=model_eval.path,
        base_eval_dir=base_eval.path, staging_dir=hub_folder.path, repo_id=hub_repo_id, private=hub_private,
        volume_root=volume_root,
    )
    result.write_kfp(metrics, summary, hub_folder)
