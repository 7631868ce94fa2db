"""The evaluation report: Markdown + HTML (self-contained, the chart embedded as base64) + the chart as PNG.

`write_report` writes `eval_report.md`, `eval_report.html` (the file to open in a browser and the MLflow artifact)
and `eval_chart.png` into one folder. The report reads, top to bottom:

- a header: what was evaluated (model, base model, KFP / MLflow run ids), k, the student prompt set, the grader per
  benchmark and the evaluation settings (sampling, seed, a `max_examples` subset);
- the table: Pass@k / Avg@k per benchmark with 95% intervals, for this model, the base model evaluated in the same
  run (when given) and the ViGOS-7B model card's published numbers, then their mean;
- each benchmark's official overall where its breakdown defines one (CV-Bench: mean of 2D = mean(ADE20K, COCO) and
  3D = Omni3D, `vigos.evaluation.metrics.BREAKDOWNS`), the table's numbers being pooled over the questions (the ViGOS
  paper's, comparable with the card);
- ViLP Score / Prior;
- how the intervals are computed and what each number means;
- the chart: Pass@k, Avg@k (with the intervals as error bars) and ViLP, one panel each, at most `CHART_WIDTH_PX`
  wide; every bar carries its value (a 0 is a visible mark, not a gap) and a missing number reads "n/a".

Intervals (95%, `interval` / `estimates`): Pass@k, a Wilson score interval over the n questions. Avg@k pools n*k
samples that are correlated within a question, so it is a Wilson interval at an effective sample size
n_eff = p(1 - p) / SE^2 (SE: `avg_at_k_se` of scores.json, the standard error with questions as clusters), kept
within [n, n*k] (the two extremes: samples of a question identical / independent); scores without `avg_at_k_se`
(written before it existed) get a Wilson interval over the n*k samples, which ignores the within-question
correlation (too narrow) and is marked as such. The mean: a normal interval, benchmarks independent, each one's
SE = its interval's half-width / 1.96. ViLP: Prior a Wilson interval over the position-1 questions, Score a normal
interval from positions 2 and 3 (SE as for the mean).

Inputs follow the scores JSON contract (docs/architecture.md, `vigos.evaluation.metrics`); percentages 0-100 throughout.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vigos.evaluation.metrics import BREAKDOWNS, MAIN_BENCHMARKS, benchmarks_by_grader
from vigos.volume import write_atomic

VILP_BENCHMARKS = ("vilp-f", "vilp-p")

# The ViGOS-7B model card (the release's README): Pass@5 / Avg@5 and ViLP Score / Prior, in percent.
MODEL_CARD = {
    "benchmarks": {
        "mm-vet": (72.02, 54.40), "mmmu": (80.11, 51.42), "mmmu-pro": (64.81, 36.48),
        "mathverse": (68.91, 44.77), "mathvista": (80.90, 58.78), "mmsi": (61.10, 25.58),
        "realworldqa": (85.88, 62.88), "cv-bench": (91.09, 73.58),
    },
    "mean": (75.60, 50.99),
    "vilp": {"vilp-f": (62.67, 97.00), "vilp-p": (61.67, 91.67)},
}

Z95 = 1.959963984540054
"""The standard normal's 97.5% quantile: 95% two-sided intervals."""

APPROX_MARK = "\u2020"
"""Marks an Avg@k interval that ignores the within-question correlation (a dagger)."""

CHART_DPI = 120
CHART_WIDTH_PX = 984
"""The chart's width in pixels (at `CHART_DPI`): it fits a laptop screen without scaling."""

SETTING_LABELS = {
    "temperature": "temperature", "top_p": "top-p", "top_k": "top-k", "max_new_tokens": "max new tokens",
    "seed": "seed", "max_images": "max images per question",
}
"""Evaluation settings named in the header, in this order (`max_examples` has its own line; others follow)."""

REPORT_SETTINGS = (*SETTING_LABELS, "max_examples")
"""The `eval.*` config fields the DAG steps pass to `write_report(settings=...)`."""

