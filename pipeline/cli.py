"""`python -m pipeline compile|run-local`: compile the DAG for a cluster, or run the same DAG on this machine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

app = typer.Typer(
    name="python -m pipeline",
    help="Compile the ViGOS Kubeflow pipeline, or run the same DAG locally with kfp.local.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


IMAGES_ENV = Path("build/images.env")
"""Written by `make images`: digest-pinned image names (VIGOS_CPU_IMAGE=..., VIGOS_GPU_IMAGE=...)."""


def _load_images_env(path: Path) -> None:
    """Pin the components' images before `components` is imported (they read the environment at import)."""
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                key, value = line.split("=", 1)
                os.environ.setdefault(key.strip(), value.strip())


ALONGSIDE_HELP = ("Evaluate the base model beside training instead of after the merge (needs GPU quota for both at "
                  "once).")


@app.command("compile")
def compile_cmd(
    output: Path = typer.Option(Path("build/vigos-pipeline.yaml"), "--output", "-o", help="Where to write the YAML."),
    images_env: Path = typer.Option(IMAGES_ENV, help="Image pins from `make images` (used when present)."),
    base_eval_alongside: bool = typer.Option(False, "--base-eval-alongside", help=ALONGSIDE_HELP),
) -> None:
    """Compile the pipeline to a KFP v2 YAML (pipeline spec + Kubernetes platform spec)."""
    _load_images_env(images_env)
    from pipeline.compile import compile_pipeline

    path = compile_pipeline(output, base_eval_alongside)
    typer.echo(f"wrote {path}")


def _submit(params_file: Path | None, override: list[str], experiment: str, run_name: str | None,
            cron: str | None, images_env: Path, base_eval_alongside: bool = False) -> None:
    _load_images_env(images_env)
    from pipeline.compile import compile_pipeline
    from pipeline.pipeline import PIPELINE_NAME
    from pipeline.submit import resolve_parameters, submit

    package = compile_pipeline(Path("build/vigos-pipeline.yaml"), base_eval_alongside)
    params = resolve_parameters(package, params_file, override)  # fails before anything is sent
    s = submit(package, params, experiment=experiment, pipeline_name=PIPELINE_NAME, run_name=run_name, cron=cron)
    kind = "recurring run" if s.recurring else "run"
    typer.echo(f"pipeline {PIPELINE_NAME} version {s.version_id}; {kind} {s.run_id} in experiment {experiment}")
    typer.echo(s.url)


PARAMS_HELP = "YAML file of pipeline parameters (see configs/pipeline-params.example.yaml)."


@app.command("submit")
def submit_cmd(
    params: Path | None = typer.Option(None, "--params", "-p", help=PARAMS_HELP),
    override: list[str] = typer.Option([], "--set", help="Pipeline parameter `name=value` (repeatable)."),
    experiment: str = typer.Option("vigos", help="KFP experiment to run in."),
    run_name: str | None = typer.Option(None, help="Run name (default: pipeline version name)."),
    images_env: Path = typer.Option(IMAGES_ENV, help="Image pins from `make images` (used when present)."),
    base_eval_alongside: bool = typer.Option(False, "--base-eval-alongside", help=ALONGSIDE_HELP),
) -> None:
    """Compile, upload a new pipeline version and start a run (KF_PIPELINES_ENDPOINT / _NAMESPACE / _TOKEN)."""
    _submit(params, override, experiment, run_name, None, images_env, base_eval_alongside)


@app.command("schedule")
def schedule_cmd(
    cron: str = typer.Option(..., help="Cron schedule, 6 fields with seconds, e.g. '0 0 2 * * 1' (Mondays 02:00)."),
    params: Path | None = typer.Option(None, "--params", "-p", help=PARAMS_HELP),
    override: list[str] = typer.Option([], "--set", help="Pipeline parameter `name=value` (repeatable)."),
    experiment: str = typer.Option("vigos", help="KFP experiment to run in."),
    run_name: str | None = typer.Option(None, help="Recurring run name (default: pipeline version name)."),
    images_env: Path = typer.Option(IMAGES_ENV, help="Image pins from `make images` (used when present)."),
    base_eval_alongside: bool = typer.Option(False, "--base-eval-alongside", help=ALONGSIDE_HELP),
) -> None:
    """Compile, upload a new pipeline version and create a recurring run (one at a time, no catch-up)."""
    _submit(params, override, experiment, run_name, cron, images_env, base_eval_alongside)


