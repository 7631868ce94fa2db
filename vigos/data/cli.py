"""`vigos data synth|prepare`. Option defaults come from DataConfig (the one home of defaults) through the usual
preset <- --config <- --set layering (an explicit option wins); heavy imports (datasets) happen inside the commands
so `vigos --help` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vigos.config import PRESETS, DataConfig
from vigos.data import synthetic  # light: it imports datasets only when it generates

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

_DEFAULTS = DataConfig()


@app.command()
def synth(
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="PATH", help="Folder to write (a .parquet path: one file).")
    ],
    rows: Annotated[
        int, typer.Option("--rows", "-n", min=1, metavar="N", help="Number of valid rows.")
    ] = synthetic.DEFAULT_ROWS,
    seed: Annotated[
        int, typer.Option("--seed", metavar="N", help="Random seed: same seed, same dataset.")
    ] = _DEFAULTS.seed,
    fmt: Annotated[
        synthetic.Format,
        typer.Option(
            "--format",
            "-f",
            help="Layout: a save_to_disk folder, parquet in the Hub's layout (data/train-*), or JSONL + image files.",
        ),
    ] = "disk",
    bad_rows: Annotated[
        bool,
        typer.Option("--bad-rows/--no-bad-rows", metavar="", help="Also plant rows that data prep must drop (one per reason)."),
    ] = False,
) -> None:
    """Write a synthetic dataset in Vision-SR1-47K's schema (PIL-drawn images, image-determined answers)."""
    path = synthetic.write_synthetic(output, rows, seed, fmt, bad_rows=bad_rows)
    total = rows + (sum(synthetic.PLANTED_DROPS.values()) if bad_rows else 0)
    typer.echo(f"wrote {total} rows ({fmt}) to {path}")


@app.command()
def prepare(
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="DIR", help="Folder for the prepared dataset and stats.json.")
    ],
    source: Annotated[
        str | None,
        typer.Option("--source", "-s", metavar="SOURCE",
                     help=f"HF dataset id, or a save_to_disk folder, parquet or JSONL path (default: data.source, "
                     f"{_DEFAULTS.source})."),
    ] = None,
    split: Annotated[
        str | None, typer.Option("--split", metavar="NAME", help=f"Split to read (default: {_DEFAULTS.split}).")
    ] = None,
    max_samples: Annotated[
        int | None, typer.Option("--max-samples", metavar="N", help="Keep at most this many rows (seeded shuffle); "
                                 "default: data.max_samples (all).")
    ] = None,
    min_image_size: Annotated[
        int | None, typer.Option("--min-image-size", metavar="PX", help="Drop rows whose first image is smaller "
                                 f"(px, either side; default: {_DEFAULTS.min_image_size}).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", metavar="N", help=f"Seed of the --max-samples shuffle (default: "
                                 f"{_DEFAULTS.seed}).")
    ] = None,
    num_proc: Annotated[
        int | None, typer.Option("--num-proc", metavar="N", help="Worker processes for checking rows (default: "
                                 f"{_DEFAULTS.num_proc}).")
    ] = None,
    preset: Annotated[
        str, typer.Option("--preset", metavar="NAME", help=f"Config preset: {', '.join(PRESETS)}.")
    ] = "paper-7b",
    config: Annotated[
        Path | None, typer.Option("--config", "-c", metavar="FILE", help="YAML file of config overrides (data: ...).")
    ] = None,
    override: Annotated[
        list[str],
        typer.Option("--set", metavar="KEY=VALUE", help="Config override `section.key=value`, e.g. data.max_samples=100."),
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", metavar="", help="Show progress bars.")
    ] = True,
) -> None:
    """Validate, filter, normalise and deduplicate a training set; write it with stats.json."""
    from vigos.config import load_config
    from vigos.data.prepare import prepare as run_prepare
    from vigos.data.prepare import summary_lines

    given = {"source": source, "split": split, "max_samples": max_samples, "min_image_size": min_image_size,
             "seed": seed, "num_proc": num_proc}
    cfg = load_config(preset, config, override, values={f"data.{k}": v for k, v in given.items() if v is not None})
    stats = run_prepare(cfg.data, output, progress=progress)
    for line in summary_lines(stats):
        typer.echo(line)
    typer.echo(f"wrote {output} (stats: {output / 'stats.json'})")