COLOURS = {"this model": "#1f77b4", "base model": "#7f7f7f", "ViGOS-7B model card": "#ff7f0e"}


@dataclass
class ReportPaths:
    markdown: Path
    html: Path
    chart: Path


@dataclass(frozen=True)
class Estimate:
    """A percentage with its 95% interval (`lo`, `hi`; None: none known). `value` None: not evaluated.

    `approx`: the interval ignores the within-question correlation of Avg@k's samples (scores without
    `avg_at_k_se`): too narrow."""

    value: float | None
    lo: float | None = None
    hi: float | None = None
    approx: bool = False

    @property
    def se(self) -> float | None:
        """The standard error the interval implies (half its width / 1.96)."""
        return None if self.lo is None or self.hi is None else (self.hi - self.lo) / (2 * Z95)


MISSING = Estimate(None)


def wilson(p: float | None, n: float | None) -> tuple[float, float] | None:
    """The 95% Wilson score interval (percent) of a proportion `p` (percent) over `n` trials (n may be fractional:
    an effective sample size). None without a proportion or trials."""
    if p is None or not n or n <= 0:
        return None
    q = min(max(p / 100.0, 0.0), 1.0)
    z2 = Z95 * Z95
    denom = 1 + z2 / n
    centre = (q + z2 / (2 * n)) / denom
    half = Z95 * math.sqrt(q * (1 - q) / n + z2 / (4 * n * n)) / denom
    # the interval holds the estimate; at q = 0 or 1 rounding would otherwise leave it a hair outside
    return 100.0 * min(q, max(0.0, centre - half)), 100.0 * max(q, min(1.0, centre + half))


def _normal(value: float, se: float) -> Estimate:
    return Estimate(value, max(0.0, value - Z95 * se), min(100.0, value + Z95 * se))


def benchmark_estimates(row: Mapping[str, Any] | None) -> tuple[Estimate, Estimate]:
    """(Pass@k, Avg@k) of one benchmark's scores with their 95% intervals (see the module docstring)."""
    if not row:
        return MISSING, MISSING
    n, k = row.get("n_examples") or 0, row.get("k") or 1
    p, a = row.get("pass_at_k"), row.get("avg_at_k")
    pass_ci = wilson(p, n)
    pass_est = Estimate(p, *pass_ci) if pass_ci else Estimate(p)
    if a is None or not n:
        return pass_est, Estimate(a)
    se = row.get("avg_at_k_se")
    if se is None:  # scores from before avg_at_k_se (or one question): samples as independent trials
        return pass_est, Estimate(a, *wilson(a, n * k), approx=True)
    q, s = a / 100.0, se / 100.0
    n_eff = q * (1 - q) / (s * s) if s > 0 and 0 < q < 1 else n
    return pass_est, Estimate(a, *wilson(a, min(max(n_eff, n), n * k)))


def mean_estimates(scores: Mapping[str, Any] | None) -> tuple[Estimate, Estimate]:
    """(Pass@k, Avg@k) of the "mean" row: normal intervals, benchmarks independent (module docstring)."""
    mean = (scores or {}).get("mean")
    if not mean:
        return MISSING, MISSING
    benchmarks = scores.get("benchmarks") or {}
    names = mean.get("benchmarks") or [n for n in MAIN_BENCHMARKS if n in benchmarks]
    per = [benchmark_estimates(benchmarks.get(n)) for n in names]
    out = []
    for i, key in enumerate(("pass_at_k", "avg_at_k")):
        value, ses = mean.get(key), [e[i].se for e in per]
        if value is None or not ses or None in ses:
            out.append(Estimate(value))
        else:
            est = _normal(value, math.sqrt(sum(s * s for s in ses)) / len(ses))
            out.append(Estimate(est.value, est.lo, est.hi, approx=any(e[i].approx for e in per)))
    return out[0], out[1]


