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


@app.command("compile")
def compile_cmd(
    output: Path = typer.Option(Path("vigos-pipeline.yaml"), "--output", "-o", help="Where to write the YAML."),
) -> None:
    """Compile the pipeline to a KFP v2 YAML (pipeline spec + Kubernetes platform spec)."""
    from pipeline.compile import compile_pipeline

    path = compile_pipeline(output)
    typer.echo(f"wrote {path}")


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


def main() -> None:
    from vigos.errors import VigosError

    try:
        app()
    except VigosError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