@app.command("run-local")
def run_local_cmd(
    preset: str = typer.Option("tiny", help="Config preset (the demo uses `tiny`: CPU, minutes)."),
    rows: int = typer.Option(96, help="Rows of synthetic data to generate."),
    override: list[str] = typer.Option([], "--set", help="Config override `section.key=value` (repeatable)."),
    home: Path | None = typer.Option(None, help="Local state folder (default: $VIGOS_HOME or ./.vigos)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show every step's raw output (kfp.local's)."),
) -> None:
    """Run the whole DAG on this machine: tiny random Qwen2.5-VL, synthetic data, MLflow on a local store."""
    from pipeline.local import run_local

    if home is not None:
        os.environ["VIGOS_HOME"] = str(home.resolve())
    result = run_local(preset=preset, rows=rows, overrides=list(override), verbose=verbose)
    sys.exit(0 if result.ok else 1)


@app.command("trainjob")
def trainjob_cmd(
    nodes: int = typer.Option(..., "--nodes", min=1, help="Training nodes (pods), each with --gpus-per-node GPUs."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the TrainJob YAML."),
    gpus_per_node: int = typer.Option(8, min=0, help="GPUs (= training processes) per node; 0: one CPU process."),
    image: str | None = typer.Option(None, help="Trainer image (default: VIGOS_GPU_IMAGE, as the GPU steps)."),
    namespace: str = typer.Option("vigos", help="Namespace of the TrainJob (the pipeline's)."),
    run_id: str = typer.Option("manual", help="KFP run id: names the TrainJob and its folder on the volume."),
    preset: str = typer.Option("paper-7b", help="Config preset."),
    dataset: str = typer.Option("/mnt/vigos/runs/datasets/REPLACE_ME", help="Prepared dataset folder on the volume."),
    volume_root: str = typer.Option("/mnt/vigos/runs", help="The pipeline's `volume_root`."),
    runtime: str = typer.Option("torch-distributed", help="ClusterTrainingRuntime of Kubeflow Trainer."),
    images_env: Path = typer.Option(IMAGES_ENV, help="Image pins from `make images` (used when present)."),
) -> None:
    """Write the Kubeflow Trainer TrainJob the train step would create (to review, or to `kubectl apply -f`)."""
    import yaml

    from vigos.training.trainjob import TrainJobSpec, build_trainjob

    _load_images_env(images_env)
    from components.images import GPU_IMAGE
    from pipeline.pipeline import DEFAULT_GPU_NODE_SELECTOR, DEFAULT_GPU_TOLERATIONS

    spec = TrainJobSpec(run_id=run_id, image=image or GPU_IMAGE, dataset=dataset,
                        output=f"{volume_root}/{run_id}/train", preset=preset, namespace=namespace, runtime=runtime,
                        num_nodes=nodes, gpus_per_node=gpus_per_node, node_selector=DEFAULT_GPU_NODE_SELECTOR,
                        tolerations=DEFAULT_GPU_TOLERATIONS)
    manifest = build_trainjob(spec)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(yaml.safe_dump(manifest, sort_keys=False))
    typer.echo(f"wrote {output}: TrainJob {spec.name}, {nodes} node(s) x {gpus_per_node} GPU(s)")
    if "REPLACE_ME" in dataset:
        typer.echo("set --dataset to the prepared data's folder before applying it", err=True)


def main() -> None:
    from vigos.errors import VigosError

    try:
        app()
    except VigosError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

