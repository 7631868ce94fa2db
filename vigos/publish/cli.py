"""`vigos publish hub|registry`.

What the model IS comes from the records beside it (`vigos.publish.provenance`), never from the preset: the training
config and hardware from the adapter's `vigos_train_config.json` / `vigos_train_info.json` (the adapter is `--adapter`,
or the one the merged model's `vigos_merge.json` names), the base model from `vigos_merge.json`, the evaluation
settings from the scores' eval folder (`responses/eval_run.json` beside scores.json). An explicit option
(`--train-config`, `--base-model`, `--dataset`, `--gpus`) wins; with neither the option nor the record the command
stops and says what to pass rather than guessing.

The `publish` section's defaults (`hub_repo_id`, `hub_private`, `hub_token_env`, `license`, `registered_model`,
`gate_metric`) come from the config (preset <- --config/--train-config or the adapter's config <- --set). An empty
`publish.hub_repo_id` means a dry run (PublishConfig): the exact folder is staged under a placeholder repo id and
nothing is sent.
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


def _training(model: Path | None, adapter: Path | None, *, needed: bool, what_to_pass: str) -> Any:
    """The adapter's training records (`--adapter`, else the one `model`'s vigos_merge.json names); None when they
    cannot be found and not `needed` (an explicit option stands in for them)."""
    from vigos.publish.provenance import find_training

    if model is None and adapter is None:
        if needed:
            raise VigosError(f"no training records to read: pass {what_to_pass}")
        return None
    try:
        return find_training(model, adapter)
    except VigosError as e:
        if needed:
            raise VigosError(f"cannot tell how the model was trained: {e}; pass {what_to_pass}") from None
        return None


@app.command()
def hub(
    model: Annotated[Path, typer.Option("--model", "-m", help="Merged model folder (the merge step's output).")],
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
    adapter: Annotated[
        Path | None,
        typer.Option("--adapter", help="The adapter folder the model was merged from, holding the training records "
                     "(default: the adapter named in the model's vigos_merge.json)."),
    ] = None,
    train_config: Annotated[
        Path | None,
        typer.Option("--train-config", "-c", help="Config the model was trained with (YAML/JSON, e.g. the train "
                     "step's config.yaml); wins over the adapter's vigos_train_config.json."),
    ] = None,
    base_model: Annotated[
        str | None, typer.Option(help="Base model (default: vigos_merge.json, else the training config's).")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Training data (default: the training config's data.source).")
    ] = None,
    gpus: Annotated[
        int | None, typer.Option(help="GPUs the model was trained on, 0: CPU (default: vigos_train_info.json).")
    ] = None,
    gpu_type: Annotated[str | None, typer.Option(help="GPU model, e.g. A100 (default: vigos_train_info.json).")] = None,
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
    from vigos.publish.provenance import eval_settings, merge_record
    from vigos.tracking import vigos_home

    training = _training(model, adapter, needed=train_config is None,
                         what_to_pass="--train-config FILE (the train step's config.yaml) or --adapter DIR")
    cfg = load_config(preset, train_config or training.config_path, override)
    pub = cfg.publish
    repo = repo_id if repo_id is not None else pub.hub_repo_id
    is_dry = dry_run if dry_run is not None else not repo
    if not repo:
        if not is_dry:
            raise VigosError("--upload needs --repo-id OWNER/NAME (publish.hub_repo_id is empty)")
        repo = f"your-org/{pub.registered_model}"  # a placeholder id (as the DAG step uses): nothing is sent
    recorded = training.hardware() if training is not None else None
    if gpus is None and recorded is None:
        raise VigosError("the training hardware is not recorded (no vigos_train_info.json in the adapter): pass "
                         "--gpus N (0: CPU) and --gpu-type, e.g. A100")
    num_gpus, gpu = recorded if gpus is None else (gpus, "")
    gpu = gpu_type or gpu
    if num_gpus > 0 and not gpu:
        raise VigosError(f"--gpus {num_gpus} needs --gpu-type (e.g. A100): the card states the training hardware")
    card = render_model_card(
        repo_id=repo,
        base_model=base_model or (merge_record(model) or {}).get("base_model") or cfg.model.name_or_path,
        dataset=dataset,
        train_config=cfg.to_dict(),
        scores=_read_json(scores, "scores") or {},
        baseline=_read_json(baseline, "baseline scores"),
        license=license_ or pub.license,
        num_gpus=num_gpus,
        gpu_type=gpu,
        eval_settings=eval_settings(scores.parent) if scores is not None else {},
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
    adapter: Annotated[
        Path | None,
        typer.Option("--adapter", help="The adapter folder holding the training records (default: the adapter "
                     "named in --log-model's vigos_merge.json)."),
    ] = None,
    base_model: Annotated[
        str | None, typer.Option(help="Base model (default: vigos_merge.json, else the training config's).")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Training data (default: the training config's data.source).")
    ] = None,
    tag: Annotated[list[str], typer.Option("--tag", help="Extra version tag KEY=VALUE (repeatable).")] = [],  # noqa: B006
    preset: Preset = "paper-7b",
    config: Annotated[Path | None, typer.Option("--config", help="YAML file of config overrides.")] = None,
    override: Overrides = [],  # noqa: B006 - typer reads the default, never mutates it
) -> None:
    """Register the model in MLflow (tags = scores + evaluation settings), alias it `candidate`, and `champion` if
    its evaluation settings equal the champion's and it beats the champion's gate metric.

    The evaluation settings are read from the eval folder of --scores (`responses/eval_run.json` beside it)."""
    from vigos.config import load_config
    from vigos.publish.provenance import eval_settings, merge_record
    from vigos.publish.registry import CHAMPION, log_model_dir, register_model_version

    cfg = load_config(preset, config, override)
    if (source is None) == (log_model is None):
        raise VigosError("give exactly one of --source URI and --log-model DIR")
    recorded_base = (merge_record(log_model) or {}).get("base_model") if log_model is not None else None
    training = _training(log_model, adapter, needed=not dataset or not (base_model or recorded_base),
                         what_to_pass="--dataset and --base-model, or --adapter DIR")
    base = base_model or recorded_base or training.config["model"]["name_or_path"]
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
        scores=_read_json(scores, "scores") or {}, base_model=base,
        dataset=dataset or training.dataset, gate_metric=gate_metric or cfg.publish.gate_metric,
        eval_settings=eval_settings(scores.parent), tags=extra,
    )
    state = "re-applied (this run's version existed)" if r.reused else "registered"
    typer.echo(f"{state} {r.name} version {r.version} (kfp run {kfp}); aliases: {', '.join(r.aliases) or '-'}")
    typer.echo(f"{CHAMPION}: {'moved to this version' if r.champion_moved else 'unchanged'} "
               f"(previous: {('v' + str(r.previous_champion)) if r.previous_champion else 'none'}); "
               f"load with models:/{r.name}@{CHAMPION if CHAMPION in r.aliases else 'candidate'}")
    typer.echo(f"gate: {r.decision}")
