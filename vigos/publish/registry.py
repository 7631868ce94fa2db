"""MLflow Model Registry: one model version per pipeline run, with its scores as tags, and two aliases.

- `candidate` always points at the version registered last (what this run produced).
- `champion` is the best version comparable with the champion: among the versions whose evaluation settings equal
  the champion's, the one with the highest gate metric (e.g. `mean.pass_at_k`); on a tie the champion stays, else
  the oldest wins. Registered one after another, that is "a version whose settings equal the champion's moves it
  when its gate metric is STRICTLY greater". Every metric we gate on is a percentage where higher is better. The
  first version becomes champion.

Never champion: a version whose scores are incomplete (`score.incomplete`: the LLM judge left questions ungraded, so
its numbers are partly rule grades; `vigos eval score` also fails on them), and a version a person tagged
`gate.excluded` (any value, the reason): how to roll back for good, since the champion is recomputed from all versions
at every registration and moving the alias by hand to a worse version lasts only until the next one.

Races: registrations running at once (two pipeline runs, a retried pod) cannot lock the registry, so the champion is
a function of all versions' tags: each registration lists the versions, computes the best, moves the alias, then
lists again until the alias already points at the best. Whichever racer writes last has seen every version created
before its last look, and a version created after it is judged by its own registration: all racers converge on the
best version, whatever order they finish in. Tag and alias writes are retried when the tracking server's database
reports a conflicting concurrent write of the same row (SQLite's `UNIQUE constraint failed`, ...).

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
from vigos.evaluation.metrics import flatten_scores, incomplete_reason, score_rows
from vigos.tracking import TAG_KFP_RUN, retry_conflicts, tracking_uri

log = logging.getLogger(__name__)

CANDIDATE = "candidate"
CHAMPION = "champion"
SCORE_PREFIX = "score."
TAG_BASE_MODEL = "vigos.base_model"
TAG_DATASET = "vigos.dataset"
TAG_GATE_METRIC = "gate.metric"
TAG_GATE_DECISION = "gate.decision"
TAG_GATE_EXCLUDED = "gate.excluded"
"""Set by a person (any value: the reason): the gate never makes this version champion."""
TAG_INCOMPLETE = "score.incomplete"
"""The scores' `incomplete` reason (`incomplete_reason`): the gate never makes this version champion."""
EVAL_PREFIX = "eval."
MODEL_ARTIFACT_PATH = "model"
"""Where `log_model_dir` puts the model folder inside the run's artifacts."""
_GATE_ROUNDS = 20  # look-move-look rounds; racers agree once every version exists, so a few suffice


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
    if reason := incomplete_reason(scores):
        tags[TAG_INCOMPLETE] = reason
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
                retry_conflicts(client.set_model_version_tag, name, mv.version, key, value)
        for key in mv.tags:  # the settings and scores record is exactly this call's (an `incomplete` mark too)
            if key.startswith((EVAL_PREFIX, SCORE_PREFIX)) and key not in all_tags:
                retry_conflicts(client.delete_model_version_tag, name, mv.version, key)
    else:
        mv = _create_version(client, name, source, run_id, all_tags,
                             description=f"KFP run {kfp_run_id}: {gate_metric} = {gate_value:.2f}")
    version = str(mv.version)

    retry_conflicts(client.set_registered_model_alias, name, CANDIDATE, version)
    previous, champion = _settle_champion(client, name, version, gate_metric)
    decision = _decision(client.get_model_version(name, version), gate_metric, previous, champion)
    moved = champion is not None and str(champion.version) == version and (
        previous is None or str(previous.version) != version)
    retry_conflicts(client.set_model_version_tag, name, version, TAG_GATE_DECISION, decision)
    log.info("registered %s v%s (%s)", name, version, decision)
    aliases = sorted(client.get_model_version(name, version).aliases)
    return RegistrationResult(name, int(version), aliases, moved, reused, gate_value,
                              int(previous.version) if previous is not None else None, mv.source, decision)


def _settings(mv: Any) -> dict[str, str]:
    return {k: v for k, v in mv.tags.items() if k.startswith(EVAL_PREFIX)}


def _refusal(mv: Any) -> str | None:
    """Why the gate never makes `mv` champion, whatever its score (None: it may)."""
    if mv.tags.get(TAG_INCOMPLETE):
        return f"scores incomplete ({mv.tags[TAG_INCOMPLETE]})"
    if TAG_GATE_EXCLUDED in mv.tags:
        return f"excluded from the gate by its {TAG_GATE_EXCLUDED} tag ({mv.tags[TAG_GATE_EXCLUDED] or 'no reason'})"
    return None


