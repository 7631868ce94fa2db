from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Markdown, Metrics, Model, Output

from components.images import CPU_IMAGE, EVAL_IMAGE


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
def evaluate_model(
    preset: str,
    config_overrides: list,
    mlflow_experiment: str,
    kfp_run_id: str,
    benchmarks: list,
    sources: list,
    gpus: int,
    volume_root: str,
    timeout_h: float,
    backend: str,
    model: Input[Model],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    summary: Output[Markdown],
):
    """Pass@k evaluation of the merged model (responses, grades, scores.json, report)."""
    from vigos import steps

    result = steps.evaluate(
        steps.StepContext(preset, config_overrides, mlflow_experiment, kfp_run_id),
        model_path=model.path, output_dir=evaluation.path, label="model",
        benchmarks=benchmarks, sources=sources, gpus=gpus, volume_root=volume_root, timeout_h=timeout_h,
        backend=backend,
    )
    result.write_kfp(metrics, summary, evaluation)


@dsl.component(base_image=EVAL_IMAGE, install_kfp_package=False)
def evaluate_base(
    preset: str,
    config_overrides: list,
    mlflow_experiment: str,
    kfp_run_id: str,
    base_model: str,
    benchmarks: list,
    sources: list,
    gpus: int,
    volume_root: str,
    timeout_h: float,
    backend: str,
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    summary: Output[Markdown],
):
    """Pass@k evaluation of the base model: every run compares against its own baseline."""
    from vigos import steps

    ctx = steps.StepContext(preset, config_overrides, mlflow_experiment, kfp_run_id)
    result = steps.evaluate(
        ctx, model_path=base_model or ctx.config().model.name_or_path, output_dir=evaluation.path, label="base",
        benchmarks=benchmarks, sources=sources, gpus=gpus, volume_root=volume_root, timeout_h=timeout_h,
        backend=backend,
    )
    result.write_kfp(metrics, summary, evaluation)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def eval_report(
    preset: str,
    config_overrides: list,
    mlflow_experiment: str,
    kfp_run_id: str,
    model_eval: Input[Artifact],
    base_eval: Input[Artifact],
    report: Output[HTML],
    metrics: Output[Metrics],
    summary: Output[Markdown],
):
    """The comparison card (this model vs base vs model card, with the chart) for the Kubeflow UI and MLflow."""
    from vigos import steps

    result = steps.eval_report(
        steps.StepContext(preset, config_overrides, mlflow_experiment, kfp_run_id),
        model_eval_dir=model_eval.path, base_eval_dir=base_eval.path, html_path=report.path,
    )
    result.write_kfp(metrics, summary)
