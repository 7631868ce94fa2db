"""The ViGOS DAG: data prep -> (train -> merge -> evaluate, later issues) -> publish.

Every knob is a pipeline parameter with a default and a description, so a rerun from the Kubeflow UI needs no
code. Empty strings and -1 mean "the preset's value": the presets in `vigos/config.py` are the one home of the
defaults, and the pipeline does not copy them.
"""

from kfp import dsl

from components.finalize_run import finalize_run
from components.prepare_data import prepare_data

PIPELINE_NAME = "vigos"


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
    config_overrides: list = [],  # noqa: B006 - KFP reads the default from the signature
):
    """Train, evaluate and publish a ViGOS model.

    Args:
        preset: Config preset: `paper-7b` (the ViGOS-7B model card) or `tiny` (CPU demo).
        dataset_source: HF dataset id or a path the pods can read; empty = the preset's (Vision-SR1-47K).
        dataset_split: Dataset split; empty = the preset's (`train`).
        max_samples: Keep at most this many training rows (seeded shuffle); -1 = the preset's value, 0 = all rows.
        mlflow_experiment: MLflow experiment; empty = the preset's (`vigos`).
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
    exit_task.set_caching_options(False)

    with dsl.ExitHandler(exit_task, name="vigos-run"):
        prep = prepare_data(
            dataset_source=dataset_source,
            dataset_split=dataset_split,
            max_samples=max_samples,
            **context,
        )
        prep.set_display_name("data prep")
        prep.set_cpu_request("4").set_memory_request("16G").set_memory_limit("32G")
