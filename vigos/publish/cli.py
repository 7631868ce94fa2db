"""`vigos publish hub|registry`.

Option defaults come from the config (preset <- --config/--train-config <- --set): `model.name_or_path`,
`data.source` and the `publish` section (`hub_repo_id`, `hub_private`, `hub_token_env`, `license`,
`registered_model`, `gate_metric`). An empty `publish.hub_repo_id` means a dry run (PublishConfig): the exact folder
is staged under a placeholder repo id and nothing is sent. The training hardware is not in the config, so the card's
`--gpus` / `--gpu-type` are given on the command line.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer

from vigos.config import PRESETS
from vigos.errors import VigosError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

Preset = Annotated[str, typer.Option(help=f"Config preset: {', '.join(PRESETS)}.")]
Overrides = Annotated[list[str], typer.Option("--set", help="Config override `section.key=value` (repeatable).")]


@app.callback()
def _group() -> None:
    """Publish a merged model: Hugging Face Hub upload with a model card, MLflow registry version + aliases."""


def _read_json(path: Path | None, what: str) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise VigosError(f"{path}: no such {what} file") from None
    except json.JSONDecodeError as e:
        raise VigosError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}); pass the {what} JSON") from None
    if not isinstance(data, dict) or ("benchmarks" not in data and "vilp" not in data):
        raise VigosError(f"{path}: not a scores JSON (expected keys benchmarks/mean/vilp, from `vigos eval score`)")
    return data


def _merge_base(model: Path) -> str | None:
    """The base model the merge step recorded (`vigos_merge.json`), the most faithful answer when present."""
    record = model / "vigos_merge.json"
    if record.is_file():
        return json.loads(record.read_text()).get("base_model")
    return None


@app.command()
def hub(
    model: Annotated[Path, typer.Option("--model", "-m", help="Merged model folder (the merge step's output).")],
    gpus: Annotated[int, typer.Option(help="GPUs the model was trained on (0: CPU), for the card.")],
    repo_id: Annotated[
        str | None, typer.Option("--repo-id", help="OWNER/NAME (default: publish.hub_repo_id; empty: dry run).")
    ] = None,
    private: Annotated[
        bool | None, typer.Option("--private/--public", help="Repo visibility (default: publish.hub_private).")
    ] = None,
    scores: Annotated[Path | None, typer.Option("--scores", help="This model's scores.json (card results).")] = None,
    baseline: Annotated[
        Path | None, typer.Option("--baseline", help="The base model's scores.json (a column beside ours).")
    ] = None,
    train_config: Annotated[
        Path | None,
        typer.Option("--train-config", "-c", help="Config the model was trained with (YAML/JSON, e.g. the train "
                     "step's config.yaml); the card's hyper-parameters come from it (default: the preset)."),
    ] = None,
    base_model: Annotated[
        str | None, typer.Option(help="Base model id (default: vigos_merge.json, else model.name_or_path).")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Training dataset id (default: data.source).")] = None,
    gpu_type: Annotated[str | None, typer.Option(help="GPU model, e.g. A100 (needed when --gpus > 0).")] = None,
    license_: Annotated[str | None, typer.Option("--license", help="Hub license id (default: publish.license).")] = None,
    token_env: Annotated[
        str | None, typer.Option(help="NAME of the env var holding the Hub token (default: publish.hub_token_env).")
    ] = None,
    dry_run: Annotated[
        bool | None,
        typer.Option("--dry-run/--upload", help="Only stage the folder + manifest (default: dry run when no repo id)."),
    ] = None,
    staging: Annotated[
        Path | None, typer.Option("--staging", help="Staging folder (default: $VIGOS_HOME/hub-staging/NAME).")
    ] = None,
    preset: Preset = "paper-7b",
    override: Overrides = [],  # noqa: B006 - typer reads the default, never mutates it
) -> None:
    """Write the model card, stage the exact upload folder + manifest, and upload it (unless --dry-run)."""
    from vigos.config import load_config
    from vigos.publish.hub import publish_to_hub
    from vigos.publish.model_card import render_model_card
    from vigos.tracking import vigos_home

    cfg = load_config(preset, train_config, override)
    pub = cfg.publish
    repo = repo_id if repo_id is not None else pub.hub_repo_id
    is_dry = dry_run if dry_run is not None else not repo
    if not repo:
        if not is_dry:
            raise VigosError("--upload needs --repo-id OWNER/NAME (publish.hub_repo_id is empty)")
        repo = f"your-org/{pub.registered_model}"  # a placeholder id (as the DAG step uses): nothing is sent
    if gpus > 0 and not gpu_type:
        raise VigosError(f"--gpus {gpus} needs --gpu-type (e.g. A100): the card states the training hardware")
    card = render_model_card(
        repo_id=repo,
        base_model=base_model or _merge_base(model) or cfg.model.name_or_path,
        dataset=dataset or cfg.data.source,
        train_config=cfg.to_dict(),
        scores=_read_json(scores, "scores") or {},
        baseline=_read_json(baseline, "baseline scores"),
        license=license_ or pub.license,
        num_gpus=gpus,
        gpu_type=gpu_type or "",
    )
    result = publish_to_hub(
        model, repo_id=repo, private=pub.hub_private if private is None else private, card_text=card,
        token_env=token_env or pub.hub_token_env, dry_run=is_dry,
        staging_dir=staging or vigos_home() / "hub-staging" / repo.split("/")[-1],
    )
    typer.echo(f"{'staged' if result.dry_run else 'uploaded'} {len(result.files)} files for {repo} "
               f"({result.folder}; manifest {result.manifest})")
    if result.url:
        typer.echo(f"repo: {result.url}")
    elif result.dry_run:
        typer.echo("dry run: nothing was uploaded (pass --upload to publish)")


@app.command()
def registry(
    scores: Annotated[Path, typer.Option("--scores", help="This model's scores.json (tags + gate).")],
    source: Annotated[
        str | None, typer.Option("--source", help="The merged model's artifact URI (s3://, gs://, runs:/...) or path.")
    ] = None,
    log_model: Annotated[
        Path | None,
        typer.Option("--log-model", help="Copy this model folder into --run-id's artifacts and register that "
                     "(instead of --source; for a server that cannot reach the model's storage)."),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Registered model (default: publish.registered_model).")
    ] = None,
    gate_metric: Annotated[
        str | None,
        typer.Option("--gate-metric", help="Score that decides champion, e.g. mean.pass_at_k (default: "
                     "publish.gate_metric)."),
    ] = None,
    kfp_run_id: Annotated[
        str | None,
        typer.Option("--kfp-run-id", help="Pipeline run id: a re-run with the same id reuses its version "
                     "(default: a new id, printed)."),
    ] = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="MLflow run that produced the model.")] = None,
    base_model: Annotated[str | None, typer.Option(help="Base model id (default: model.name_or_path).")] = None,
    dataset: Annotated[str | None, typer.Option(help="Training dataset id (default: data.source).")] = None,
    tag: Annotated[list[str], typer.Option("--tag", help="Extra version tag KEY=VALUE (repeatable).")] = [],  # noqa: B006
    preset: Preset = "paper-7b",
    config: Annotated[Path | None, typer.Option("--config", help="YAML file of config overrides.")] = None,
    override: Overrides = [],  # noqa: B006 - typer reads the default, never mutates it
) -> None:
    """Register the model in MLflow (tags = scores), alias it `candidate`, and `champion` if it beats the champion."""
    from vigos.config import load_config
    from vigos.publish.registry import CHAMPION, log_model_dir, register_model_version

    cfg = load_config(preset, config, override)
    if (source is None) == (log_model is None):
        raise VigosError("give exactly one of --source URI and --log-model DIR")
    if log_model is not None:
        if not run_id:
            raise VigosError("--log-model needs --run-id (the MLflow run whose artifacts receive the model)")
        source = log_model_dir(log_model, run_id=run_id)
    extra = {}
    for item in tag:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise VigosError(f"--tag {item!r} is not KEY=VALUE")
        extra[key] = value
    kfp = kfp_run_id or f"cli-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    assert source is not None
    r = register_model_version(
        name or cfg.publish.registered_model, source, run_id=run_id, kfp_run_id=kfp,
        scores=_read_json(scores, "scores") or {}, base_model=base_model or cfg.model.name_or_path,
        dataset=dataset or cfg.data.source, gate_metric=gate_metric or cfg.publish.gate_metric,
        tags=extra,
    )
    state = "re-applied (this run's version existed)" if r.reused else "registered"
    typer.echo(f"{state} {r.name} version {r.version} (kfp run {kfp}); aliases: {', '.join(r.aliases) or '-'}")
    typer.echo(f"{CHAMPION}: {'moved to this version' if r.champion_moved else 'unchanged'} "
               f"(previous: {('v' + str(r.previous_champion)) if r.previous_champion else 'none'}); "
               f"load with models:/{r.name}@{CHAMPION if CHAMPION in r.aliases else 'candidate'}")