def vilp_estimates(row: Mapping[str, Any] | None) -> tuple[Estimate, Estimate]:
    """(Score, Prior) of one ViLP benchmark with 95% intervals when its scores carry `by_position`."""
    if not row:
        return MISSING, MISSING
    by_pos = row.get("by_position") or {}

    def position(p: str) -> Estimate:
        entry = by_pos.get(p) or {}
        ci = wilson(entry.get("accuracy"), entry.get("n_examples"))
        return Estimate(entry.get("accuracy"), *ci) if ci else Estimate(entry.get("accuracy"))

    score, prior = row.get("score"), row.get("prior")
    prior_ci = wilson(prior, (by_pos.get("1") or {}).get("n_examples"))
    prior_est = Estimate(prior, *prior_ci) if prior_ci else Estimate(prior)
    s2, s3 = position("2").se, position("3").se
    if score is None or s2 is None or s3 is None:
        return Estimate(score), prior_est
    return _normal(score, math.sqrt(s2 * s2 + s3 * s3) / 2), prior_est


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def fmt_estimate(e: Estimate) -> str:
    """`72.0 [67.9, 76.1]`; `APPROX_MARK` marks an interval that ignores within-question correlation; `n/a`: missing."""
    if e.value is None:
        return "n/a"
    if e.lo is None or e.hi is None:
        return _num(e.value)
    return f"{e.value:.1f} [{e.lo:.1f}, {e.hi:.1f}]" + (APPROX_MARK if e.approx else "")


def _fmt_pair(pair: tuple[float | None, float | None] | None, digits: int = 1) -> str:
    if pair is None or pair[0] is None or pair[1] is None:
        return "n/a"
    return f"{pair[0]:.{digits}f} / {pair[1]:.{digits}f}"


def _card(pair: tuple[float, float] | None) -> str:
    return _fmt_pair(pair, 2)  # as published


def _k(scores: Mapping[str, Any], section: str = "benchmarks") -> int | None:
    ks = sorted({row.get("k") for row in (scores.get(section) or {}).values() if row.get("k")})
    return ks[-1] if ks else None


def _names(scores: Mapping[str, Any]) -> list[str]:
    benchmarks = scores.get("benchmarks") or {}
    return [n for n in MAIN_BENCHMARKS if n in benchmarks] + [n for n in benchmarks if n not in MAIN_BENCHMARKS]


def table_header(k: int, baseline: bool) -> tuple[str, ...]:
    base = (f"base model Pass@{k}", f"base model Avg@{k}") if baseline else ()
    return ("benchmark", "n", "graded by", f"Pass@{k} [95% CI]", f"Avg@{k} [95% CI]", *base,
            f"ViGOS-7B card Pass@{k} / Avg@{k}")


def table_rows(scores: dict[str, Any], baseline: dict[str, Any] | None) -> list[tuple[str, ...]]:
    """(benchmark, n, graded by, this model Pass@k, Avg@k, [base model Pass@k, Avg@k,] model card) per benchmark
    evaluated, then the mean; this model's and the base model's cells carry their 95% intervals.

    "graded by" is this model's grader for the row: a benchmark meant for the LLM judge that was graded by rules
    (MM-Vet without a judge) reads "rules (approximate)"."""
    rows = []
    for name in _names(scores):
        row = scores["benchmarks"][name]
        base = () if baseline is None else tuple(
            map(fmt_estimate, benchmark_estimates((baseline.get("benchmarks") or {}).get(name))))
        rows.append((name, str(row.get("n_examples", "")), str(row.get("grader", "")),
                     *map(fmt_estimate, benchmark_estimates(row)), *base, _card(MODEL_CARD["benchmarks"].get(name))))
    mean = scores.get("mean")
    if mean:
        present = mean.get("benchmarks")
        label = "mean" if present is None or len(present) == len(MAIN_BENCHMARKS) else \
            f"mean ({len(present)} of {len(MAIN_BENCHMARKS)})"
        base = () if baseline is None else tuple(map(fmt_estimate, mean_estimates(baseline)))
        rows.append((label, "", "", *map(fmt_estimate, mean_estimates(scores)), *base, _card(MODEL_CARD["mean"])))
    return rows


