"""Pass@k / Avg@k and the Scores JSON (docs/evaluation.md "Metrics", docs/architecture.md "Contracts"). Pure, no I/O.

Input: graded rows, each with `benchmark`, `example_id`, `correct` (bool, or a judged partial credit in [0, 1]) and
optionally `meta`, `grader` (which grader decided this row) and `judge_failed`. Percentages are 0-100.

Row `meta` conventions (the benchmark loaders write them):
- ViLP (`vilp-*`): `{"position": 1 | 2 | 3}`; 1 is prior-consistent, 2 and 3 contradict the prior.
- CV-Bench: `{"type": "2D" | "3D", "source": "ADE20K" | "COCO" | "Omni3D", ...}`; MMMU-Pro:
  `{"subset": "standard" | "vision"}`.
`example_id` must be unique within a benchmark (MMMU-Pro's two subsets share one benchmark: prefix the ids).

Each (non-ViLP) benchmark also carries `avg_at_k_se`: the standard error of its pooled Avg@k with questions as
clusters (None under two questions); the report draws Avg@k's 95% interval from it (Pass@k's needs only n).

Every benchmark's top-level `pass_at_k` / `avg_at_k` are POOLED over its questions: the ViGOS paper's numbers, the
ones compared with the model card and averaged into the "mean" row. Breakdowns (`BREAKDOWNS`) add beside them:
- MMMU-Pro: each subset's Pass@k / Avg@k and `macro`, their unweighted mean over the subsets present.
- CV-Bench: its official overall (the dataset README's evaluation snippet): accuracy per `source`, 2D = mean(ADE20K,
  COCO), 3D = Omni3D, overall = mean(2D, 3D), computed for Pass@k and Avg@k separately. A group, and the overall,
  is None unless every source it averages has rows (a `max_examples` subset without COCO rows has no official
  overall rather than a different formula); `official.missing_sources` names the absent ones. Rows without a
  source count in the pooled numbers only.

    "cv-bench": {"n_examples": 7, "k": 2, "pass_at_k": 57.14, "avg_at_k": 42.86,          # pooled (the paper's)
                 "avg_at_k_se": 17.0, "grader": "rules", ...,
                 "sources": {"ADE20K": {"n_examples": 2, "k": 2, "pass_at_k": 50.0, "avg_at_k": 25.0},
                             "COCO": {...}, "Omni3D": {...}},
                 "2D": {"n_examples": 3, "pass_at_k": 75.0, "avg_at_k": 62.5, "sources": ["ADE20K", "COCO"]},
                 "3D": {"n_examples": 4, "pass_at_k": 50.0, "avg_at_k": 37.5, "sources": ["Omni3D"]},
                 "official": {"pass_at_k": 62.5, "avg_at_k": 50.0, "missing_sources": []}}

`flatten_scores` turns these into MLflow keys: `cv-bench.pass_at_k` (pooled), `cv-bench.official.pass_at_k`,
`cv-bench.2D.avg_at_k`, `cv-bench.sources.COCO.pass_at_k`, `mmmu-pro.macro.pass_at_k`, ...
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vigos.errors import VigosError

MAIN_BENCHMARKS: tuple[str, ...] = (
    "mm-vet", "mmmu", "mmmu-pro", "mathverse", "mathvista", "mmsi", "realworldqa", "cv-bench",
)
"""The eight columns of the model card's table; their unweighted mean is the "Mean" row (ViLP excluded)."""


