"""`vigos train`: the training entry point, run alone, under `torchrun --nproc_per_node N`, or under the
`deepspeed` launcher (which appends `--local_rank=N` to argv; the rank comes from the environment either way).

Rank 0 logs to MLflow: into the run named by `MLFLOW_RUN_ID` (the DAG step's nested run, opened by the parent
process), or, run by hand, into the run this output folder was first trained under (created on first contact).
Through `vigos.tracking.BackgroundLogger`: training never waits for the tracking server, and what an outage kept
from it is sent later, in order (metric names: `train/<name>`, docs/metrics.md).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from vigos.config import PRESETS, load_config
from vigos.tracking import stage_metrics

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def check_inputs(cfg, dataset: Path, output: Path, world_size: int | None = None) -> None:
    """Refuse, before anything starts (no process group, no MLflow run, no folder written), a dataset that is not
    a prepared one, an output that is a file, a model that cannot be found or a batch that cannot be made.
    VigosError naming the problem and the fix."""
    import json

    from vigos.errors import VigosError
    from vigos.modeling.load import resolve_model_source

    prepare_hint = "run `vigos data prepare --output DIR` and pass that DIR"
    if not dataset.exists():
        raise VigosError(f"--dataset {dataset} does not exist; {prepare_hint}")
    if not dataset.is_dir():
        raise VigosError(f"--dataset {dataset} is a file, not a prepared dataset folder; {prepare_hint}")
    if (dataset / "dataset_dict.json").is_file():
        raise VigosError(f"--dataset {dataset} holds several splits (a DatasetDict), not a prepared dataset; "
                         f"{prepare_hint}")
    missing = [f for f in ("state.json", "dataset_info.json") if not (dataset / f).is_file()]
    if missing:
        raise VigosError(f"--dataset {dataset} is not a prepared dataset (no {', '.join(missing)}); {prepare_hint}")
    try:
        features = json.loads((dataset / "dataset_info.json").read_text()).get("features") or {}
    except (OSError, ValueError):
        features = {}
    if features:
        columns = [c for c in ("problem", "images", "answer") if c not in features]
        if columns:
            raise VigosError(f"--dataset {dataset} is not a prepared dataset (no column {', '.join(columns)}); "
                             f"{prepare_hint}")
    if output.exists() and not output.is_dir():
        raise VigosError(f"--output {output} is a file; choose a folder (it is created if missing)")
    resolve_model_source(cfg.model.name_or_path)

    from vigos.training.trainer import check_train_config

    check_train_config(cfg, world_size or int(os.environ.get("WORLD_SIZE", "1")))


def run_training(cfg, dataset: Path, output: Path, *, interrupt_after_step: int | None = None) -> Path:
    """Train on this process's rank; rank 0 logs to MLflow. Returns the adapter folder."""
    return _run_training(cfg, dataset, output, interrupt_after_step=interrupt_after_step)[0]


def _run_training(cfg, dataset: Path, output: Path, *, interrupt_after_step: int | None = None
                  ) -> tuple[Path, str | None]:
    """`run_training`, also returning rank 0's MLflow run id (None on the other ranks)."""
    from vigos.training.distributed import init_distributed
    from vigos.training.trainer import ViGOSTrainer, check_train_config

    info = init_distributed()
    check_train_config(cfg, info.world_size)  # a batch that cannot be made fails before an MLflow run is opened
    if not info.is_main:
        trainer = ViGOSTrainer(cfg, dataset, output, interrupt_after_step=interrupt_after_step)
        return trainer.train().adapter_dir, None

    from vigos.tracking import BackgroundLogger, quick_failing_client_env

    quick_failing_client_env()
    tracker = BackgroundLogger(output, os.environ.get("MLFLOW_RUN_ID") or None,
                               experiment=cfg.tracking.experiment, run_name="train")
    by_hand = not os.environ.get("MLFLOW_RUN_ID")  # the DAG step ends its own run
    if by_hand:  # the DAG step logs these itself
        tracker.log_params({k: v for k, v in cfg.flat().items() if k.split(".")[0] in ("model", "lora", "train", "data")}
                           | {"preset": cfg.preset, "dataset": str(dataset)})
    try:
        trainer = ViGOSTrainer(cfg, dataset, output, logger=_Prefixed(tracker, "train"),
                               interrupt_after_step=interrupt_after_step)
        result = trainer.train()
    except BaseException:
        tracker.close("FAILED" if by_hand else None)
        raise
    tracker.close("FINISHED" if by_hand else None)
    if result.resumed_from:
        print(f"[vigos] resumed from step {result.resumed_from}", flush=True)
    return result.adapter_dir, tracker.run_id


class _Prefixed:
    """The trainer's metric names in the tracking scheme: `train/<name>` (docs/metrics.md)."""

    def __init__(self, tracker, stage: str) -> None:
        self.tracker, self.stage = tracker, stage

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.tracker.log_metrics(stage_metrics(self.stage, metrics), step)

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self.tracker.log_artifact(path, artifact_path)

    def log_params(self, params: dict) -> None:  # already `train.`-prefixed
        self.tracker.log_params(params)


@app.command()
def train(
    dataset: Path = typer.Option(..., "--dataset", "-d", metavar="DIR",
                                 help="Prepared dataset folder (`vigos data prepare` output)."),
    output: Path = typer.Option(..., "--output", "-o", metavar="DIR",
                                help="Output folder: checkpoints/, rollouts/, adapter/."),
    preset: str = typer.Option("paper-7b", "--preset", metavar="NAME", help=f"Config preset: {', '.join(PRESETS)}."),
    config: Path | None = typer.Option(None, "--config", "-c", metavar="FILE", help="YAML file of config overrides."),
    override: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                       help="Config override `section.key=value` (repeatable)."),
    local_rank: int = typer.Option(-1, "--local_rank", "--local-rank", hidden=True, help="Set by `deepspeed`."),
) -> None:
    """Train a ViGOS LoRA adapter (resumes from OUTPUT/checkpoints when present)."""
    cfg = load_config(preset, config, override)
    check_inputs(cfg, dataset, output)  # before the process group, the MLflow run or any folder
    adapter, run_id = _run_training(cfg, dataset, output)
    if int(os.environ.get("RANK", "0")) == 0:
        from vigos.tracking import tracking_uri

        typer.echo(f"adapter: {Path(adapter).resolve()} (MLflow run {run_id}, experiment {cfg.tracking.experiment!r}, "
                   f"store {tracking_uri()})")


def main() -> None:
    from vigos.cli import main as vigos_main

    vigos_main(["train", *sys.argv[1:]])


if __name__ == "__main__":
    main()