def official_lines(scores: dict[str, Any], baseline: dict[str, Any] | None, k: int) -> list[str]:
    """One sentence per evaluated benchmark whose breakdown defines an official overall (CV-Bench), naming the table's
    number as pooled so that a reader knows which is which."""
    lines = []
    for name, spec in BREAKDOWNS.items():
        if not spec.groups or name not in scores.get("benchmarks", {}):
            continue
        formula = " and ".join(
            f"{group} = {members[0] if len(members) == 1 else 'mean(' + ', '.join(members) + ')'}"
            for group, members in spec.groups.items()
        )
        text = (f"{name} official overall Pass@{k} / Avg@{k} (mean of {formula}): "
                f"this model {_official(scores, name, spec.key)}")
        if baseline is not None:
            text += f", base model {_official(baseline, name, spec.key)}"
        lines.append(text + f". The table's {name} row is pooled over all items (the ViGOS paper's number).")
    return lines


def _official(scores: dict[str, Any], name: str, key: str) -> str:
    official = ((scores.get("benchmarks") or {}).get(name) or {}).get("official") or {}
    if official.get("pass_at_k") is None or official.get("avg_at_k") is None:
        missing = official.get(f"missing_{key}s")  # absent in scores from before the official overall
        return f"n/a (no {', '.join(missing)} rows)" if missing else "n/a"
    return _fmt_pair((official["pass_at_k"], official["avg_at_k"]))


def vilp_header(baseline: bool) -> tuple[str, ...]:
    base = ("base model Score", "base model Prior") if baseline else ()
    return ("ViLP", "n", "Score [95% CI]", "Prior [95% CI]", *base, "ViGOS-7B card Score / Prior")


def vilp_rows(scores: dict[str, Any], baseline: dict[str, Any] | None) -> list[tuple[str, ...]]:
    rows = []
    for name, row in (scores.get("vilp") or {}).items():
        base = () if baseline is None else tuple(
            map(fmt_estimate, vilp_estimates((baseline.get("vilp") or {}).get(name))))
        rows.append((name, str(row.get("n_examples", "")), *map(fmt_estimate, vilp_estimates(row)), *base,
                     _card(MODEL_CARD["vilp"].get(name))))
    return rows


def prompt_set(scores: dict[str, Any], baseline: dict[str, Any] | None = None) -> str:
    """The student prompt set that produced `scores` (`unknown` for scores from before it was recorded); a
    baseline scored under another set is refused: the comparison would measure the prompt, not the training."""
    prompt = scores.get("student_prompt") or "unknown"
    if baseline is not None and (baseline.get("student_prompt") or "unknown") != prompt:
        from vigos.errors import VigosError

        raise VigosError(
            f"the model was evaluated with the {prompt!r} student prompt and the base model with "
            f"{baseline.get('student_prompt') or 'unknown'!r}: evaluate both with the same prompt.student"
        )
    return prompt


def _graders(scores: Mapping[str, Any]) -> str:
    """`mm-vet: rules (approximate); mmmu, cv-bench: rules` (benchmarks grouped by grader, first seen first)."""
    by = benchmarks_by_grader(scores, default=scores.get("grader") or "unknown")
    return "; ".join(f"{', '.join(names)}: {grader}" for grader, names in by.items()) or "n/a"


def _code(value: Any) -> str:
    return f"`{value}`" if value not in (None, "") else "not recorded"


