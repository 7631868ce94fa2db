"""The evaluation report: Markdown + HTML (with the chart embedded) + the chart as PNG.

One table and one grouped bar chart: Pass@5 / Avg@5 per benchmark for this model, the base model evaluated in the
same run (when given), and the ViGOS-7B model card's published numbers; then ViLP Score / Prior. Inputs follow the
scores JSON contract (ARCHITECTURE.md); percentages 0-100 throughout.

The table's numbers are pooled over each benchmark's questions (the ViGOS paper's, comparable with the card). Under
it, a line gives each benchmark's official overall where its breakdown defines one (CV-Bench: mean of 2D =
mean(ADE20K, COCO) and 3D = Omni3D, `vigos.evaluation.metrics.BREAKDOWNS`) for this model and the base model.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vigos.evaluation.metrics import BREAKDOWNS, MAIN_BENCHMARKS

VILP_BENCHMARKS = ("vilp-f", "vilp-p")

# ViGOS-7B model card (../shared/seed): Pass@5 / Avg@5 and ViLP Score / Prior, in percent.
MODEL_CARD = {
    "benchmarks": {
        "mm-vet": (72.02, 54.40), "mmmu": (80.11, 51.42), "mmmu-pro": (64.81, 36.48),
        "mathverse": (68.91, 44.77), "mathvista": (80.90, 58.78), "mmsi": (61.10, 25.58),
        "realworldqa": (85.88, 62.88), "cv-bench": (91.09, 73.58),
    },
    "mean": (75.60, 50.99),
    "vilp": {"vilp-f": (62.67, 97.00), "vilp-p": (61.67, 91.67)},
}


@dataclass
class ReportPaths:
    markdown: Path
    html: Path
    chart: Path


def _pair(scores: dict[str, Any] | None, name: str) -> tuple[float, float] | None:
    if not scores:
        return None
    row = scores.get("benchmarks", {}).get(name)
    return (row["pass_at_k"], row["avg_at_k"]) if row else None


def _fmt(pair: tuple[float, float] | None) -> str:
    return "-" if pair is None else f"{pair[0]:.2f} / {pair[1]:.2f}"


def table_rows(scores: dict[str, Any], baseline: dict[str, Any] | None) -> list[tuple[str, ...]]:
    """(benchmark, n, graded by, this model, base model, model card) per benchmark evaluated, then the mean.

    "graded by" is this model's grader for the column: a benchmark meant for the LLM judge that was graded by rules
    (MM-Vet without a judge) reads "rules (approximate)"."""
    rows = []
    names = [n for n in MAIN_BENCHMARKS if n in scores.get("benchmarks", {})]
    names += [n for n in scores.get("benchmarks", {}) if n not in names]
    for name in names:
        row = scores["benchmarks"][name]
        card = MODEL_CARD["benchmarks"].get(name)
        rows.append((name, str(row.get("n_examples", "")), str(row.get("grader", "")), _fmt(_pair(scores, name)),
                     _fmt(_pair(baseline, name)), _fmt(card)))
    mean = scores.get("mean")
    if mean:
        base_mean = (baseline or {}).get("mean")
        rows.append(("mean", "", "", _fmt((mean["pass_at_k"], mean["avg_at_k"])),
                     _fmt((base_mean["pass_at_k"], base_mean["avg_at_k"]) if base_mean else None),
                     _fmt(MODEL_CARD["mean"])))
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
        return f"- (no {', '.join(missing)} rows)" if missing else "-"
    return _fmt((official["pass_at_k"], official["avg_at_k"]))


def vilp_rows(scores: dict[str, Any], baseline: dict[str, Any] | None) -> list[tuple[str, ...]]:
    rows = []
    for name, row in scores.get("vilp", {}).items():
        base = (baseline or {}).get("vilp", {}).get(name)
        rows.append((name, _fmt((row["score"], row["prior"])), _fmt((base["score"], base["prior"]) if base else None),
                     _fmt(MODEL_CARD["vilp"].get(name))))
    return rows


def plot(scores: dict[str, Any], baseline: dict[str, Any] | None, path: Path, title: str, k: int = 5) -> Path:
    """Grouped bars: Pass@k (solid) and Avg@k (hatched) per benchmark, for this model / base / model card."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [n for n, *_ in table_rows(scores, baseline)]
    series = [("this model", scores, "#1f77b4"), ("base model", baseline, "#7f7f7f")]

    def values(src: dict[str, Any] | None, name: str) -> tuple[float, float]:
        if name == "mean":
            m = (src or {}).get("mean")
            return (m["pass_at_k"], m["avg_at_k"]) if m else (np.nan, np.nan)
        return _pair(src, name) or (np.nan, np.nan)

    card = [MODEL_CARD["mean"] if n == "mean" else MODEL_CARD["benchmarks"].get(n, (np.nan, np.nan)) for n in names]
    groups = [(label, [values(src, n) for n in names], colour) for label, src, colour in series if src is not None]
    groups.append(("ViGOS-7B model card", card, "#ff7f0e"))
    x = np.arange(len(names))
    width = 0.8 / (2 * len(groups))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(names) + 2), 4.5))
    for g, (label, vals, colour) in enumerate(groups):
        offset = (2 * g - len(groups) + 0.5) * width
        ax.bar(x + offset, [v[0] for v in vals], width, color=colour, label=f"{label} Pass@{k}")
        ax.bar(x + offset + width, [v[1] for v in vals], width, color=colour, alpha=0.45, hatch="//",
               label=f"{label} Avg@{k}")
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=len(groups), loc="upper center", bbox_to_anchor=(0.5, -0.22))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


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


