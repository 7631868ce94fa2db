"""`python -m pipeline compile|submit|schedule|run-local|trainjob`: compile the DAG for a cluster, submit or schedule
it there, or run the same DAG on this machine.

Errors a user can fix print as one line without a traceback (`main`): usage errors and bad input exit 2, an
endpoint that cannot be reached or refuses the request exits 1.
"""

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
"""Written by `make images`: digest-pinned image names (VIGOS_CPU_IMAGE=..., VIGOS_GPU_IMAGE=..., VIGOS_EVAL_IMAGE=...)."""
IMAGES_ENV_HELP = "Image pins from `make images` (used when present)."
UNPINNED_HELP = ("Submit even with images that are not digest-pinned (no build/images.env: the built-in placeholder "
                 "names, which no registry holds).")


def _load_images_env(path: Path) -> Path | None:
    """Pin the components' images before `components` is imported (they read the environment at import).

    Returns the file read, or None when there is none (the components then name the placeholder images, which
    `submit` refuses and `compile` warns about)."""
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            os.environ.setdefault(key.strip(), value.strip().strip("'\""))
    return path


def _unpinned_message(unpinned: list[str], images_env: Path, found: Path | None) -> str:
    source = f"from {found}" if found else f"no {images_env}"
    return (f"images not pinned to a digest ({source}): {', '.join(unpinned)}; run `make images "
            f"REGISTRY=registry.example.com/vigos` to build, push and pin them")


ALONGSIDE_HELP = ("Evaluate the base model beside training instead of after the merge (needs GPU quota for both at "
                  "once).")


@app.command("compile")
def compile_cmd(
    output: Path = typer.Option(Path("build/vigos-pipeline.yaml"), "--output", "-o", help="Where to write the YAML."),
    images_env: Path = typer.Option(IMAGES_ENV, help=IMAGES_ENV_HELP),
    base_eval_alongside: bool = typer.Option(False, "--base-eval-alongside", help=ALONGSIDE_HELP),
) -> None:
    """Compile the pipeline to a KFP v2 YAML (pipeline spec + Kubernetes platform spec)."""
    found = _load_images_env(images_env)
    from pipeline.compile import compile_pipeline
    from pipeline.submit import unpinned_images

    path = compile_pipeline(output, base_eval_alongside)
    typer.echo(f"wrote {path}")
    unpinned = unpinned_images(path)
    if unpinned:
        typer.secho(f"warning: {_unpinned_message(unpinned, images_env, found)} (submit refuses them without "
                    "--allow-unpinned-images)", fg="yellow", err=True)


def _submit(params_file: Path | None, override: list[str], experiment: str, run_name: str | None,
            cron: str | None, images_env: Path, base_eval_alongside: bool = False,
            allow_unpinned_images: bool = False) -> None:
    from vigos.errors import VigosError

    found = _load_images_env(images_env)
    from pipeline.submit import check_parameters, endpoint, load_parameters, submit, unpinned_images

    values = load_parameters(params_file, override)  # a missing or broken file fails before anything else
    endpoint()  # so does a missing KF_PIPELINES_ENDPOINT
    from pipeline.compile import compile_pipeline
    from pipeline.pipeline import PIPELINE_NAME

    package = compile_pipeline(Path("build/vigos-pipeline.yaml"), base_eval_alongside)
    params = check_parameters(package, values)  # names and types: fails before anything is sent
    unpinned = unpinned_images(package)
    if unpinned and not allow_unpinned_images:
        raise VigosError(f"{_unpinned_message(unpinned, images_env, found)}, or pass --allow-unpinned-images")
    if unpinned:
        typer.secho(f"warning: {_unpinned_message(unpinned, images_env, found)}", fg="yellow", err=True)
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
    images_env: Path = typer.Option(IMAGES_ENV, help=IMAGES_ENV_HELP),
    base_eval_alongside: bool = typer.Option(False, "--base-eval-alongside", help=ALONGSIDE_HELP),
    allow_unpinned_images: bool = typer.Option(False, "--allow-unpinned-images", help=UNPINNED_HELP),
) -> None:
    """Compile, upload a new pipeline version and start a run (KF_PIPELINES_ENDPOINT / _NAMESPACE / _TOKEN)."""
    _submit(params, override, experiment, run_name, None, images_env, base_eval_alongside, allow_unpinned_images)


