"""MLflow Model Registry: one model version per pipeline run, with its scores as tags, and two aliases.

- `candidate` always points at the version registered last (what this run produced).
- `champion` moves to it only when its gate metric (e.g. `mean.pass_at_k`) is STRICTLY greater than the current
  champion's. The first version becomes champion. A champion without the gate metric's tag (registered by hand, or
  with another gate metric) counts as beaten: a version we cannot compare should not block one we can. Every
  metric we gate on is a percentage where higher is better.

A version is keyed by its `kfp.run_id` tag: re-running the publish step of the same pipeline run finds the version it
registered before instead of creating a second one, then re-applies tags and aliases (idempotent). Two attempts
racing both keep the OLDEST version and the loser deletes its own (the pattern of `vigos.tracking`).

MLflow 3 notes (shared/design/STACK-NOTES.md): `mlflow.register_model` needs a LoggedModel, so the version is created
with `MlflowClient.create_model_version(name, source=...)`. The pipeline registers from the tracking server's own
artifact store (`runs:/<run>/model`, see `log_model_dir`), so `models:/<name>@champion` resolves for anyone who can
reach the tracking server: a path on the pipeline's volume, or KFP's `minio://` artifact URI (no MLflow scheme),
would not load outside the pipeline.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vigos.errors import VigosError
from vigos.evaluation.metrics import flatten_scores
from vigos.tracking import TAG_KFP_RUN, tracking_uri

log = logging.getLogger(__name__)

CANDIDATE = "candidate"
CHAMPION = "champion"
SCORE_PREFIX = "score."
TAG_BASE_MODEL = "vigos.base_model"
TAG_DATASET = "vigos.dataset"
TAG_GATE_METRIC = "gate.metric"
TAG_GATE_DECISION = "gate.decision"
MODEL_ARTIFACT_PATH = "model"
"""Where `log_model_dir` puts the model folder inside the run's artifacts."""


@dataclass(frozen=True)
class RegistrationResult:
    name: str
    version: int
    aliases: list[str]
    """Every alias the version holds after the call (read back from the registry)."""
    champion_moved: bool
    """True when THIS call moved `champion` to the version."""
    reused: bool
    """True when the version already existed for this KFP run (a re-run): nothing new was created."""
    gate_value: float
    previous_champion: int | None
    """The champion's version before this call (None: there was none)."""
    source: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _tag_value(value: float) -> str:
    # repr round-trips exactly, so a re-run compares the very number it wrote
    return str(value) if isinstance(value, int) else repr(float(value))


def score_tags(scores: Mapping[str, Any]) -> dict[str, str]:
    tags = {f"{SCORE_PREFIX}{k}": _tag_value(v) for k, v in flatten_scores(scores).items()}
    if isinstance(scores.get("grader"), str):
        tags[f"{SCORE_PREFIX}grader"] = scores["grader"]
    return tags


def log_model_dir(model_dir: str | Path, *, run_id: str) -> str:
    """Copy a model folder into an MLflow run's artifacts; returns the `runs:/` URI to register as its source.

    For a tracking server that cannot reach the model's own storage (or refuses a local path as source).
    """
    path = Path(model_dir)
    if not path.is_dir():
        raise VigosError(f"{path}: no such model folder (point --log-model at the merged model)")
    _client().log_artifacts(run_id, str(path), MODEL_ARTIFACT_PATH)
    return f"runs:/{run_id}/{MODEL_ARTIFACT_PATH}"


