"""`vigos data synth|prepare`. Option defaults come from DataConfig (the one home of defaults); heavy imports
(datasets) happen inside the commands so `vigos --help` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vigos.config import DataConfig
from vigos.data import synthetic  # light: it imports datasets only when it generates

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

_DEFAULTS = DataConfig()


@app.command()
def synth(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write (a .parquet path: one file).")],
    rows: Annotated[int, typer.Option("--rows", "-n", min=1, help="Number of valid rows.")] = synthetic.DEFAULT_ROWS,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: same seed, same dataset.")] = _DEFAULTS.seed,
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
        typer.Option("--bad-rows/--no-bad-rows", help="Also plant rows that data prep must drop (one per reason)."),
    ] = False,
) -> None:
    """Write a synthetic dataset in Vision-SR1-47K's schema (PIL-drawn images, image-determined answers)."""
    path = synthetic.write_synthetic(output, rows, seed, fmt, bad_rows=bad_rows)
    total = rows + (sum(synthetic.PLANTED_DROPS.values()) if bad_rows else 0)
    typer.echo(f"wrote {total} rows ({fmt}) to {path}")


@app.command()
def prepare(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the prepared dataset and stats.json.")],
    source: Annotated[
        str, typer.Option("--source", "-s", help="HF dataset id, or a save_to_disk folder, parquet or JSONL path.")
    ] = _DEFAULTS.source,
    split: Annotated[str, typer.Option("--split", help="Split to read.")] = _DEFAULTS.split,
    max_samples: Annotated[
        int | None, typer.Option("--max-samples", help="Keep at most this many rows (seeded shuffle); default all.")
    ] = _DEFAULTS.max_samples,
    min_image_size: Annotated[
        int, typer.Option("--min-image-size", help="Drop rows whose first image is smaller (px, either side).")
    ] = _DEFAULTS.min_image_size,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the --max-samples shuffle.")] = _DEFAULTS.seed,
    num_proc: Annotated[
        int, typer.Option("--num-proc", help="Worker processes for checking rows.")
    ] = _DEFAULTS.num_proc,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
) -> None:
    """Validate, filter, normalise and deduplicate a training set; write it with stats.json."""
    from vigos.data.prepare import prepare as run_prepare
    from vigos.data.prepare import summary_lines

    cfg = DataConfig(
        source=source,
        split=split,
        max_samples=max_samples,
        min_image_size=min_image_size,
        seed=seed,
        num_proc=num_proc,
    )
    stats = run_prepare(cfg, output, progress=progress)
    for line in summary_lines(stats):
        typer.echo(line)
    typer.echo(f"wrote {output} (stats: {output / 'stats.json'})")
