"""The evaluation report: header, table values with 95% intervals, the model card beside ours, definitions, a chart
that fits a laptop screen (ViLP included, a 0 visible), HTML self-contained with the chart embedded."""

import base64
import io
import re

import pytest
from PIL import Image

from vigos.errors import VigosError
from vigos.evaluation.report import (
    APPROX_MARK,
    CHART_WIDTH_PX,
    MODEL_CARD,
    REPORT_SETTINGS,
    Estimate,
    benchmark_estimates,
    chart_series,
    figure,
    mean_estimates,
    vilp_estimates,
    wilson,
    write_report,
)

SCORES = {
    "benchmarks": {
        "mm-vet": {"n_examples": 8, "k": 5, "pass_at_k": 40.0, "avg_at_k": 20.0, "avg_at_k_se": 9.0,
                   "grader": "rules (approximate)"},
        "cv-bench": {"n_examples": 6, "k": 5, "pass_at_k": 70.0, "avg_at_k": 33.0, "grader": "rules",
                     "official": {"pass_at_k": 62.5, "avg_at_k": 50.0, "missing_sources": []}},
    },
    "mean": {"pass_at_k": 55.0, "avg_at_k": 26.5},
    "vilp": {"vilp-f": {"score": 50.0, "prior": 80.0, "n_examples": 30, "k": 1, "grader": "rules", "by_position": {
        "1": {"n_examples": 10, "accuracy": 80.0}, "2": {"n_examples": 10, "accuracy": 60.0},
        "3": {"n_examples": 10, "accuracy": 40.0}}}},
}
BASE = {
    "benchmarks": {"mm-vet": {"n_examples": 8, "k": 5, "pass_at_k": 30.0, "avg_at_k": 10.0, "avg_at_k_se": 5.0,
                              "grader": "rules (approximate)"}},
    "mean": {"pass_at_k": 30.0, "avg_at_k": 10.0},
    "vilp": {},
}
SETTINGS = {"temperature": 1.0, "top_p": 0.9, "top_k": 20, "max_new_tokens": 4096, "seed": 42, "max_images": 16,
            "max_examples": None}


def _ci(value, n):
    lo, hi = wilson(value, n)
    return f"{value:.1f} [{lo:.1f}, {hi:.1f}]"


def test_wilson_interval_known_values():
    assert wilson(0.0, 10) == (0.0, pytest.approx(27.753, abs=1e-3))  # 0 of 10: not [0, 0]
    assert wilson(50.0, 10) == (pytest.approx(23.659, abs=1e-3), pytest.approx(76.341, abs=1e-3))
    assert wilson(100.0, 3)[1] == 100.0 and wilson(None, 3) is None and wilson(50.0, 0) is None


def test_avg_interval_uses_questions_as_clusters():
    row = {"n_examples": 8, "k": 5, "pass_at_k": 40.0, "avg_at_k": 20.0}
    p, a = benchmark_estimates({**row, "avg_at_k_se": 9.0})
    assert (p.lo, p.hi) == wilson(40.0, 8)  # Pass@k: Wilson over the 8 questions
    # Avg@k: Wilson at n_eff = p(1-p)/SE^2 = 0.16 / 0.0081
    assert (a.lo, a.hi) == pytest.approx(wilson(20.0, 0.16 / 0.0081)) and not a.approx
    # n_eff kept within [n, n*k]: a tiny SE gives the independent-samples interval, a huge one the questions'
    assert benchmark_estimates({**row, "avg_at_k_se": 0.01})[1].hi == pytest.approx(wilson(20.0, 40)[1])
    assert benchmark_estimates({**row, "avg_at_k_se": 50.0})[1].hi == pytest.approx(wilson(20.0, 8)[1])
    # all questions alike (SE 0, e.g. all wrong): the questions' interval, not [0, 0]
    zero = benchmark_estimates({**row, "avg_at_k": 0.0, "avg_at_k_se": 0.0})[1]
    assert zero.hi == pytest.approx(wilson(0.0, 8)[1]) and zero.hi > 0
    # scores without avg_at_k_se: n*k independent samples, flagged
    old = benchmark_estimates(row)[1]
    assert old.approx and old.hi == pytest.approx(wilson(20.0, 40)[1])


