"""`vigos eval score` (and `vigos eval run`, added beside it). Option defaults come from EvalConfig via the usual
preset <- --config <- --set layering; heavy imports happen inside the commands so `vigos --help` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from vigos.config import PRESETS, EvalConfig

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

_DEFAULTS = EvalConfig()


@app.callback()
def _group() -> None:
    """Evaluate a model on the benchmarks (`run`) and grade saved responses (`score`)."""
    # A callback keeps `score` a sub-command even while it is the only command (typer would flatten it).


def _fmt(x: float | None) -> str:
    return "  n/a" if x is None else f"{x:6.2f}"


def _summary(scores: dict[str, Any]) -> list[str]:
    lines = []
    for name, s in scores["benchmarks"].items():
        k = s["k"]
        lines.append(
            f"{name:<14} Pass@{k} {_fmt(s['pass_at_k'])}  Avg@{k} {_fmt(s['avg_at_k'])}  "
            f"(n={s['n_examples']}, {s['grader']})"
        )
    mean = scores["mean"]
    if mean["benchmarks"]:
        lines.append(
            f"{'mean':<14} Pass@k {_fmt(mean['pass_at_k'])}  Avg@k {_fmt(mean['avg_at_k'])}  "
            f"(over {len(mean['benchmarks'])} of 8)"
        )
    for name, s in scores["vilp"].items():
        lines.append(f"{name:<14} Score  {_fmt(s['score'])}  Prior {_fmt(s['prior'])}  (n={s['n_examples']})")
    return lines


@app.command()
def score(
    responses: Annotated[
        Path, typer.Argument(metavar="RESPONSES", help="A responses/ folder of <benchmark>.jsonl files, or one JSONL file.")
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar="FILE",
                     help="scores.json to write (default: scores.json beside RESPONSES)."),
    ] = None,
    grades_dir: Annotated[
        Path | None,
        typer.Option("--grades-dir", metavar="DIR",
                     help="Folder for grades/<benchmark>.jsonl (default: grades/ beside the output)."),
    ] = None,
    grader: Annotated[
        str | None,
        typer.Option(
            "--grader",
            metavar="GRADER",
            help=f"auto | rules | judge | rules+judge (default: eval.grader of the config, {_DEFAULTS.grader!r}).",
        ),
    ] = None,
    judge_cache: Annotated[
        Path | None,
        typer.Option("--judge-cache", metavar="DIR",
                     help="Folder caching judge replies (default: judge-cache/ beside the output)."),
    ] = None,
    preset: Annotated[
        str, typer.Option("--preset", metavar="NAME", help=f"Config preset: {', '.join(PRESETS)}.")
    ] = "paper-7b",
    config: Annotated[
        Path | None, typer.Option("--config", "-c", metavar="FILE", help="YAML file of config overrides.")
    ] = None,
    override: Annotated[
        list[str],
        typer.Option("--set", metavar="KEY=VALUE", help="Config override `section.key=value`, e.g. eval.judge_model=NAME."),
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
) -> None:
    """Grade saved responses (no model needed) and write grades/ and scores.json; print one line per benchmark."""
    from vigos.config import load_config
    from vigos.evaluation.score import ensure_complete, score_responses

    values = {"eval.grader": grader} if grader is not None else None
    cfg = load_config(preset, config, override, values=values).eval
    output = output if output is not None else responses.parent / "scores.json"
    grades_dir = grades_dir if grades_dir is not None else output.parent / "grades"
    judge_cache = judge_cache if judge_cache is not None else output.parent / "judge-cache"
    scores = score_responses(responses, cfg, grades_dir, output, judge_cache=judge_cache)
    for line in _summary(scores):
        typer.echo(line)
    typer.echo(f"wrote {output} and {grades_dir}/")
    ensure_complete(scores, output)  # after writing: the partial grades stay there to look at


@app.command()
def run(
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="DIR", help="Output folder: responses/<benchmark>.jsonl land here.")
    ],
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", metavar="MODEL", help="Merged model folder, or the base model's Hub id / path "
                     "(default: model.name_or_path of the config)."),
    ] = None,
    preset: Annotated[
        str, typer.Option("--preset", metavar="NAME", help=f"Config preset: {', '.join(PRESETS)}.")
    ] = "paper-7b",
    config: Annotated[
        Path | None, typer.Option("--config", "-c", metavar="FILE", help="YAML file of config overrides.")
    ] = None,
    override: Annotated[
        list[str],
        # `\[`: rich markup would take `[mmmu,cv-bench]` for a style tag and drop it from the help
        typer.Option("--set", metavar="KEY=VALUE",
                     help="Config override `section.key=value`, e.g. eval.benchmarks=\\[mmmu,cv-bench]."),
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", metavar="", help="Show a progress bar per benchmark.")
    ] = True,
    backend: Annotated[
        str | None,
        typer.Option("--backend", metavar="NAME", help="Who generates: engine (this process; torchrun for several "
                     "GPUs), openai (a server at --base-url), vllm (a vllm serve started here). Default: eval.backend "
                     "of the preset (paper-7b: vllm, tiny: engine)."),
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option("--base-url", metavar="URL", help="The openai backend's API root, e.g. http://HOST:8000/v1 "
                     "(eval.base_url)."),
    ] = None,
) -> None:
    """Sample k responses per question of every benchmark into OUTPUT/responses/ (resumes; runs under torchrun)."""
    import os

    from vigos.config import load_config
    from vigos.evaluation.run import run_eval, summary_lines

    flags = {"eval.backend": backend, "eval.base_url": base_url}
    cfg = load_config(preset, config, override, values={k: v for k, v in flags.items() if v is not None})
    counts = run_eval(model if model is not None else cfg.model.name_or_path, cfg, output, progress=progress)
    if int(os.environ.get("RANK", "0")) == 0:
        for line in summary_lines(counts):
            typer.echo(line)
        typer.echo(f"wrote {output / 'responses'}/")