@dataclass(frozen=True)
class Breakdown:
    """How a benchmark's rows split by `meta[key]` ("parts", each scored on its own) and how the parts combine.

    Without `groups`: the parts are reported at the top level (`mmmu-pro.standard`) with `macro`, the mean of the
    parts present. With `groups` (the benchmark's own definition): the parts go under `<key>s`
    (`cv-bench.sources.COCO`), each group is the mean of its parts (`cv-bench.2D`) and `official` the mean of the
    groups; a group or `official` is None unless every part it names has rows (`official.missing_<key>s`).
    """

    key: str
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Group -> the `meta[key]` values it averages (unweighted); other values are reported but in no group."""


BREAKDOWNS: dict[str, Breakdown] = {
    # CV-Bench README: accuracy per source; 2D = mean(ADE20K, COCO), 3D = Omni3D, overall = mean(2D, 3D).
    "cv-bench": Breakdown("source", {"2D": ("ADE20K", "COCO"), "3D": ("Omni3D",)}),
    "mmmu-pro": Breakdown("subset"),
}
"""Benchmark -> its breakdown, reported beside the pooled numbers."""

VILP_PREFIX = "vilp"


def is_vilp(benchmark: str) -> bool:
    return benchmark.startswith(VILP_PREFIX)


def _value(correct: Any) -> float:
    # bool is an int: True -> 1.0; a judged partial credit keeps its value.
    return float(correct)


def pass_avg(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """`n_examples`, `k`, `pass_at_k`, `avg_at_k` (percent) of rows from one benchmark.

    Pass@k: share of questions whose best sample is correct (max = any() for booleans; for partial credit the best
    sample's value). Avg@k: sum of correctness over all samples / number of samples. `k` is the largest number of
    samples a question has; `incomplete_examples` counts questions with fewer (a run still in progress).
    """
    by_q: dict[Any, list[float]] = defaultdict(list)
    for r in rows:
        by_q[r["example_id"]].append(_value(r["correct"]))
    if not by_q:
        return {"n_examples": 0, "k": 0, "pass_at_k": None, "avg_at_k": None}
    n_samples = sum(len(v) for v in by_q.values())
    k = max(len(v) for v in by_q.values())
    out: dict[str, Any] = {
        "n_examples": len(by_q),
        "k": k,
        "pass_at_k": 100.0 * sum(max(v) for v in by_q.values()) / len(by_q),
        "avg_at_k": 100.0 * sum(sum(v) for v in by_q.values()) / n_samples,
    }
    incomplete = sum(1 for v in by_q.values() if len(v) < k)
    if incomplete:
        out["incomplete_examples"] = incomplete
    return out


def avg_at_k_se(rows: Iterable[Mapping[str, Any]]) -> float | None:
    """Standard error (percent) of Avg@k with questions as clusters: a question's k samples are correlated (an easy
    question is answered right k times), so they are not n*k independent trials.

    The ratio estimator's cluster-robust SE, sqrt(n / (n - 1) * sum_i (c_i - s_i * A)^2) / S, with c_i the credit
    and s_i the samples of question i, S = sum_i s_i and A = Avg@k; with k samples for every question it is the
    standard error of the per-question mean accuracies, sd / sqrt(n). None under two questions.
    """
    by_q: dict[Any, list[float]] = defaultdict(list)
    for r in rows:
        by_q[r["example_id"]].append(_value(r["correct"]))
    n = len(by_q)
    if n < 2:
        return None
    total = sum(len(v) for v in by_q.values())
    avg = sum(sum(v) for v in by_q.values()) / total
    ss = sum((sum(v) - len(v) * avg) ** 2 for v in by_q.values())
    return 100.0 * math.sqrt(n / (n - 1) * ss) / total


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _mean_of_all(entries: Sequence[Mapping[str, Any] | None]) -> dict[str, float | None]:
    """Pass@k / Avg@k means of `entries`, each None unless every entry has that number (an official formula must
    not silently become the mean of fewer parts)."""
    out: dict[str, float | None] = {}
    for metric in ("pass_at_k", "avg_at_k"):
        values = [e.get(metric) if e else None for e in entries]
        out[metric] = sum(values) / len(values) if values and None not in values else None
    return out


def _grader_record(rows: Sequence[Mapping[str, Any]], grader: str) -> dict[str, Any]:
    """Which grader produced the numbers: the configured one, rows per deciding grader, judge failures."""
    rec: dict[str, Any] = {"grader": grader}
    by = Counter(str(r["grader"]) for r in rows if r.get("grader"))
    if by:
        rec["graded_by"] = dict(sorted(by.items()))
    if "judge" in grader:
        rec["ungraded_by_judge"] = len({r["example_id"] for r in rows if r.get("judge_failed")})
    return rec


def benchmark_scores(name: str, rows: Sequence[Mapping[str, Any]], grader: str) -> dict[str, Any]:
    """Scores of one (non-ViLP) benchmark: pooled Pass@k / Avg@k plus its breakdown when it has one."""
    out = pass_avg(rows)
    out["avg_at_k_se"] = avg_at_k_se(rows)
    out.update(_grader_record(rows, grader))
    spec = BREAKDOWNS.get(name)
    if spec:
        out.update(breakdown_scores(rows, spec))
    return out


def breakdown_scores(rows: Sequence[Mapping[str, Any]], spec: Breakdown) -> dict[str, Any]:
    """The entries `spec` adds to a benchmark's scores (see `Breakdown`)."""
    by_value: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        value = (r.get("meta") or {}).get(spec.key)
        if value is not None:  # rows without it still count in the pooled numbers
            by_value[str(value)].append(r)
    parts = {v: pass_avg(by_value[v]) for v in sorted(by_value)}
    plural = spec.key + "s"
    if not spec.groups:
        if not parts:
            return {}
        return {**parts, "macro": {
            "pass_at_k": _mean([p["pass_at_k"] for p in parts.values()]),
            "avg_at_k": _mean([p["avg_at_k"] for p in parts.values()]),
            plural: sorted(parts),
        }}
    out: dict[str, Any] = {plural: parts}
    for group, members in spec.groups.items():
        out[group] = {
            "n_examples": sum(parts[m]["n_examples"] for m in members if m in parts),
            **_mean_of_all([parts.get(m) for m in members]),
            plural: list(members),
        }
    out["official"] = {
        **_mean_of_all([out[g] for g in spec.groups]),
        "missing_" + plural: [m for members in spec.groups.values() for m in members if m not in parts],
    }
    return out


