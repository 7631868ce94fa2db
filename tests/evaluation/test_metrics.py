"""Pass@k / Avg@k, the breakdowns, ViLP Score / Prior and the mean, against hand-computed numbers."""

import pytest

from vigos.errors import VigosError
from vigos.evaluation.metrics import (
    MAIN_BENCHMARKS,
    compute_scores,
    flatten_scores,
    pass_avg,
    tracking_metrics,
    vilp_scores,
)


def rows(bench, grid, meta=None, grader="rules"):
    """One row per sample: grid = {example_id: [correct per sample]}."""
    return [
        {"benchmark": bench, "example_id": q, "sample_index": s, "correct": c, "meta": dict(meta or {}),
         "grader": grader}
        for q, cs in grid.items()
        for s, c in enumerate(cs)
    ]


def test_pass_and_avg_at_k():
    # q1: 1 of 5 right, q2: none, q3: 4 of 5 -> Pass@5 = 2/3, Avg@5 = 5/15
    got = pass_avg(rows("mmmu", {"q1": [1, 0, 0, 0, 0], "q2": [0] * 5, "q3": [1, 1, 1, 1, 0]}))
    assert got == {"n_examples": 3, "k": 5, "pass_at_k": pytest.approx(200 / 3), "avg_at_k": pytest.approx(100 / 3)}


def test_partial_credit_counts_its_value():
    # Avg@k sums the credits; Pass@k takes each question's best sample (any() for booleans).
    got = pass_avg(rows("mm-vet", {"q1": [0.5, 0.0], "q2": [True, 0.25]}))
    assert got["avg_at_k"] == pytest.approx(100 * 1.75 / 4)
    assert got["pass_at_k"] == pytest.approx(100 * 1.5 / 2)


def test_incomplete_questions_are_flagged():
    got = pass_avg(rows("mmmu", {"q1": [True, False, False], "q2": [True]}))
    assert got["k"] == 3 and got["incomplete_examples"] == 1
    assert got["avg_at_k"] == pytest.approx(50.0) and got["pass_at_k"] == 100.0


def cv_rows():
    """ADE20K: a 1/2 right, b 0/2 -> 50 / 25; COCO: c 2/2 -> 100 / 100; Omni3D: d 2/2, e 0/2, f 0/2, g 1/2 -> 50 / 37.5."""
    return (rows("cv-bench", {"a": [1, 0], "b": [0, 0]}, {"type": "2D", "source": "ADE20K"})
            + rows("cv-bench", {"c": [1, 1]}, {"type": "2D", "source": "COCO"})
            + rows("cv-bench", {"d": [1, 1], "e": [0, 0], "f": [0, 0], "g": [0, 1]}, {"type": "3D", "source": "Omni3D"}))


def test_cv_bench_pooled_and_official_overall_differ():
    s = compute_scores(cv_rows(), "rules")["benchmarks"]["cv-bench"]
    assert s["n_examples"] == 7 and s["k"] == 2
    assert s["pass_at_k"] == pytest.approx(400 / 7)  # pooled over items (a, c, d, g of 7): the paper's number
    assert s["avg_at_k"] == pytest.approx(600 / 14)  # 6 right samples of 14
    assert s["sources"] == {
        "ADE20K": {"n_examples": 2, "k": 2, "pass_at_k": 50.0, "avg_at_k": 25.0},
        "COCO": {"n_examples": 1, "k": 2, "pass_at_k": 100.0, "avg_at_k": 100.0},
        "Omni3D": {"n_examples": 4, "k": 2, "pass_at_k": 50.0, "avg_at_k": 37.5},
    }
    # 2D = mean(ADE20K, COCO), not the 2D items pooled (that would be 66.67 / 50)
    assert s["2D"] == {"n_examples": 3, "pass_at_k": 75.0, "avg_at_k": 62.5, "sources": ["ADE20K", "COCO"]}
    assert s["3D"] == {"n_examples": 4, "pass_at_k": 50.0, "avg_at_k": 37.5, "sources": ["Omni3D"]}
    # official = mean(2D, 3D): Pass (75 + 50) / 2, Avg (62.5 + 37.5) / 2
    assert s["official"] == {"pass_at_k": 62.5, "avg_at_k": 50.0, "missing_sources": []}
    assert "macro" not in s
    flat = flatten_scores(compute_scores(cv_rows(), "rules"))
    assert flat["cv-bench.official.pass_at_k"] == 62.5 and flat["cv-bench.sources.COCO.avg_at_k"] == 100.0
    assert flat["cv-bench.2D.pass_at_k"] == 75.0 and flat["cv-bench.pass_at_k"] == pytest.approx(400 / 7)