@app.command("schedule")
def schedule_cmd(
    cron: str = typer.Option(..., help="Cron schedule, 6 fields with seconds, e.g. '0 0 2 * * 1' (Mondays 02:00)."),
    params: Path | None = typer.Option(None, "--params", "-p", help=PARAMS_HELP),
    override: list[str] = typer.Option([], "--set", help="Pipeline parameter `name=value` (repeatable)."),
    experiment: str = typer.Option("vigos", help="KFP experiment to run in."),
    run_name: str | None = typer.Option(None, help="Recurring run name (default: pipeline version name)."),
    images_env: Path = typer.Option(IMAGES_ENV, help=IMAGES_ENV_HELP),
    base_eval_alongside: bool = typer.Option(False, "--base-eval-alongside", help=ALONGSIDE_HELP),
    allow_unpinned_images: bool = typer.Option(False, "--allow-unpinned-images", help=UNPINNED_HELP),
) -> None:
    """Compile, upload a new pipeline version and create a recurring run (one at a time, no catch-up)."""
    _submit(params, override, experiment, run_name, cron, images_env, base_eval_alongside, allow_unpinned_images)


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
    images_env: Path = typer.Option(IMAGES_ENV, help=IMAGES_ENV_HELP),
) -> None:
    """Write the Kubeflow Trainer TrainJob the train step would create (to review, or to `kubectl apply -f`)."""
    import yaml

    from vigos.training.trainjob import TrainJobSpec, build_trainjob

    _load_images_env(images_env)
    from components.images import GPU_IMAGE, is_pinned
    from pipeline.pipeline import DEFAULT_GPU_NODE_SELECTOR, DEFAULT_GPU_TOLERATIONS

    spec = TrainJobSpec(run_id=run_id, image=image or GPU_IMAGE, dataset=dataset,
                        output=f"{volume_root}/{run_id}/train", preset=preset, namespace=namespace, runtime=runtime,
                        num_nodes=nodes, gpus_per_node=gpus_per_node, node_selector=DEFAULT_GPU_NODE_SELECTOR,
                        tolerations=DEFAULT_GPU_TOLERATIONS)
    manifest = build_trainjob(spec)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(yaml.safe_dump(manifest, sort_keys=False))
    typer.echo(f"wrote {output}: TrainJob {spec.name}, {nodes} node(s) x {gpus_per_node} GPU(s)")
    if not is_pinned(spec.image):
        typer.secho(f"warning: image {spec.image} is not pinned to a digest: pass a pinned --image, or run "
                    "`make images REGISTRY=...` (writes build/images.env)", fg="yellow", err=True)
    if "REPLACE_ME" in dataset:
        typer.echo("set --dataset to the prepared data's folder before applying it", err=True)


def _usage_error_type() -> type[Exception]:
    """click's UsageError as typer raises it (typer >= 0.26 vendors click, older ones use click itself)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a user's mistake is one `error: ...` line on stderr, never a traceback."""
    from vigos.errors import VigosError
    from vigos.redact import redact

    usage_error = _usage_error_type()
    try:
        result = app(args=argv, standalone_mode=False, prog_name="python -m pipeline")
    except VigosError as e:
        typer.secho(f"error: {redact(str(e))}", fg="red", err=True)
        sys.exit(getattr(e, "exit_code", 2))
    except usage_error as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # the help is already printed
            sys.exit(e.exit_code)
        ctx = getattr(e, "ctx", None)
        path = ctx.command_path if ctx is not None else "python -m pipeline"
        typer.secho(f"error: {e.format_message()} (see `{path} --help`)", fg="red", err=True)
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.secho("aborted", fg="red", err=True)
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
