"""`vigos config show`: print the resolved config (preset <- YAML <- overrides) as YAML."""

from __future__ import annotations

from pathlib import Path

import typer

from vigos.config import PRESETS, dump_config, load_config

app = typer.Typer(no_args_is_help=True)


@app.command("show")
def show(
    preset: str = typer.Option("paper-7b", "--preset", metavar="NAME", help=f"One of: {', '.join(PRESETS)}."),
    config: Path | None = typer.Option(None, "--config", "-c", metavar="FILE",
                                       help="YAML file of overrides (nested sections)."),
    override: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                       help="Override `section.key=value` (repeatable)."),
) -> None:
    """Print the resolved config."""
    typer.echo(dump_config(load_config(preset, config, override)), nl=False)