def vilp_scores(name: str, rows: Sequence[Mapping[str, Any]], grader: str) -> dict[str, Any]:
    """ViLP Score = mean of the Pass@1 accuracies at positions 2 and 3; Prior = the accuracy at position 1.

    Pass@1 with several samples is the mean over samples (its unbiased estimate); with one sample, the accuracy.
    A position with no rows gives None (and so does Score when position 2 or 3 is missing).
    """
    by_pos: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        pos = (r.get("meta") or {}).get("position")
        try:
            p = int(pos)
        except (TypeError, ValueError):
            p = 0
        if p not in (1, 2, 3):
            raise VigosError(
                f"{name} example {r['example_id']!r}: meta.position is {pos!r}, expected 1, 2 or 3 "
                "(ViLP rows must carry meta: {\"position\": p}, p = item index % 3 + 1)"
            )
        by_pos[p].append(_value(r["correct"]))
    acc = {p: (100.0 * sum(v) / len(v) if v else None) for p, v in ((p, by_pos.get(p, [])) for p in (1, 2, 3))}
    a2, a3 = acc[2], acc[3]
    pooled = pass_avg(rows)
    return {
        "score": (a2 + a3) / 2 if a2 is not None and a3 is not None else None,
        "prior": acc[1],
        "n_examples": pooled["n_examples"],
        "k": pooled["k"],
        "by_position": {str(p): {"n_examples": len(by_pos.get(p, [])), "accuracy": acc[p]} for p in (1, 2, 3)},
        **_grader_record(rows, grader),
    }


def compute_scores(rows: Iterable[Mapping[str, Any]], grader: str | Mapping[str, str]) -> dict[str, Any]:
    """The Scores JSON of graded rows from any number of benchmarks; `grader` labels how they were graded (one label,
    or one per benchmark, e.g. `{"mm-vet": "rules (approximate)", "mmmu": "rules"}`)."""
    label = (lambda b: grader) if isinstance(grader, str) else (lambda b: grader.get(b, "rules"))
    by_bench: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        by_bench[str(r["benchmark"])].append(r)
    order = [b for b in MAIN_BENCHMARKS if b in by_bench] + sorted(b for b in by_bench if b not in MAIN_BENCHMARKS)
    benchmarks = {b: benchmark_scores(b, by_bench[b], label(b)) for b in order if not is_vilp(b)}
    vilp = {b: vilp_scores(b, by_bench[b], label(b)) for b in order if is_vilp(b)}
    present = [b for b in MAIN_BENCHMARKS if b in benchmarks]
    mean = {
        "pass_at_k": _mean([benchmarks[b]["pass_at_k"] for b in present]),
        "avg_at_k": _mean([benchmarks[b]["avg_at_k"] for b in present]),
        "benchmarks": present,
        "missing": [b for b in MAIN_BENCHMARKS if b not in benchmarks],
    }
    overall = grader if isinstance(grader, str) else "/".join(sorted(set(grader.values()))) or "rules"
    return {"benchmarks": benchmarks, "mean": mean, "vilp": vilp, "grader": overall}


