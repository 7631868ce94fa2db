from kfp import dsl
from kfp.dsl import Dataset, Markdown, Metrics, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def prepare_data(
    preset: str,
    config_overrides: list,
    dataset_source: str,
    dataset_split: str,
    max_samples: int,
    mlflow_experiment: str,
    kfp_run_id: str,
    dataset: Output[Dataset],
    metrics: Output[Metrics],
    summary: Output[Markdown],
):
    """Validate, filter, normalise and de-duplicate the training set (see `vigos data prepare`)."""
    from vigos import steps

    result = steps.prepare_data(
        steps.StepContext(preset, config_overrides, mlflow_experiment, kfp_run_id),
        output_dir=dataset.path,
        dataset_source=dataset_source,
        dataset_split=dataset_split,
        max_samples=max_samples,
    )
    result.write_kfp(metrics, summary)