def _md_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def write_report(
    scores: dict[str, Any], out_dir: str | Path, baseline: dict[str, Any] | None = None,
    title: str = "ViGOS evaluation", model: str = "",
) -> ReportPaths:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    k = next(iter(scores.get("benchmarks", {}).values()), {}).get("k", 5)
    chart = plot(scores, baseline, out / "eval_chart.png", title, k)
    graders = sorted({row.get("grader", "rules") for row in scores.get("benchmarks", {}).values()})
    header = ("benchmark", "n", "graded by", f"this model Pass@{k} / Avg@{k}", "base model", "ViGOS-7B card")
    vheader = ("ViLP", "this model Score / Prior", "base model", "ViGOS-7B card")
    prompt = prompt_set(scores, baseline)
    lines = [f"# {title}", ""]
    if model:
        lines += [f"Model: `{model}`. Graders: {', '.join(graders) or '-'}. Percentages.", ""]
    lines += [f"Student prompt set: `{prompt}`" + (" (base model: the same)" if baseline else "") + ".", ""]
    lines += _md_table(header, table_rows(scores, baseline))
    official = official_lines(scores, baseline, k)
    for line in official:
        lines += ["", line]
    if scores.get("vilp"):
        lines += ["", *_md_table(vheader, vilp_rows(scores, baseline))]
    lines += ["", f"![Pass@{k} and Avg@{k} per benchmark]({chart.name})", ""]
    md_path = out / "eval_report.md"
    _atomic(md_path, "\n".join(lines))

    png = base64.b64encode(chart.read_bytes()).decode()

    def html_table(h: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in h)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child"
        "{text-align:left}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        + (f"<p>Model: <code>{html.escape(model)}</code>. Graders: {html.escape(', '.join(graders))}.</p>"
           if model else "")
        + f"<p>Student prompt set: <code>{html.escape(prompt)}</code>.</p>"
        + html_table(header, table_rows(scores, baseline))
        + "".join(f"<p>{html.escape(line)}</p>" for line in official)
        + (html_table(vheader, vilp_rows(scores, baseline)) if scores.get("vilp") else "")
        + f"<img alt='Pass@k and Avg@k per benchmark' src='data:image/png;base64,{png}'/></body></html>"
    )
    html_path = out / "eval_report.html"
    _atomic(html_path, page)
    return ReportPaths(md_path, html_path, chart)


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