def test_cv_bench_missing_source_gives_no_official_overall():
    data = [r for r in cv_rows() if r["meta"]["source"] != "COCO"]
    data += rows("cv-bench", {"h": [1, 1]}, {"type": "2D"})  # no source: pooled only
    s = compute_scores(data, "rules")["benchmarks"]["cv-bench"]
    assert s["n_examples"] == 7 and s["pass_at_k"] == pytest.approx(400 / 7)  # a, d, g, h of 7
    assert sorted(s["sources"]) == ["ADE20K", "Omni3D"]
    assert s["2D"] == {"n_examples": 2, "pass_at_k": None, "avg_at_k": None, "sources": ["ADE20K", "COCO"]}
    assert s["3D"]["pass_at_k"] == 50.0  # complete: all its sources are there
    assert s["official"] == {"pass_at_k": None, "avg_at_k": None, "missing_sources": ["COCO"]}
    flat = flatten_scores(compute_scores(data, "rules"))
    assert "cv-bench.official.pass_at_k" not in flat and "cv-bench.2D.pass_at_k" not in flat
    no_source = compute_scores(rows("cv-bench", {"x": [1]}, {"type": "3D"}), "rules")["benchmarks"]["cv-bench"]
    assert no_source["pass_at_k"] == 100.0 and no_source["sources"] == {}
    assert no_source["official"]["missing_sources"] == ["ADE20K", "COCO", "Omni3D"]


def test_mmmu_pro_subsets_pooled_and_macro():
    data = rows("mmmu-pro", {"standard/0": [1], "standard/1": [1], "standard/2": [0]}, {"subset": "standard"})
    data += rows("mmmu-pro", {"vision/0": [0]}, {"subset": "vision"})
    s = compute_scores(data, "rules")["benchmarks"]["mmmu-pro"]
    assert s["pass_at_k"] == 50.0  # pooled: 2 of 4
    assert s["standard"]["pass_at_k"] == pytest.approx(200 / 3) and s["vision"]["pass_at_k"] == 0.0
    assert s["macro"]["pass_at_k"] == pytest.approx(100 / 3) and s["macro"]["subsets"] == ["standard", "vision"]


def test_vilp_score_and_prior_with_all_three_positions():
    data = []
    for row in range(4):  # 4 ViLP rows x 3 positions = 12 items, one sample each
        for pos, right in ((1, row < 3), (2, row < 2), (3, row < 1)):
            data.append({"benchmark": "vilp-f", "example_id": f"{row}-{pos}", "sample_index": 0, "correct": right,
                         "meta": {"position": pos, "row": row}})
    v = compute_scores(data, "rules")["vilp"]["vilp-f"]
    assert v["prior"] == 75.0  # position 1: 3 of 4
    assert v["score"] == pytest.approx((50.0 + 25.0) / 2)  # mean of positions 2 (2/4) and 3 (1/4)
    assert v["by_position"]["2"] == {"n_examples": 4, "accuracy": 50.0}
    assert v["grader"] == "rules" and v["n_examples"] == 12 and v["k"] == 1


def test_vilp_missing_position():
    ok = {"benchmark": "vilp-p", "example_id": "0-1", "sample_index": 0, "correct": True, "meta": {"position": 1}}
    assert vilp_scores("vilp-p", [ok], "rules")["score"] is None  # no position 2/3 rows: no Score
    bad = {**ok, "example_id": "0-2", "meta": {}}
    with pytest.raises(VigosError, match=r"vilp-p example '0-2': meta.position is None"):
        vilp_scores("vilp-p", [ok, bad], "rules")


def test_mean_over_present_main_benchmarks_only():
    data = rows("mmmu", {"q1": [1, 0], "q2": [0, 0]})  # 50 / 25
    data += rows("cv-bench", {"a": [1, 1]}, {"type": "2D"})  # 100 / 100
    data += rows("synthetic", {"x": [1, 1]})  # not one of the eight
    data += [{"benchmark": "vilp-f", "example_id": "0-1", "sample_index": 0, "correct": False,
              "meta": {"position": 1}}]
    out = compute_scores(data, "rules")
    assert list(out["benchmarks"]) == ["mmmu", "cv-bench", "synthetic"]  # model-card order first
    assert out["mean"]["pass_at_k"] == 75.0 and out["mean"]["avg_at_k"] == 62.5
    assert out["mean"]["benchmarks"] == ["mmmu", "cv-bench"]
    assert set(out["mean"]["missing"]) == set(MAIN_BENCHMARKS) - {"mmmu", "cv-bench"}
    assert "vilp-f" in out["vilp"] and "vilp-f" not in out["benchmarks"]


