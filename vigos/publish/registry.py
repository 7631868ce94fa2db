"""MLflow Model Registry: one model version per pipeline run, with its scores as tags, and two aliases.

- `candidate` always points at the version registered last (what this run produced).
- `champion` moves to it only when its evaluation settings equal the champion's AND its gate metric (e.g.
  `mean.pass_at_k`) is STRICTLY greater than the champion's. Every metric we gate on is a percentage where higher
  is better. The first version becomes champion.

Like with like: every version carries its evaluation settings as `eval.*` tags (`eval_settings_tags`: the benchmark
set, per benchmark the examples scored, k and grader, the sampling, seed, image budget, dtype, prefill, student
prompt, judge model, and whatever else `vigos eval run` records). A candidate whose settings differ from the
champion's in any tag (one missing on either side counts) stays candidate, and its `gate.decision` tag says which
settings differ ("bench.mmmu.n_examples 100 vs 900", "max_examples 100 vs all" where the eval record has it): a
higher score on an easier subset is not a better model. Changing the evaluation protocol therefore needs a person:
move `champion` by hand, or register under a new name.
A champion WITHOUT `eval.*` tags (registered before they existed, or by hand) cannot be compared; it does not block:
the candidate replaces it and becomes the first comparable champion, with that reason in `gate.decision`. Blocking
would leave every later run candidate forever unless someone moved the alias. (Same for a champion without the gate
metric's tag: it counts as beaten.)

A version is keyed by its `kfp.run_id` tag: re-running the publish step of the same pipeline run finds the version it
registered before instead of creating a second one, then re-applies tags and aliases (idempotent). Two attempts
racing both keep the OLDEST version and the loser deletes its own (the pattern of `vigos.tracking`).

MLflow 3 facts (measured on MLflow 3.17): `mlflow.register_model` needs a LoggedModel, so the version is created
with `MlflowClient.create_model_version(name, source=...)`. The pipeline registers from the tracking server's own
artifact store (`runs:/<run>/model`, see `log_model_dir`), so `models:/<name>@champion` resolves for anyone who can
reach the tracking server: a path on the pipeline's volume, or KFP's `minio://` artifact URI (no MLflow scheme),
would not load outside the pipeline.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vigos.config import flatten_dict
from vigos.errors import VigosError
from vigos.evaluation.metrics import flatten_scores, score_rows
from vigos.tracking import TAG_KFP_RUN, tracking_uri

log = logging.getLogger(__name__)

CANDIDATE = "candidate"
CHAMPION = "champion"
SCORE_PREFIX = "score."
TAG_BASE_MODEL = "vigos.base_model"
TAG_DATASET = "vigos.dataset"
TAG_GATE_METRIC = "gate.metric"
TAG_GATE_DECISION = "gate.decision"
EVAL_PREFIX = "eval."
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
    decision: str
    """Why `champion` moved or stayed (also the version's `gate.decision` tag)."""

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


def _setting(key: str, value: Any) -> str:
    if value is None:
        return "all" if key == "max_examples" else "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return _tag_value(value)
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def eval_settings_tags(scores: Mapping[str, Any], settings: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The evaluation settings behind `scores`, as `eval.*` tags; two versions' gate values are compared only when
    these are equal.

    `settings`: what `vigos eval run` recorded (`eval_run.json` "settings", `provenance.eval_settings`): sampling,
    seed, image budget, dtype, prefill, student prompt, ..., all kept (flattened) so that a setting recorded later
    takes part too. From scores.json: the benchmark set; per benchmark `n_examples`, `k` and the grader label; the
    student prompt (when the settings lack it) and the judge model.

        {"eval.benchmarks": "cv-bench,mmmu,vilp-f", "eval.sampling.temperature": "1.0", "eval.seed": "42", ...,
         "eval.student_prompt": "release", "eval.bench.mmmu.n_examples": "900", "eval.bench.mmmu.k": "5",
         "eval.bench.mmmu.grader": "rules", ...}
    """
    rows = dict(score_rows(scores))
    record: dict[str, str] = {"benchmarks": ",".join(sorted(rows))}
    record |= {k: _setting(k, v) for k, v in flatten_dict(dict(settings or {}))}
    if isinstance(scores.get("student_prompt"), str):
        record.setdefault("student_prompt", scores["student_prompt"])
    judge = (scores.get("judge") or {}).get("model") if isinstance(scores.get("judge"), Mapping) else None
    if judge:
        record["judge_model"] = str(judge)
    for name in sorted(rows):
        for field in ("n_examples", "k", "grader"):
            if rows[name].get(field) is not None:
                record[f"bench.{name}.{field}"] = _setting(field, rows[name][field])
    return {EVAL_PREFIX + k: v for k, v in record.items()}


def settings_differences(mine: Mapping[str, str], theirs: Mapping[str, str]) -> list[str]:
    """`"<setting> <mine> vs <theirs>"` for each `eval.*` tag that differs ("-": not set on that side)."""
    keys = [k for k in mine if k.startswith(EVAL_PREFIX)]
    keys += [k for k in theirs if k.startswith(EVAL_PREFIX) and k not in mine]
    first = [f"{EVAL_PREFIX}benchmarks", f"{EVAL_PREFIX}max_examples"]  # the usual reason, named first
    keys.sort(key=lambda k: first.index(k) if k in first else len(first))
    return [f"{k[len(EVAL_PREFIX):]} {mine.get(k, '-')} vs {theirs.get(k, '-')}"
            for k in keys if mine.get(k) != theirs.get(k)]


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
    eval_settings: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> RegistrationResult:
    """Register `source` as a version of `name` (or find the one this KFP run registered), tag it, set aliases.

    `gate_metric` is a key of `flatten_scores` (e.g. `mean.pass_at_k`, `mmmu.avg_at_k`, `vilp-f.score`).
    `eval_settings`: the evaluation's recorded settings (`provenance.eval_settings(eval_dir)`), which with the
    scores make the version's `eval.*` tags (`eval_settings_tags`).
    """
    flat = flatten_scores(scores)
    if gate_metric not in flat:
        some = ", ".join(k for k in flat if k.startswith("mean.")) or ", ".join(list(flat)[:6]) or "none"
        raise VigosError(f"gate metric {gate_metric!r} is not in the scores (available e.g.: {some}); "
                         "pass --gate-metric with one of them, or check that the scores JSON is not empty")
    gate_value = float(flat[gate_metric])
    gate_tag = f"{SCORE_PREFIX}{gate_metric}"
    settings = eval_settings_tags(scores, eval_settings)
    all_tags = {
        **score_tags(scores), **settings, TAG_KFP_RUN: kfp_run_id, TAG_BASE_MODEL: base_model, TAG_DATASET: dataset,
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
        for key in mv.tags:  # the settings record is exactly this call's
            if key.startswith(EVAL_PREFIX) and key not in all_tags:
                client.delete_model_version_tag(name, mv.version, key)
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
        theirs = {k: v for k, v in champion.tags.items() if k.startswith(EVAL_PREFIX)}
        differ = settings_differences(settings, theirs)
        if not theirs:
            moved, decision = True, (f"champion v{champion.version} has no evaluation settings tags (eval.*), so it "
                                     "is not comparable: this version becomes the first comparable champion")
        elif differ:
            more = f" (+{len(differ) - 3} more)" if len(differ) > 3 else ""
            moved, decision = False, (f"evaluation settings differ from champion v{champion.version}'s: "
                                      f"{'; '.join(differ[:3])}{more}: not comparable, candidate only")
        elif current is None:
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
    return RegistrationResult(name, int(version), aliases, moved, reused, gate_value, previous, mv.source, decision)


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
