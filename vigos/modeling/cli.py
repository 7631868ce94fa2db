"""`vigos model ...`: model utilities."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vigos.config import PRESETS

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

_TINY_DEFAULT_DIR = PRESETS["tiny"]["model"]["name_or_path"]


@app.callback()
def _group() -> None:
    """Model utilities (tiny random Qwen2.5-VL for the demo and tests)."""


@app.command("tiny")
def tiny(
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Folder to write the tiny model to (default: the tiny preset's path)."),
    ] = Path(_TINY_DEFAULT_DIR),
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random weights.")] = 0,
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild even if the folder already holds the same build.")
    ] = False,
) -> None:
    """Build a tiny random Qwen2.5-VL (+ offline tokenizer/processor) loadable like the real model."""
    import time

    from vigos.modeling.tiny import build_tiny_model, read_build_info

    before = read_build_info(output).get("fingerprint")
    started = time.perf_counter()
    path = build_tiny_model(output, seed=seed, force=force)
    info = read_build_info(path)
    reused = not force and before is not None and before == info.get("fingerprint")
    status = "already built" if reused else f"built in {time.perf_counter() - started:.2f} s"
    typer.echo(str(path))
    typer.echo(f"{info.get('parameters', 0):,} parameters (seed {info.get('seed')}, {status})")