def test_mean_and_vilp_intervals():
    p, a = mean_estimates(SCORES)
    ses = [benchmark_estimates(SCORES["benchmarks"][n])[0].se for n in ("mm-vet", "cv-bench")]
    assert p.hi - p.value == pytest.approx(1.959964 * (ses[0] ** 2 + ses[1] ** 2) ** 0.5 / 2)
    assert a.approx  # cv-bench's Avg@k interval ignores the correlation, so does the mean's
    score, prior = vilp_estimates(SCORES["vilp"]["vilp-f"])
    assert (prior.lo, prior.hi) == wilson(80.0, 10)
    assert score.value == 50.0 and score.lo < 50.0 < score.hi
    assert vilp_estimates({"score": 50.0, "prior": 80.0}) == (Estimate(50.0), Estimate(80.0))  # no by_position


def test_report_files(tmp_path):
    paths = write_report(SCORES, tmp_path, BASE, model="m", base_model="Qwen/Qwen2.5-VL-7B-Instruct")
    md = paths.markdown.read_text()
    mm_pass, mm_avg = benchmark_estimates(SCORES["benchmarks"]["mm-vet"])
    b_pass, b_avg = benchmark_estimates(BASE["benchmarks"]["mm-vet"])
    assert ("| benchmark | n | graded by | Pass@5 [95% CI] | Avg@5 [95% CI] | base model Pass@5 | base model Avg@5 "
            "| ViGOS-7B card Pass@5 / Avg@5 |") in md
    # MM-Vet graded without its judge says so in its row; intervals as `value [lo, hi]`; the card as published
    assert (f"| mm-vet | 8 | rules (approximate) | {_ci(40.0, 8)} | 20.0 [{mm_avg.lo:.1f}, {mm_avg.hi:.1f}] "
            f"| {_ci(30.0, 8)} | 10.0 [{b_avg.lo:.1f}, {b_avg.hi:.1f}] | 72.02 / 54.40 |") in md
    # cv-bench: no avg_at_k_se in its scores -> the flagged interval; no baseline for it -> n/a
    assert f"| cv-bench | 6 | rules | {_ci(70.0, 6)} | {_ci(33.0, 30)}{APPROX_MARK} | n/a | n/a | 91.09 / 73.58 |" in md
    assert re.search(r"\| mean \|  \|  \| 55\.0 \[[\d.]+, [\d.]+\] \| 26\.5 \[[\d.]+, [\d.]+\]† "
                     r"\| 30\.0 \[[\d.]+, [\d.]+\] \| 10\.0 \[[\d.]+, [\d.]+\] \| 75\.60 / 50\.99 \|", md)
    assert "| ViLP | n | Score [95% CI] | Prior [95% CI] | base model Score | base model Prior |" in md
    score = vilp_estimates(SCORES["vilp"]["vilp-f"])[0]
    assert f"| vilp-f | 30 | 50.0 [{score.lo:.1f}, {score.hi:.1f}] | {_ci(80.0, 10)} | n/a | n/a | 62.67 / 97.00 |" in md
    # how the intervals are made, the flagged one explained
    assert "Pass@5: Wilson score interval over the n questions" in md
    assert "questions as clusters" in md and f"{APPROX_MARK} Avg@5 interval over the n x 5 samples" in md
    assert "ignores the within-question correlation" in md
    with Image.open(paths.chart) as im:
        assert im.format == "PNG" and 600 < im.size[0] <= 1000  # fits a laptop screen
    page = paths.html.read_text()
    assert "data:image/png;base64," in page and "<td>mm-vet</td>" in page
    assert f"<td class='ci'>{_ci(70.0, 6)}</td>" in page