def header_items(
    scores: dict[str, Any], baseline: dict[str, Any] | None, model: str, base_model: str,
    run_ids: Mapping[str, str] | None, settings: Mapping[str, Any] | None,
) -> list[tuple[str, str]]:
    """(label, Markdown value) pairs of the report's header."""
    k, vilp_k = _k(scores), _k(scores, "vilp")
    items = [("Model evaluated", _code(model))]
    base = _code(base_model)
    if baseline is None:
        base += " (its scores are not in this report)"
    items.append(("Base model", base))
    for label, run_id in (run_ids or {}).items():
        if run_id:
            items.append((label, f"`{run_id}`"))
    items.append(("Samples per question (k)",
                  (str(k) if k else "n/a") + (f" (ViLP: {vilp_k})" if vilp_k and vilp_k != k else "")))
    items.append(("Student prompt set",
                  f"`{prompt_set(scores, baseline)}`" + (" (base model: the same)" if baseline else "")))
    items.append(("Graded by", _graders(scores)))
    if baseline is not None and _graders(baseline) != _graders(scores):
        items.append(("Base model graded by", _graders(baseline)))
    if settings is None:
        items.append(("Sampling", "not recorded"))
        return items
    sampling = [f"{label} {settings[key]}" for key, label in SETTING_LABELS.items() if key in settings]
    sampling += [f"{key} {value}" for key, value in settings.items()
                 if key not in SETTING_LABELS and key != "max_examples"]
    items.append(("Sampling", ", ".join(sampling) or "not recorded"))
    if "max_examples" in settings:
        limit = settings["max_examples"]
        items.append(("Questions", "all of each benchmark" if limit is None else
                      f"at most {limit} per benchmark (a `max_examples` subset: not comparable with the model card)"))
    return items


def definitions(k: int) -> list[str]:
    return [
        f"Pass@{k}: the share of questions for which at least one of the {k} sampled answers is correct (for "
        "partial credit, the best sample's credit).",
        f"Avg@{k}: correct samples / all samples, i.e. the accuracy of a single sampled answer.",
        "mean: the unweighted mean over the main benchmarks evaluated (ViLP excluded), as on the model card; the "
        "card's mean covers all eight.",
        "ViLP Score: the mean accuracy at positions 2 and 3, the images that contradict the language prior (the "
        "answer must come from the image); ViLP Prior: the accuracy at position 1, the image consistent with the "
        "prior. One sample per question.",
        "Pooled vs official: every table number is pooled over a benchmark's questions (the ViGOS paper's, "
        "comparable with the card); a benchmark's official overall, where it defines one, is given on its own line.",
        "ViGOS-7B card: the released model's published numbers (the full benchmarks, k = 5).",
    ]


def interval_notes(k: int, approx: bool) -> list[str]:
    notes = [
        f"95% intervals. Pass@{k}: Wilson score interval over the n questions. Avg@{k}: the n x {k} samples are "
        "correlated within a question, so the interval is a Wilson interval at the effective sample size "
        "p(1 - p) / SE^2, SE the standard error of the per-question accuracies (questions as clusters), kept "
        f"between n and n x {k}. mean: a normal interval, benchmarks independent. ViLP: Prior a Wilson interval "
        "over the position-1 questions, Score a normal interval from positions 2 and 3.",
    ]
    if approx:
        notes.append(f"{APPROX_MARK} Avg@{k} interval over the n x {k} samples as independent trials (these scores "
                     "carry no per-question standard error): it ignores the within-question correlation and is too "
                     "narrow.")
    return notes


