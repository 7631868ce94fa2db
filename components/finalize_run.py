from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def finalize_run(
    preset: str,
    config_overrides: list,
    mlflow_experiment: str,
    kfp_run_id: str,
    status: dsl.PipelineTaskFinalStatus,
):
    """Exit handler: close the run's MLflow parent run with the pipeline's final state (also on failure)."""
    from vigos import steps

    steps.finalize_run(
        steps.StepContext(preset, config_overrides, mlflow_experiment, kfp_run_id),
        state=status.state,
        error_message=status.error_message or "",
    )