def test_header_names_what_was_evaluated_and_how(tmp_path):
    scores = {**SCORES, "student_prompt": "release"}
    paths = write_report(scores, tmp_path, {**BASE, "student_prompt": "release"}, model="/vol/run-1/merged",
                         base_model="Qwen/Qwen2.5-VL-7B-Instruct",
                         run_ids={"KFP run": "kfp-123", "MLflow run": "abc", "MLflow pipeline run": ""},
                         settings={**SETTINGS, "max_examples": 50})
    md = paths.markdown.read_text()
    header = md.split("| benchmark |")[0]
    for line in [
        "- Model evaluated: `/vol/run-1/merged`",
        "- Base model: `Qwen/Qwen2.5-VL-7B-Instruct`",
        "- KFP run: `kfp-123`",
        "- MLflow run: `abc`",
        "- Samples per question (k): 5 (ViLP: 1)",
        "- Student prompt set: `release` (base model: the same)",
        "- Graded by: mm-vet: rules (approximate); cv-bench, vilp-f: rules",
        "- Sampling: temperature 1.0, top-p 0.9, top-k 20, max new tokens 4096, seed 42, max images per question 16",
        "- Questions: at most 50 per benchmark (a `max_examples` subset: not comparable with the model card)",
    ]:
        assert line in header.splitlines(), line
    assert "MLflow pipeline run" not in md  # unknown ids are left out
    page = paths.html.read_text()
    assert "<li>Model evaluated: <code>/vol/run-1/merged</code></li>" in page
    assert "<li>KFP run: <code>kfp-123</code></li>" in page and "<li>Sampling: temperature 1.0, top-p 0.9" in page
    # the steps pass exactly these config fields
    assert set(REPORT_SETTINGS) == {"temperature", "top_p", "top_k", "max_new_tokens", "seed", "max_examples",
                                    "max_images"}
    # the full benchmarks; nothing known about the base model or the settings
    full = write_report(SCORES, tmp_path / "b", settings=SETTINGS).markdown.read_text()
    assert "- Questions: all of each benchmark" in full
    bare = write_report(SCORES, tmp_path / "c").markdown.read_text()
    assert "- Model evaluated: not recorded" in bare and "- Sampling: not recorded" in bare
    assert "- Base model: not recorded (its scores are not in this report)" in bare


def test_terms_are_defined(tmp_path):
    paths = write_report(SCORES, tmp_path, BASE, model="m")
    md, page = paths.markdown.read_text(), paths.html.read_text()
    for start in ("- Pass@5: the share of questions for which at least one of the 5 sampled answers is correct",
                  "- Avg@5: correct samples / all samples",
                  "- ViLP Score: the mean accuracy at positions 2 and 3, the images that contradict the language prior",
                  "- Pooled vs official: every table number is pooled"):
        assert start in md
    assert "ViLP Prior: the accuracy at position 1, the image consistent with the prior" in md
    assert "<h2>Terms</h2>" in page and "<li>Avg@5: correct samples / all samples" in page
    assert md.index("Terms:") < md.index("![")  # the KFP summary (the text before the chart) keeps them


def test_cv_bench_official_overall_beside_the_pooled_number(tmp_path):
    base = {**BASE, "benchmarks": {**BASE["benchmarks"], "cv-bench": {
        "n_examples": 2, "k": 5, "pass_at_k": 50.0, "avg_at_k": 40.0,
        "official": {"pass_at_k": None, "avg_at_k": None, "missing_sources": ["COCO"]}}}}
    paths = write_report(SCORES, tmp_path, base, model="m")
    md, page = paths.markdown.read_text(), paths.html.read_text()
    assert f"| cv-bench | 6 | rules | {_ci(70.0, 6)} |" in md and f"| {_ci(50.0, 2)} |" in md  # the table is pooled
    line = ("cv-bench official overall Pass@5 / Avg@5 (mean of 2D = mean(ADE20K, COCO) and 3D = Omni3D): "
            "this model 62.5 / 50.0, base model n/a (no COCO rows). "
            "The table's cv-bench row is pooled over all items (the ViGOS paper's number).")
    assert line in md
    assert "<p>cv-bench official overall Pass@5 / Avg@5 (mean of 2D = mean(ADE20K, COCO) and 3D = Omni3D): " \
           "this model 62.5 / 50.0, base model n/a (no COCO rows). The table&#x27;s cv-bench row is pooled" in page
    # no base model: no base figure; scores without cv-bench: no line
    assert "this model 62.5 / 50.0. The table's" in write_report(SCORES, tmp_path / "b").markdown.read_text()
    only_mmvet = {**BASE, "benchmarks": {"mm-vet": BASE["benchmarks"]["mm-vet"]}}
    assert "cv-bench official overall" not in write_report(only_mmvet, tmp_path / "c").markdown.read_text()