def register_model_version(
    name: str,
    source: str,
    *,
    run_id: str | None,
    kfp_run_id: str,
    scores: Mapping[str, Any],
    base_model: str,
    dataset: str,
    gate_metric: str,
    tags: Mapping[str, str] | None = None,
) -> RegistrationResult:
    """Register `source` as a version of `name` (or find the one this KFP run registered), tag it, set aliases.

    `gate_metric` is a key of `flatten_scores` (e.g. `mean.pass_at_k`, `mmmu.avg_at_k`, `vilp-f.score`).
    """
    flat = flatten_scores(scores)
    if gate_metric not in flat:
        some = ", ".join(k for k in flat if k.startswith("mean.")) or ", ".join(list(flat)[:6]) or "none"
        raise VigosError(f"gate metric {gate_metric!r} is not in the scores (available e.g.: {some}); "
                         "pass --gate-metric with one of them, or check that the scores JSON is not empty")
    gate_value = float(flat[gate_metric])
    gate_tag = f"{SCORE_PREFIX}{gate_metric}"
    all_tags = {
        **score_tags(scores), TAG_KFP_RUN: kfp_run_id, TAG_BASE_MODEL: base_model, TAG_DATASET: dataset,
        TAG_GATE_METRIC: gate_metric, **(tags or {}),
    }
    client = _client()
    _ensure_registered_model(client, name)
    existing = _versions_of_run(client, name, kfp_run_id)
    reused = bool(existing)
    if existing:
        mv = existing[0]
        for key, value in all_tags.items():  # a re-run re-applies only what changed
            if mv.tags.get(key) != value:
                client.set_model_version_tag(name, mv.version, key, value)
    else:
        mv = _create_version(client, name, source, run_id, all_tags,
                             description=f"KFP run {kfp_run_id}: {gate_metric} = {gate_value:.2f}")
    version = str(mv.version)

    client.set_registered_model_alias(name, CANDIDATE, version)
    champion = _alias_version(client, name, CHAMPION)
    previous = int(champion.version) if champion is not None else None
    if champion is None:
        moved, decision = True, "first version: champion"
    elif str(champion.version) == version:
        moved, decision = False, mv.tags.get(TAG_GATE_DECISION) or "already champion"
    else:
        current = _as_float(champion.tags.get(gate_tag))
        if current is None:
            moved, decision = True, f"champion v{champion.version} has no {gate_tag} tag: counted as beaten"
        elif gate_value > current:
            moved, decision = True, f"{gate_metric} {gate_value:.4g} > champion v{champion.version}'s {current:.4g}"
        else:
            moved, decision = False, (f"{gate_metric} {gate_value:.4g} <= champion v{champion.version}'s "
                                      f"{current:.4g}: candidate only")
    if moved:
        client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, TAG_GATE_DECISION, decision)
    log.info("registered %s v%s (%s)", name, version, decision)
    aliases = sorted(client.get_model_version(name, version).aliases)
    return RegistrationResult(name, int(version), aliases, moved, reused, gate_value, previous, mv.source)


def _client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri())


def _error_code(e: Exception) -> str:
    return str(getattr(e, "error_code", ""))


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" not in _error_code(e):
            raise
    try:
        client.create_registered_model(name, description="ViGOS post-trained models (vigos publish registry).")
    except MlflowException as e:  # created concurrently by another run
        if "RESOURCE_ALREADY_EXISTS" not in _error_code(e):
            raise


def _quote(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("'", "\\'")


def _versions_of_run(client: Any, name: str, kfp_run_id: str) -> list[Any]:
    """Versions of `name` registered by this KFP run, oldest first."""
    found = client.search_model_versions(f"name = '{_quote(name)}' and tags.`{TAG_KFP_RUN}` = '{_quote(kfp_run_id)}'")
    return sorted(found, key=lambda mv: int(mv.version))


def _create_version(client: Any, name: str, source: str, run_id: str | None, tags: dict[str, str],
                    description: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        mine = client.create_model_version(name, source=source, run_id=run_id, tags=tags, description=description)
    except MlflowException as e:
        if "INVALID_PARAMETER_VALUE" in _error_code(e) and "source" in str(e).lower():
            raise VigosError(
                f"the MLflow registry at {tracking_uri()} refuses {source!r} as a model version source "
                f"({str(e).splitlines()[0][:300]}); register the model's remote artifact URI (s3://, gs://, "
                "minio://...) or copy the folder into the run first (CLI: --log-model DIR --run-id RUN)"
            ) from None
        raise
    # two attempts of the same run may have raced: keep the oldest, drop ours if it is not
    runs = _versions_of_run(client, name, tags[TAG_KFP_RUN])
    if runs and str(runs[0].version) != str(mine.version):
        client.delete_model_version(name, mine.version)
        return runs[0]
    return mine


def _alias_version(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:  # no such alias (the server answers INVALID_PARAMETER_VALUE or NOT_EXIST)
        if _error_code(e) in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"):
            return None
        raise


def _as_float(value: str | None) -> float | None:
    try:
        out = float(value) if value is not None else None
    except ValueError:
        return None
    return out if out is not None and math.isfinite(out) else None
