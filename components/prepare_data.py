from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def prepare_data(
    preset: str,
    config_overrides: list,
    dataset_source: str,
    dataset_split: str,
    max_samples: int,
    volume_root: str,
    dataset: Output[Dataset],
    metrics: Output[Metrics],
    summary: Output[Markdown],
):
    """Validate, filter, normalise and de-duplicate the training set (see `vigos data prepare`). Cacheable: it
    takes no run id. The data stays on the shared volume; `dataset` holds its manifest."""
    from vigos import steps

    result = steps.prepare_data(
        steps.StepContext(preset, config_overrides),
        output_dir=dataset.path,
        dataset_source=dataset_source,
        dataset_split=dataset_split,
        max_samples=max_samples,
        volume_root=volume_root,
    )
    result.write_kfp(metrics, summary, dataset)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def record_data_stats(
    preset: str,
    config_overrides: list,
    mlflow_experiment: str,
    kfp_run_id: str,
    dataset: Input[Dataset],
):
    """Log the prepared dataset's stats to this run's MLflow `prepare-data` run (also when data prep was cached)."""
    from vigos import steps

    steps.record_data_stats(steps.StepContext(preset, config_overrides, mlflow_experiment, kfp_run_id), dataset.path)