def test_model_card_numbers():
    assert len(MODEL_CARD["benchmarks"]) == 8
    passes = [p for p, _ in MODEL_CARD["benchmarks"].values()]
    assert round(sum(passes) / 8, 2) == MODEL_CARD["mean"][0]  # the card's mean is the plain mean of the eight


def test_report_names_the_prompt_set_and_refuses_a_mixed_comparison(tmp_path):
    scores, base = {**SCORES, "student_prompt": "release"}, {**BASE, "student_prompt": "release"}
    paths = write_report(scores, tmp_path / "a", base, model="m")
    assert "Student prompt set: `release` (base model: the same)" in paths.markdown.read_text()
    assert "Student prompt set: <code>release</code>" in paths.html.read_text()
    assert "Student prompt set: `unknown`" in write_report(SCORES, tmp_path / "b").markdown.read_text()
    with pytest.raises(VigosError, match="'release' student prompt and the base model with 'model-card'"):
        write_report(scores, tmp_path / "c", {**BASE, "student_prompt": "model-card"})


def test_html_is_self_contained(tmp_path):
    page = write_report(SCORES, tmp_path, BASE, model="m").html.read_text()
    srcs = re.findall(r"""(?:src|href)=['"]([^'"]*)""", page)
    assert srcs and all(s.startswith("data:") for s in srcs)  # nothing fetched: works offline, in the KFP UI
    png = base64.b64decode(page.split("data:image/png;base64,")[1].split("'")[0])
    with Image.open(io.BytesIO(png)) as im:
        assert im.size[0] <= 1000
    assert "<link" not in page and "<script" not in page


# --- the chart ----------------------------------------------------------------------------------------------------

ZERO = {
    "benchmarks": {
        "mmmu": {"n_examples": 30, "k": 5, "pass_at_k": 0.0, "avg_at_k": 0.0, "avg_at_k_se": 0.0, "grader": "rules"},
        "mmsi": {"n_examples": 20, "k": 5, "pass_at_k": 45.0, "avg_at_k": 20.0, "avg_at_k_se": 5.0, "grader": "rules"},
    },
    "mean": {"pass_at_k": 22.5, "avg_at_k": 10.0},
    "vilp": {"vilp-p": {"score": 0.0, "prior": 90.0, "n_examples": 30, "k": 1, "grader": "rules", "by_position": {
        "1": {"n_examples": 10, "accuracy": 90.0}, "2": {"n_examples": 10, "accuracy": 0.0},
        "3": {"n_examples": 10, "accuracy": 0.0}}}},
}


def _texts(ax):
    return [t.get_text() for t in ax.texts]


def test_chart_panels_fit_a_laptop_and_show_vilp(tmp_path):
    from vigos.evaluation.metrics import MAIN_BENCHMARKS

    # all eight benchmarks, the mean, both ViLP sets: still at most 1000 px wide
    full = {"benchmarks": {n: {"n_examples": 50, "k": 5, "pass_at_k": 60.0, "avg_at_k": 40.0, "avg_at_k_se": 3.0,
                               "grader": "rules"} for n in MAIN_BENCHMARKS},
            "mean": {"pass_at_k": 60.0, "avg_at_k": 40.0},
            "vilp": {n: {"score": 55.0, "prior": 95.0} for n in ("vilp-f", "vilp-p")}}
    path = write_report(full, tmp_path, full, model="m").chart
    with Image.open(path) as im:
        assert im.size[0] == CHART_WIDTH_PX <= 1000
    fig = figure(full, full, "t")
    try:
        titles = [ax.get_title(loc="left") for ax in fig.axes]
        assert titles[0].startswith("Pass@5 (95% Wilson") and titles[1].startswith("Avg@5 (95% interval")
        assert titles[2].startswith("ViLP: Score") and len(fig.axes) == 3
        assert [t.get_text() for t in fig.axes[2].get_xticklabels()] == [
            "vilp-f Score", "vilp-f Prior", "vilp-p Score", "vilp-p Prior"]
        # error bars on this model's and the base model's bars: 9 x 2 per panel
        assert sum(len(ax.containers) for ax in fig.axes[:1]) >= 18
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    # no ViLP scores: two panels
    panels = chart_series({**full, "vilp": {}}, None)
    assert list(panels) == ["pass", "avg"]
    assert [label for label, _ in panels["pass"][1]] == ["this model", "ViGOS-7B model card"]