def _best(versions: list[Any], champion: Any | None, gate_tag: str, like: Mapping[str, str]) -> Any | None:
    """The version that should be champion: among those that the gate does not refuse, with a `gate_tag` value and
    evaluation settings equal to `like`, the highest value; on a tie the champion, else the oldest."""
    held = str(champion.version) if champion is not None else None
    contenders = [v for v in versions
                  if _refusal(v) is None and _as_float(v.tags.get(gate_tag)) is not None and _settings(v) == like]
    return max(contenders, default=None,
               key=lambda v: (_as_float(v.tags[gate_tag]), str(v.version) == held, -int(v.version)))


def _like(champion: Any | None, candidate: Any) -> dict[str, str]:
    # the champion's settings define what is comparable; a champion without any yields to the version registering
    # now (it becomes the first comparable champion)
    return (_settings(champion) if champion is not None else {}) or _settings(candidate)


def _settle_champion(client: Any, name: str, version: str, gate_metric: str) -> tuple[Any | None, Any | None]:
    """Point `champion` at the best version comparable with it (`_best`), looking again after every move until it
    already does (see the module docstring, "Races"). `version`: the one registering now. Returns the champion
    before and after."""
    gate_tag = f"{SCORE_PREFIX}{gate_metric}"
    previous: Any | None = None
    for round_ in range(_GATE_ROUNDS):
        versions = {str(v.version): v for v in _all_versions(client, name)}
        champion = _alias_version(client, name, CHAMPION)
        if round_ == 0:
            previous = champion
        if champion is not None:
            versions.setdefault(str(champion.version), champion)  # created after our listing: a contender too
        mine = versions.get(version) or client.get_model_version(name, version)
        best = _best(list(versions.values()), champion, gate_tag, _like(champion, mine))
        if best is None or (champion is not None and str(best.version) == str(champion.version)):
            return previous, champion
        retry_conflicts(client.set_registered_model_alias, name, CHAMPION, str(best.version))
    log.warning("the champion of %s did not settle in %d rounds: concurrent registrations keep moving it; the last "
                "of them settles it", name, _GATE_ROUNDS)
    return previous, _alias_version(client, name, CHAMPION)


def _decision(mine: Any, gate_metric: str, previous: Any | None, champion: Any | None) -> str:
    """Why `champion` does or does not point at `mine` (its `gate.decision` tag); `previous`: the champion before."""
    gate_tag = f"{SCORE_PREFIX}{gate_metric}"
    value = _as_float(mine.tags.get(gate_tag))
    refused = _refusal(mine)
    if refused:
        return f"{refused}: the gate refuses it, candidate only"
    theirs = _settings(champion) if champion is not None else {}
    differ = settings_differences(_settings(mine), theirs) if theirs else []
    if differ:
        more = f" (+{len(differ) - 3} more)" if len(differ) > 3 else ""
        return (f"evaluation settings differ from champion v{champion.version}'s: "
                f"{'; '.join(differ[:3])}{more}: not comparable, candidate only")
    if champion is None or str(champion.version) != str(mine.version):
        held = _as_float(champion.tags.get(gate_tag)) if champion is not None else None
        if champion is None or held is None:  # only when `mine` lost to another racer's version in the meantime
            return "candidate only"
        return f"{gate_metric} {value:.4g} <= champion v{champion.version}'s {held:.4g}: candidate only"
    if previous is None:
        return "first version: champion"
    if str(previous.version) == str(mine.version):
        return mine.tags.get(TAG_GATE_DECISION) or "already champion"
    if not _settings(previous):
        return (f"champion v{previous.version} has no evaluation settings tags (eval.*), so it is not comparable: "
                "this version becomes the first comparable champion")
    if _refusal(previous):
        return f"champion v{previous.version} is {_refusal(previous)}: replaced"
    before = _as_float(previous.tags.get(gate_tag))
    if before is None:
        return f"champion v{previous.version} has no {gate_tag} tag: counted as beaten"
    return f"{gate_metric} {value:.4g} > champion v{previous.version}'s {before:.4g}"


def _all_versions(client: Any, name: str) -> list[Any]:
    """Every version of `name`, with its tags (every page)."""
    out: list[Any] = []
    token = None
    while True:
        page = client.search_model_versions(f"name = '{_quote(name)}'", page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


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