def score_rows(scores: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(benchmark, its scores) for every benchmark of a Scores JSON, the main ones then ViLP."""
    for section in ("benchmarks", "vilp"):
        for name, row in (scores.get(section) or {}).items():
            if isinstance(row, Mapping):
                yield name, row


def incomplete_reason(scores: Mapping[str, Any]) -> str | None:
    """Why a Scores JSON does not grade every question the way it was configured to (None: it does).

    Its `incomplete` mark (`score_responses` writes it when the judge left questions ungraded), or, in a file from
    before that mark existed, its judge record's failed questions.
    """
    if scores.get("incomplete"):
        return str(scores["incomplete"])
    judge = scores.get("judge")
    failed = judge.get("failed_questions") if isinstance(judge, Mapping) else None
    if isinstance(failed, int) and failed > 0:
        return f"{failed} question(s) not graded by the judge"
    return None


def benchmarks_by_grader(scores: Mapping[str, Any], default: str | None = None) -> dict[str, list[str]]:
    """Grader label -> the benchmarks it decided, first seen first; a row without a label counts under `default`
    (left out when None)."""
    by: dict[str, list[str]] = {}
    for name, row in score_rows(scores):
        label = row.get("grader") or default
        if label:
            by.setdefault(str(label), []).append(name)
    return by


def flatten_scores(scores: Mapping[str, Any]) -> dict[str, float]:
    """Scores JSON -> `{"<benchmark>.pass_at_k": 72.0, "mean.pass_at_k": ..., "vilp-f.score": ...}`.

    Every numeric leaf is kept (breakdowns such as `cv-bench.official.pass_at_k`, `cv-bench.sources.COCO.avg_at_k`,
    `vilp-f.by_position.2.accuracy` too);
    None (nothing evaluated), booleans, strings and lists are not scores and are skipped.
    """
    out: dict[str, float] = {}
    for section in ("benchmarks", "vilp"):
        for name, row in (scores.get(section) or {}).items():
            out.update(_numeric_leaves(row, f"{name}."))
    out.update(_numeric_leaves(scores.get("mean") or {}, "mean."))
    return out


PERCENT_LEAVES = {"pass_at_k": "pass_at_{k}", "avg_at_k": "avg_at_{k}", "avg_at_k_se": "avg_at_{k}_stderr",
                  "score": "score", "prior": "prior", "accuracy": "accuracy"}
"""Scores JSON leaves that are percentages, and their MLflow names (lm-evaluation-harness style: the k in the name,
`_stderr` for a standard error; `pass_at_5`, not `pass@5`, as MLflow refuses `@` in a metric name)."""


def tracking_metrics(scores: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, int]]:
    """A Scores JSON in the tracking scheme (`vigos.tracking`): (metrics, counts).

    metrics: `{"mmmu/pass_at_5": 0.72, "cv-bench/sources/COCO/avg_at_5": 0.5, "vilp-f/score": 0.61, ...}`,
    every score a fraction in [0, 1] (the Scores JSON's percent / 100); counts: the other numeric leaves
    (`mmmu/n_examples`, `mm-vet/ungraded_by_judge`, ...), logged as params.
    """
    k = next((row.get("k") for _, row in score_rows(scores) if row.get("k")), None)
    metrics: dict[str, float] = {}
    counts: dict[str, int] = {}
    for key, value in flatten_scores(scores).items():
        *path, leaf = key.split(".")
        if leaf in PERCENT_LEAVES:
            name = PERCENT_LEAVES[leaf].format(k=k if k is not None else "k")
            metrics["/".join([*path, name])] = value / 100.0
        elif leaf != "k":  # k is in the names
            counts["/".join([*path, leaf])] = int(value)
    return metrics, counts


def _numeric_leaves(node: Any, prefix: str) -> Iterator[tuple[str, float]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _numeric_leaves(value, f"{prefix}{key}.")
    elif isinstance(node, int | float) and not isinstance(node, bool) and math.isfinite(node):
        yield prefix.rstrip("."), node  # ints (counts) stay ints
