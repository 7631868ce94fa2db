"""`vigos model ...`: model utilities."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vigos.config import PRESETS, home_path
from vigos.modeling.warmup import WarmupSettings

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

_TINY_DEFAULT_DIR = PRESETS["tiny"]["model"]["name_or_path"]  # `.vigos/tiny-model`: under $VIGOS_HOME when set
_WHERE = "$VIGOS_HOME/tiny-model if set, else .vigos/tiny-model"
_WARMUP = WarmupSettings()


@app.callback()
def _group() -> None:
    """Model utilities (tiny random Qwen2.5-VL for the demo and tests, and its warm-up)."""


@app.command("tiny")
def tiny(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar="DIR",
                     help=f"Folder to write the tiny model to (default: the tiny preset's path, {_WHERE})."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random weights.")] = 0,
    force: Annotated[
        bool, typer.Option("--force", metavar="", help="Rebuild even if the folder already holds the same build.")
    ] = False,
) -> None:
    """Build a tiny random Qwen2.5-VL (+ offline tokenizer/processor) loadable like the real model."""
    import time

    from vigos.modeling.tiny import build_tiny_model, read_build_info

    output = output if output is not None else Path(home_path(_TINY_DEFAULT_DIR))
    before = read_build_info(output).get("fingerprint")
    started = time.perf_counter()
    path = build_tiny_model(output, seed=seed, force=force)
    info = read_build_info(path)
    reused = not force and before is not None and before == info.get("fingerprint")
    status = "already built" if reused else f"built in {time.perf_counter() - started:.2f} s"
    typer.echo(str(path))
    typer.echo(f"{info.get('parameters', 0):,} parameters (seed {info.get('seed')}, {status})")


@app.command("warm-up")
def warm_up(
    base: Annotated[
        Path | None,
        typer.Option("--base", metavar="DIR", help=f"A tiny build (`vigos model tiny`) to start from (default: {_WHERE})."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar="DIR",
                     help="Folder to write the warmed-up model to (default: the same place + `-warm`: "
                     "$VIGOS_HOME/tiny-model-warm if set, else .vigos/tiny-model-warm)."),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", help="Optimizer steps.")] = _WARMUP.steps,
    learning_rate: Annotated[float, typer.Option("--lr", help="Peak learning rate (linear decay to 0).")] = (
        _WARMUP.learning_rate
    ),
    seed: Annotated[int, typer.Option("--seed", help="Seed of the data order and of the warm-up rows.")] = 0,
    check: Annotated[
        int, typer.Option("--check", help="Then sample this many rollouts as training does; print the valid share.")
    ] = 0,
    force: Annotated[
        bool, typer.Option("--force", metavar="", help="Redo it even if the output already holds it.")
    ] = False,
) -> None:
    """Warm a tiny build up on well-formed ViGOS answers, so some of its rollouts are well formed (the demo's base).

    A short supervised pass on synthetic answers: every teacher of the objective then gets work."""
    import dataclasses
    import time

    from vigos.modeling.warmup import WarmupSettings, read_warmup_info, valid_share, warm_up_model

    base = base if base is not None else Path(home_path(_TINY_DEFAULT_DIR))
    output = output if output is not None else Path(home_path(_TINY_DEFAULT_DIR + "-warm"))
    settings = dataclasses.replace(WarmupSettings(), steps=steps, learning_rate=learning_rate, seed=seed)
    before = read_warmup_info(output).get("fingerprint")
    started = time.perf_counter()
    path = warm_up_model(base, output, settings, force=force)
    info = read_warmup_info(path)
    reused = not force and before is not None and before == info.get("fingerprint")
    status = "already done" if reused else f"done in {time.perf_counter() - started:.1f} s"
    typer.echo(str(path))
    loss = f"loss {info['first_loss']:.3g} -> {info['final_loss']:.3g}"
    typer.echo(f"{info['settings']['steps']} steps, {loss} ({status})")
    if check > 0:
        typer.echo(f"well-formed rollouts: {valid_share(path, rows=check):.0%} of {check}")