def test_a_zero_is_drawn_and_a_missing_number_reads_na(tmp_path):
    import matplotlib.pyplot as plt
    import numpy as np

    fig = figure(ZERO, None, "t")
    try:
        pass_ax, _, vilp_ax = fig.axes
        # mmmu is x = 0; this model's bar is the first of two (this model, card)
        marks = [c for c in pass_ax.collections if c.get_gid() == "mark:this model"]
        zero_marks = [seg for c in marks for seg in c.get_segments() if seg[0][1] == 0.0 and seg[1][1] == 0.0]
        assert len(zero_marks) == 1 and zero_marks[0][1][0] - zero_marks[0][0][0] > 0.1  # a visible line
        assert "0.0" in _texts(pass_ax) and "0.0" in _texts(vilp_ax)  # its value written on it
        assert "n/a" not in _texts(pass_ax)  # every number is there (the card has mmmu, mmsi and the mean)
        # pixel check: the 0 bar's mark is drawn in this model's colour just above the axis
        fig.canvas.draw()
        img = np.asarray(fig.canvas.buffer_rgba())[:, :, :3].astype(int)
        x0, x1 = zero_marks[0][0][0], zero_marks[0][1][0]
        px, py = pass_ax.transData.transform(((x0 + x1) / 2, 0.0))
        row, col = img.shape[0] - int(round(py)), int(round(px))
        patch = img[row - 2:row + 3, col - 3:col + 4]
        blue = (patch[:, :, 2] > 150) & (patch[:, :, 0] < 100)
        assert blue.any(), patch
    finally:
        plt.close(fig)
    off_card = {**ZERO, "benchmarks": {**ZERO["benchmarks"], "synthetic": {
        "n_examples": 3, "k": 5, "pass_at_k": 100.0, "avg_at_k": 60.0, "grader": "rules"}}}
    fig = figure(off_card, {"benchmarks": {}, "mean": None, "vilp": {}}, "t")
    try:
        texts = _texts(fig.axes[0])
        assert texts.count("n/a") >= 4  # the card's synthetic, the base model's mmmu, mmsi, synthetic, mean
    finally:
        plt.close(fig)


def test_scores_from_metrics_get_clustered_avg_intervals(tmp_path):
    from vigos.evaluation.metrics import compute_scores

    graded = [{"benchmark": "mmmu", "example_id": f"q{q}", "sample_index": s, "correct": (q + s) % 3 == 0}
              for q in range(6) for s in range(5)]
    md = write_report(compute_scores(graded, "rules"), tmp_path).markdown.read_text()
    row = next(line for line in md.splitlines() if line.startswith("| mmmu |"))
    assert re.fullmatch(r"\| mmmu \| 6 \| rules \| [\d.]+ \[[\d.]+, [\d.]+\] \| [\d.]+ \[[\d.]+, [\d.]+\] "
                        r"\| 80\.11 / 51\.42 \|", row), row
    assert APPROX_MARK not in md  # scores.json now carries avg_at_k_se: no interval is flagged


def test_intervals_hold_their_estimate_and_the_chart_takes_a_bound_a_hair_off(tmp_path):
    from vigos.evaluation import report

    for n in (1, 3, 7.5, 30, 1000):
        for p in (0.0, 100.0, 33.3):
            lo, hi = report.wilson(p, n)
            assert lo <= p <= hi, (p, n, lo, hi)
    # a bound past its value by rounding (seen in the local DAG: 0 correct) must not break the chart
    scores = {"benchmarks": {"mmmu": {"n_examples": 3, "k": 5, "pass_at_k": 0.0, "avg_at_k": 0.0, "grader": "rules"}},
              "mean": {"pass_at_k": 0.0, "avg_at_k": 0.0}, "vilp": {}}
    odd = report.Estimate(0.0, 1e-15, 10.0)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    report._bars(ax, ["mmmu"], [("this model", [odd])])
    plt.close(fig)
    assert report.write_report(scores, tmp_path).html.exists()
