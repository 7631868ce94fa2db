"""The evaluation report: table values, the model card beside ours, a real PNG chart, HTML with it embedded."""

import pytest
from PIL import Image

from vigos.errors import VigosError
from vigos.evaluation.report import MODEL_CARD, write_report

SCORES = {
    "benchmarks": {
        "mm-vet": {"n_examples": 8, "k": 5, "pass_at_k": 40.0, "avg_at_k": 20.0, "grader": "rules (approximate)"},
        "cv-bench": {"n_examples": 6, "k": 5, "pass_at_k": 70.0, "avg_at_k": 33.0, "grader": "rules",
                     "official": {"pass_at_k": 62.5, "avg_at_k": 50.0, "missing_sources": []}},
    },
    "mean": {"pass_at_k": 55.0, "avg_at_k": 26.5},
    "vilp": {"vilp-f": {"score": 50.0, "prior": 80.0}},
}
BASE = {
    "benchmarks": {"mm-vet": {"n_examples": 8, "k": 5, "pass_at_k": 30.0, "avg_at_k": 10.0}},
    "mean": {"pass_at_k": 30.0, "avg_at_k": 10.0},
    "vilp": {},
}


def test_report_files(tmp_path):
    paths = write_report(SCORES, tmp_path, BASE, model="m")
    md = paths.markdown.read_text()
    # MM-Vet graded without its judge says so in its row
    assert "| mm-vet | 8 | rules (approximate) | 40.00 / 20.00 | 30.00 / 10.00 | 72.02 / 54.40 |" in md
    assert "| cv-bench | 6 | rules | 70.00 / 33.00 | - | 91.09 / 73.58 |" in md  # no baseline for it: a dash
    assert "| mean |  |  | 55.00 / 26.50 | 30.00 / 10.00 | 75.60 / 50.99 |" in md
    assert "| vilp-f | 50.00 / 80.00 | - | 62.67 / 97.00 |" in md
    with Image.open(paths.chart) as im:
        assert im.format == "PNG" and im.size[0] > 600
    page = paths.html.read_text()
    assert "data:image/png;base64," in page and "<td>mm-vet</td>" in page


def test_cv_bench_official_overall_beside_the_pooled_number(tmp_path):
    base = {**BASE, "benchmarks": {**BASE["benchmarks"], "cv-bench": {
        "n_examples": 2, "k": 5, "pass_at_k": 50.0, "avg_at_k": 40.0,
        "official": {"pass_at_k": None, "avg_at_k": None, "missing_sources": ["COCO"]}}}}
    paths = write_report(SCORES, tmp_path, base, model="m")
    md, page = paths.markdown.read_text(), paths.html.read_text()
    assert "| cv-bench | 6 | rules | 70.00 / 33.00 | 50.00 / 40.00 | 91.09 / 73.58 |" in md  # the table stays pooled
    line = ("cv-bench official overall Pass@5 / Avg@5 (mean of 2D = mean(ADE20K, COCO) and 3D = Omni3D): "
            "this model 62.50 / 50.00, base model - (no COCO rows). "
            "The table's cv-bench row is pooled over all items (the ViGOS paper's number).")
    assert line in md
    assert "<p>cv-bench official overall Pass@5 / Avg@5 (mean of 2D = mean(ADE20K, COCO) and 3D = Omni3D): " \
           "this model 62.50 / 50.00, base model - (no COCO rows). The table&#x27;s cv-bench row is pooled" in page
    # no base model: no base figure; scores without cv-bench: no line
    assert "this model 62.50 / 50.00. The table's" in write_report(SCORES, tmp_path / "b").markdown.read_text()
    only_mmvet = {**BASE, "benchmarks": {"mm-vet": BASE["benchmarks"]["mm-vet"]}}
    assert "official overall" not in write_report(only_mmvet, tmp_path / "c").markdown.read_text()


def test_model_card_numbers():
    assert len(MODEL_CARD["benchmarks"]) == 8
    passes = [p for p, _ in MODEL_CARD["benchmarks"].values()]
    assert round(sum(passes) / 8, 2) == MODEL_CARD["mean"][0]  # the card's mean is the plain mean of the eight


def test_report_names_the_prompt_set_and_refuses_a_mixed_comparison(tmp_path):
    scores, base = {**SCORES, "student_prompt": "release"}, {**BASE, "student_prompt": "release"}
    paths = write_report(scores, tmp_path / "a", base, model="m")
    assert "Student prompt set: `release` (base model: the same)." in paths.markdown.read_text()
    assert "Student prompt set: <code>release</code>" in paths.html.read_text()
    assert "Student prompt set: `unknown`." in write_report(SCORES, tmp_path / "b").markdown.read_text()
    with pytest.raises(VigosError, match="'release' student prompt and the base model with 'model-card'"):
        write_report(scores, tmp_path / "c", {**BASE, "student_prompt": "model-card"})
