"""`vigos train`: the training entry point, run alone, under `torchrun --nproc_per_node N`, or under the
`deepspeed` launcher (which appends `--local_rank=N` to argv; the rank comes from the environment either way).

Rank 0 logs to MLflow: into the run named by `MLFLOW_RUN_ID` (the DAG step's nested run, opened by the parent
process), or, run by hand, into a new run of the configured experiment.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from vigos.config import PRESETS, load_config

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


class MlflowLogger:
    """Rank 0's metrics and artifacts go to the active MLflow run."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import math

        import mlflow

        mlflow.log_metrics({k: v for k, v in metrics.items() if not math.isnan(v)}, step=step)

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        import mlflow

        mlflow.log_artifact(path, artifact_path)


def run_training(cfg, dataset: Path, output: Path, *, interrupt_after_step: int | None = None) -> Path:
    """Train on this process's rank; rank 0 logs to MLflow. Returns the adapter folder."""
    from vigos.training.distributed import init_distributed
    from vigos.training.trainer import ViGOSTrainer, check_train_config

    info = init_distributed()
    check_train_config(cfg, info.world_size)  # a batch that cannot be made fails before an MLflow run is opened
    if not info.is_main:
        trainer = ViGOSTrainer(cfg, dataset, output, interrupt_after_step=interrupt_after_step)
        return trainer.train().adapter_dir

    import mlflow

    from vigos.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    if not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(cfg.tracking.experiment)
    with mlflow.start_run(run_name="train"):  # resumes MLFLOW_RUN_ID when set
        trainer = ViGOSTrainer(cfg, dataset, output, logger=MlflowLogger(),
                               interrupt_after_step=interrupt_after_step)
        result = trainer.train()
        if result.resumed_from:
            mlflow.set_tag("vigos.resumed_from_step", str(result.resumed_from))
    return result.adapter_dir


@app.command()
def train(
    dataset: Path = typer.Option(..., "--dataset", help="Prepared dataset folder (`vigos data prepare` output)."),
    output: Path = typer.Option(..., "--output", help="Output folder: checkpoints/, rollouts/, adapter/."),
    preset: str = typer.Option("paper-7b", help=f"Config preset: {', '.join(PRESETS)}."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML file of config overrides."),
    override: list[str] = typer.Option([], "--set", help="Config override `section.key=value` (repeatable)."),
    local_rank: int = typer.Option(-1, "--local_rank", "--local-rank", hidden=True, help="Set by `deepspeed`."),
) -> None:
    """Train a ViGOS LoRA adapter (resumes from OUTPUT/checkpoints when present)."""
    cfg = load_config(preset, config, override)
    adapter = run_training(cfg, dataset, output)
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(f"adapter: {adapter}")


def main() -> None:
    from vigos.cli import main as vigos_main

    vigos_main(["train", *sys.argv[1:]])


if __name__ == "__main__":
    main()