def test_grader_is_recorded():
    data = rows("mmmu", {"q1": [1, 0]}, grader="judge") + rows("mmmu", {"q2": [0, 0]}, grader="rules")
    data[-1]["judge_failed"] = data[-2]["judge_failed"] = True
    s = compute_scores(data, "judge")["benchmarks"]["mmmu"]
    assert s["grader"] == "judge" and s["graded_by"] == {"judge": 2, "rules": 2} and s["ungraded_by_judge"] == 1
    assert compute_scores(data, "rules")["grader"] == "rules"


def test_empty_mean():
    out = compute_scores([], "rules")
    assert out["benchmarks"] == {} and out["mean"]["pass_at_k"] is None and out["vilp"] == {}


def test_avg_at_k_standard_error_treats_questions_as_clusters():
    from vigos.evaluation.metrics import avg_at_k_se

    # equal k: the standard error of the per-question accuracies (0.2, 0, 0.8): sd / sqrt(n)
    grid = {"q1": [1, 0, 0, 0, 0], "q2": [0] * 5, "q3": [1, 1, 1, 1, 0]}
    means = [0.2, 0.0, 0.8]
    m = sum(means) / 3
    sd = (sum((x - m) ** 2 for x in means) / 2) ** 0.5
    assert avg_at_k_se(rows("mmmu", grid)) == pytest.approx(100 * sd / 3 ** 0.5)
    # every question answered alike by all its samples: no spread, SE 0; one question: no SE
    assert avg_at_k_se(rows("mmmu", {"q1": [1, 1], "q2": [1, 1]})) == 0.0
    assert avg_at_k_se(rows("mmmu", {"q1": [1, 0]})) is None
    # uneven k (a run in progress): the ratio estimator's cluster SE; (1, 1 of 2), (0 of 1): A = 1/3,
    # residuals c - s*A = 1 - 2/3, 0 - 1/3 -> sqrt(2 * (1/9 + 1/9)) / 3
    assert avg_at_k_se(rows("mmmu", {"q1": [1, 0], "q2": [0]})) == pytest.approx(100 * (4 / 9) ** 0.5 / 3)
    # in the scores of every benchmark (not ViLP), and flattened for MLflow
    s = compute_scores(cv_rows(), "rules")
    assert s["benchmarks"]["cv-bench"]["avg_at_k_se"] == pytest.approx(17.004, abs=1e-3)
    assert "avg_at_k_se" not in s["benchmarks"]["cv-bench"]["sources"]["COCO"]  # breakdowns keep their keys
    assert flatten_scores(s)["cv-bench.avg_at_k_se"] == pytest.approx(17.004, abs=1e-3)


def test_tracking_names_carry_k_and_every_score_is_a_fraction():
    """docs/metrics.md: `<benchmark>/pass_at_<k>` as a fraction, `_stderr` for the standard error, counts apart."""
    vilp = [{"benchmark": "vilp-f", "example_id": f"v{i}", "sample_index": 0, "correct": i % 2 == 0,
             "meta": {"position": i % 3 + 1}} for i in range(6)]
    scores = compute_scores(cv_rows() + rows("mmmu", {"q1": [1, 0], "q2": [0, 0]}) + vilp, "rules")
    metrics, counts = tracking_metrics(scores)
    assert metrics["mmmu/pass_at_2"] == pytest.approx(0.5) and metrics["mmmu/avg_at_2"] == pytest.approx(0.25)
    assert metrics["cv-bench/official/pass_at_2"] == pytest.approx(0.625)
    assert metrics["cv-bench/sources/COCO/avg_at_2"] == pytest.approx(1.0)
    assert metrics["cv-bench/avg_at_2_stderr"] == pytest.approx(flatten_scores(scores)["cv-bench.avg_at_k_se"] / 100)
    assert metrics["mean/pass_at_2"] == pytest.approx((0.5 + 400 / 700) / 2)
    assert "vilp-f/score" in metrics and "vilp-f/by_position/1/accuracy" in metrics
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert counts["mmmu/n_examples"] == 2 and counts["cv-bench/sources/COCO/n_examples"] == 1
    assert not [k for k in (*metrics, *counts) if "_at_k" in k or k.endswith("/k")]