def _md_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _inline_html(text: str) -> str:
    """Markdown `code` spans -> <code>; everything else escaped."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))


def _html_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    def cell(c: str) -> str:  # an interval stays on one line
        return f"<td class='ci'>{html.escape(c)}</td>" if " [" in c else f"<td>{html.escape(c)}</td>"

    body = "".join("<tr>" + "".join(cell(c) for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(
    scores: dict[str, Any], out_dir: str | Path, baseline: dict[str, Any] | None = None,
    title: str = "ViGOS evaluation", model: str = "", *, base_model: str = "",
    run_ids: Mapping[str, str] | None = None, settings: Mapping[str, Any] | None = None,
) -> ReportPaths:
    """Write `eval_report.md`, `eval_report.html` and `eval_chart.png` into `out_dir`.

    `model` / `base_model`: what was evaluated and the base it is compared with (names or paths); `run_ids`:
    label -> id, e.g. `{"KFP run": ..., "MLflow run": ...}` (empty ids are left out); `settings`: the evaluation
    settings that produced `scores` (`eval.temperature`, `top_p`, `top_k`, `max_new_tokens`, `seed`,
    `max_examples`, ... without the `eval.` prefix; None: "not recorded")."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    k = _k(scores) or 5
    chart = plot(scores, baseline, out / "eval_chart.png", title, k)
    header = header_items(scores, baseline, model, base_model, run_ids, settings)
    rows = table_rows(scores, baseline)
    vrows = vilp_rows(scores, baseline) if scores.get("vilp") else []
    official = official_lines(scores, baseline, k)
    notes = interval_notes(k, any(c.endswith(APPROX_MARK) for r in rows for c in r))
    terms = definitions(k)

    lines = [f"# {title}", "", *(f"- {label}: {value}" for label, value in header), ""]
    lines += _md_table(table_header(k, baseline is not None), rows)
    for line in official:
        lines += ["", line]
    if vrows:
        lines += ["", *_md_table(vilp_header(baseline is not None), vrows)]
    for note in notes:
        lines += ["", note]
    lines += ["", "Terms:", "", *(f"- {t}" for t in terms), ""]
    lines += [f"![Pass@{k}, Avg@{k} and ViLP per benchmark]({chart.name})", ""]
    md_path = out / "eval_report.md"
    write_atomic(md_path, "\n".join(lines))

    png = base64.b64encode(chart.read_bytes()).decode()
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
        "<style>body{font-family:sans-serif;margin:1em 1.5em;max-width:1100px}table{border-collapse:collapse;"
        "margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "td.ci{white-space:nowrap}td:first-child,th:first-child{text-align:left}img{max-width:100%;height:auto}"
        "</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        + "<ul class='header'>" + "".join(f"<li>{html.escape(label)}: {_inline_html(value)}</li>"
                                          for label, value in header) + "</ul>"
        + _html_table(table_header(k, baseline is not None), rows)
        + "".join(f"<p>{html.escape(line)}</p>" for line in official)
        + (_html_table(vilp_header(baseline is not None), vrows) if vrows else "")
        + "".join(f"<p class='note'>{html.escape(n)}</p>" for n in notes)
        + "<h2>Terms</h2><ul class='terms'>" + "".join(f"<li>{html.escape(t)}</li>" for t in terms) + "</ul>"
        + f"<img alt='Pass@{k}, Avg@{k} and ViLP per benchmark' width='{CHART_WIDTH_PX}' "
        f"src='data:image/png;base64,{png}'/></body></html>"
    )
    html_path = out / "eval_report.html"
    write_atomic(html_path, page)
    return ReportPaths(md_path, html_path, chart)


# --- the chart ----------------------------------------------------------------------------------------------------


def chart_series(
    scores: dict[str, Any], baseline: dict[str, Any] | None,
) -> dict[str, tuple[list[str], list[tuple[str, list[Estimate]]]]]:
    """Panel -> (x labels, [(series, one Estimate per label)]): panels "pass", "avg" and, with ViLP scores, "vilp"
    (x labels `<benchmark> Score` / `<benchmark> Prior`). The model card's numbers carry no interval."""
    sources = [("this model", scores), ("base model", baseline)]
    names = _names(scores) + (["mean"] if scores.get("mean") else [])

    def est(src: dict[str, Any], name: str) -> tuple[Estimate, Estimate]:
        return mean_estimates(src) if name == "mean" else benchmark_estimates((src.get("benchmarks") or {}).get(name))

    def card(name: str) -> tuple[Estimate, Estimate]:
        pair = MODEL_CARD["mean"] if name == "mean" else MODEL_CARD["benchmarks"].get(name)
        return (Estimate(pair[0]), Estimate(pair[1])) if pair else (MISSING, MISSING)

    panels: dict[str, tuple[list[str], list[tuple[str, list[Estimate]]]]] = {}
    for i, panel in enumerate(("pass", "avg")):
        series = [(label, [est(src, n)[i] for n in names]) for label, src in sources if src is not None]
        series.append(("ViGOS-7B model card", [card(n)[i] for n in names]))
        panels[panel] = (names, series)
    vilp = list(scores.get("vilp") or {})
    if vilp:
        labels = [f"{n} {m}" for n in vilp for m in ("Score", "Prior")]

        def vilp_values(src: dict[str, Any]) -> list[Estimate]:
            return [e for n in vilp for e in vilp_estimates((src.get("vilp") or {}).get(n))]

        series = [(label, vilp_values(src)) for label, src in sources if src is not None]
        cards = [MODEL_CARD["vilp"].get(n) for n in vilp]
        series.append(("ViGOS-7B model card", [Estimate(c[i]) if c else MISSING for c in cards for i in (0, 1)]))
        panels["vilp"] = (labels, series)
    return panels


