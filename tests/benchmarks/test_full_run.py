"""The arithmetic of the full-run projection (benchmarks/projection.py, benchmarks/full_run.py): order statistics of
capped log-normal lengths, the bandwidth limit, scaling between cards, reading measured JSONs. No timings."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import full_run  # noqa: E402
import projection as P  # noqa: E402

from vigos.config import load_config  # noqa: E402


def test_expected_max_of_one_is_the_capped_mean():
    # the integral of 1 - F against the closed form E[X; X < c] + c P(X >= c), with a cap that bites
    d = P.LengthDist(median=450, sigma=1.2, cap=2048)
    assert d.capped_fraction() > 0.05
    assert d.expected_max(1) == pytest.approx(d.mean(), rel=1e-4)


@pytest.mark.parametrize("n", [4, 8, 32])
def test_expected_max_matches_a_seeded_monte_carlo(n):
    d = P.LengthDist(median=450, sigma=0.7, cap=4096)
    rng = np.random.default_rng(0)
    draws = np.minimum(rng.lognormal(math.log(450), 0.7, size=(40_000, n)), 4096).max(axis=1)
    assert d.expected_max(n) == pytest.approx(draws.mean(), rel=0.01)


def test_expected_max_grows_with_n_and_stops_at_the_cap():
    d = P.LengthDist(median=450, sigma=0.7, cap=4096)
    values = [d.expected_max(n) for n in (1, 2, 8, 32, 256)]
    assert values == sorted(values) and values[-1] < 4096
    assert P.LengthDist(median=450, sigma=0.7, cap=100).expected_max(32) == pytest.approx(100, rel=1e-3)
    assert d.quantile(0.5) == pytest.approx(450) and d.quantile(0.95) == pytest.approx(450 * math.exp(0.7 * 1.6449),
                                                                                       rel=1e-4)


def test_bandwidth_limit_of_the_7b():
    # the figures: 15.2 GB of bf16 weights, 3.2 ms on an H200, ~15% at 21 ms per step, 7.5 ms on an A100
    weights = P.weight_bytes(7_615_616_512)
    assert weights / 1e9 == pytest.approx(15.23, abs=0.01)
    assert P.bandwidth_limit_ms(weights, P.CARDS["H200"].bandwidth) == pytest.approx(3.17, abs=0.01)
    assert P.bandwidth_ratio(weights, 21.32, P.CARDS["H200"].bandwidth) == pytest.approx(0.149, abs=0.001)
    assert P.bandwidth_limit_ms(weights, P.CARDS["A100"].bandwidth) == pytest.approx(7.47, abs=0.01)


def test_mfu_and_card_lookup():
    assert P.card_for("NVIDIA H200") is P.CARDS["H200"]
    assert P.card_for("NVIDIA A100-SXM4-80GB") is P.CARDS["A100"]
    assert P.card_for("cpu") is None
    assert P.mfu(7_615_616_512, 3620.99, 989e12) == pytest.approx(0.1673, abs=1e-4)  # train_step_h200.json's


def _phases(card=P.CARDS["H200"]) -> P.Phases:
    return P.Phases(card, 7_000_000_000, decode_ms={4: 10.0, 16: 16.0}, prefill_ms_per_token={4: 0.1, 16: 0.05},
                    teacher_tps=20_000.0, student_tps=5_000.0, optimizer_s=0.02)


def test_scaling_between_cards():
    ph = _phases()
    a100 = ph.scaled_to(P.CARDS["A100"])
    assert a100.decode_ms[4] == pytest.approx(10.0 * 4.8 / 2.039)  # bandwidth
    assert a100.prefill_ms_per_token[16] == pytest.approx(0.05 * 989 / 312)  # FLOP/s
    assert a100.student_tps == pytest.approx(5_000 * 312 / 989)
    assert a100.optimizer_s == pytest.approx(0.02 * 989 / 312)
    back = a100.scaled_to(P.CARDS["H200"])
    assert back.decode_ms[16] == pytest.approx(16.0) and back.teacher_tps == pytest.approx(20_000.0)
    with pytest.raises(ValueError, match="source-card"):
        _phases(card=None).scaled_to(P.CARDS["A100"])


def test_decode_interpolates_between_measured_batches():
    ph = _phases()
    assert ph.decode_at(4) == 10.0 and ph.decode_at(10) == pytest.approx(13.0)
    assert ph.decode_at(1) == 10.0 and ph.decode_at(32) == 16.0  # the nearest measured batch outside the table


def test_training_projection_with_near_constant_lengths():
    # sigma ~0: every completion is the median, so each phase is plain arithmetic (to the ~0.1% that Simpson's
    # rule on a 1-token grid leaves of a step function)
    ph, run = _phases(), P.TrainRun(steps=100, rollouts=32, gpus=8, prompt_tokens=300, valid_fraction=0.5)
    s = P.project_training(ph, run, P.LengthDist(median=500, sigma=1e-6, cap=4096))
    assert s["rollout"] == pytest.approx(100 * (0.1 * 300 * 4 / 1000 + 500 * 10.0 / 1000), rel=3e-3)
    assert s["teachers"] == pytest.approx(100 * 4 * (500 + 1.5 * 300) / 20_000, rel=3e-3)
    assert s["student"] == pytest.approx(100 * 4 * (500 + 300) / 5_000, rel=3e-3)
    assert s["optimizer"] == pytest.approx(100 * 0.02)
    with pytest.raises(ValueError, match="evenly"):
        P.project_training(ph, P.TrainRun(rollouts=30, gpus=8), P.LengthDist())


def test_eval_projection_counts_calls_per_gpu():
    ph = _phases()
    s = P.project_eval(ph, sequences=1000, gpus=8, batch=16, prompt_tokens=200,
                       lengths=P.LengthDist(median=1000, sigma=1e-6, cap=4096))
    calls = math.ceil(125 / 16)  # 125 sequences per GPU
    assert s["generate"] == pytest.approx(calls * (0.05 * 200 * 16 / 1000 + 1000 * 16.0 / 1000), rel=3e-3)


def test_eval_plan_reads_the_registry_and_config():
    cfg = load_config("paper-7b")
    plan = full_run.eval_plan(cfg)
    assert set(plan) == set(cfg.eval.benchmarks)
    assert plan["vilp-f"][1] == 1 and plan["cv-bench"] == (2638, cfg.eval.n_samples)
    questions = sum(q for q, _ in plan.values())
    assert 14_000 < questions < 17_000  # the "about 15,000 questions"
    assert P.eval_sequences(plan) == cfg.eval.n_samples * questions - (cfg.eval.n_samples - 1) * 1800  # ViLP: 1


def _legacy() -> dict:
    step = {"time_rollout": 5.12, "time_teachers": 0.25, "time_student": 0.75, "time_optimizer": 0.03,
            "completion_tokens": 2048}
    return {"device": "NVIDIA H200", "optimizer_steps": {"steps": [{**step, "time_rollout": 60.0}, step]},
            "fwd_bwd": {"tokens": 4096, "lm_params": 7_000_000_000, "ours": {"tokens_per_s": 4000.0, "mfu": 0.17}}}


def test_older_json_gives_one_decode_point_and_a_split_pass():
    ph = P.phases_from_json(_legacy(), steps_batch=8)
    assert ph.card is P.CARDS["H200"]
    assert ph.decode_ms == {8: pytest.approx(1000 * 5.12 / 256)}  # second step; 2048 tokens / 8 rows
    assert ph.prefill_ms_per_token is None and ph.prefill_s(4, 400) == 0.0
    assert ph.teacher_tps == pytest.approx(4000 / 0.25) and ph.student_tps == pytest.approx(4000 / 0.75)
    assert 1 / ph.teacher_tps + 1 / ph.student_tps == pytest.approx(1 / 4000)
    assert ph.optimizer_s == 0.03 and any("ONE batch size" in n for n in ph.notes)
    with pytest.raises(ValueError, match="--steps-batch"):
        P.phases_from_json(_legacy())


def test_phases_json_is_read_as_measured():
    data = {"device": "cpu", "phases": {
        "lm_params": 1000, "decode": [{"batch": 1, "ms_per_step": 5.0, "prefill_ms_per_token": 0.2},
                                      {"batch": 4, "ms_per_step": 6.0, "prefill_ms_per_token": 0.1}],
        "teacher": {"tokens_per_s": 300.0}, "student": {"tokens_per_s": 100.0}, "optimizer": {"seconds": 0.5}}}
    ph = P.phases_from_json(data)
    assert ph.card is None and ph.decode_ms == {1: 5.0, 4: 6.0} and ph.prefill_ms_per_token == {1: 0.2, 4: 0.1}
    assert P.phases_from_json(data, card=P.CARDS["H100"]).card is P.CARDS["H100"]
    data["phases"]["decode"][0]["ms_per_step"] = -3.0
    with pytest.raises(ValueError, match="decode-tokens"):
        P.phases_from_json(data)