def figure(scores: dict[str, Any], baseline: dict[str, Any] | None, title: str, k: int = 5) -> Any:
    """The chart as a matplotlib Figure (`plot` saves it): one panel each for Pass@k, Avg@k and ViLP, bars per
    series with 95% intervals as error bars, every value written on its bar (a 0 reads "0.0" over a thin mark at
    the baseline), "n/a" where a number is missing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches
    import matplotlib.pyplot as plt

    panels = chart_series(scores, baseline)
    titles = {"pass": f"Pass@{k} (95% Wilson interval)",
              "avg": f"Avg@{k} (95% interval, questions as clusters)",
              "vilp": "ViLP: Score (positions 2-3, prior-contradicting) and Prior (position 1)"}
    heights = [3.0 if p != "vilp" else 2.6 for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(CHART_WIDTH_PX / CHART_DPI, sum(heights) + 0.9),
                             dpi=CHART_DPI, height_ratios=heights, layout="constrained", squeeze=False)
    for ax, (panel, (labels, series)) in zip(axes[:, 0], panels.items(), strict=True):
        _bars(ax, labels, series)
        ax.set_title(titles[panel], fontsize=9, loc="left")
    handles = [matplotlib.patches.Patch(color=COLOURS[label], label=label) for label, _ in panels["pass"][1]]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    return fig


def _bars(ax: Any, labels: list[str], series: list[tuple[str, list[Estimate]]]) -> None:
    import numpy as np

    x = np.arange(len(labels))
    width = 0.8 / len(series)
    for s, (label, values) in enumerate(series):
        colour = COLOURS[label]
        xs = x + (s - (len(series) - 1) / 2) * width
        for xi, e in zip(xs, values, strict=True):
            if e.value is None:
                ax.text(xi, 2, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="#555555")
                continue
            ax.bar(xi, e.value, width * 0.92, color=colour, alpha=0.85, gid=f"bar:{label}")
            # the value's mark: a 0 (no bar) still shows as a thin line on the baseline
            ax.hlines(e.value, xi - width * 0.46, xi + width * 0.46, colors=colour, linewidth=2.0, zorder=3,
                      gid=f"mark:{label}")
            top = e.value
            if e.lo is not None and e.hi is not None:
                # max(0, ...): rounding can put a bound a hair past the value (0 correct: lo ~ 1e-17)
                ax.errorbar(xi, e.value, yerr=[[max(0.0, e.value - e.lo)], [max(0.0, e.hi - e.value)]], fmt="none",
                            ecolor="black", elinewidth=0.8, capsize=2, zorder=4)
                top = e.hi
            ax.text(xi, top + 1.5, f"{e.value:.1f}", rotation=90, ha="center", va="bottom", fontsize=6)
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set_ylim(-2, 122)  # below 0: room for a 0's mark; above 100: room for the values
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("%", fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="y", alpha=0.3)


def plot(scores: dict[str, Any], baseline: dict[str, Any] | None, path: Path, title: str, k: int = 5) -> Path:
    """Save `figure(...)` as a PNG `CHART_WIDTH_PX` wide (written atomically)."""
    import matplotlib.pyplot as plt

    fig = figure(scores, baseline, title, k)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=CHART_DPI)
    plt.close(fig)
    os.replace(tmp, path)
    return path
