"""Judge and champion-gate faults (issue 14), injected deterministically.

The judge: `MisbehavingJudge`, a local OpenAI-compatible test double (503 with Retry-After, 429, a 200 cut in half, a
reply held past the client's timeout) and a port where nothing listens (down). Back-off waits are injected, never
slept. The gate: the real `mlflow server` of the `mlflow_server` fixture, with a hook holding one registration
between its champion read and its write, real racing threads, and one injected database-conflict reply.
The fault helpers live in benchmarks/fault_cases/judge_and_gate.py, shared with the benchmark table.
"""

from __future__ import annotations

import json
import random
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from fault_cases.judge_and_gate import (  # noqa: E402
    MisbehavingJudge,
    champion_of,
    conflict_once,
    down_url,
    interleaved,
    judge_config,
    race,
    register,
    scores,
    write_responses,
)

from vigos.evaluation.judge import Judge  # noqa: E402
from vigos.evaluation.score import score_responses  # noqa: E402


@pytest.fixture
def judge_server():
    servers: list[MisbehavingJudge] = []

    def start(script=None) -> MisbehavingJudge:
        servers.append(MisbehavingJudge(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def make_judge(cfg, tmp_path, sleeps, rng=None):
    return Judge(cfg, tmp_path / "cache", sleep=sleeps.append, rng=rng)


# -- the judge ------------------------------------------------------------------------------------------------------
def test_retry_after_is_honoured(judge_server, tmp_path):
    server = judge_server([(503, {"Retry-After": "7"}), (429, {"retry-after-ms": "1500"})])
    sleeps: list[float] = []
    judge = make_judge(judge_config(server.url, judge_max_retries=3), tmp_path, sleeps)
    assert judge.verdicts("q", ["x"], "x") == [True]
    assert server.requests == 3 and sleeps == [7.0, 1.5]  # the server's waits, not 1 and 2


def test_backoff_without_retry_after_is_jittered(judge_server, tmp_path):
    sleeps: list[float] = []
    server = judge_server([500, 502, 500])
    assert make_judge(judge_config(server.url, judge_max_retries=3), tmp_path, sleeps, random.Random(7)).verdicts(
        "q", ["x"], "x") == [True]
    rng = random.Random(7)
    assert sleeps == [step * rng.uniform(0.5, 1.0) for step in (1.0, 2.0, 4.0)]
    other: list[float] = []
    server.script = [500, 502, 500]
    make_judge(judge_config(server.url, judge_max_retries=3), tmp_path / "b", other, random.Random(8)).verdicts(
        "q", ["x"], "x")
    assert other != sleeps  # two scorers (or threads) do not retry in lock-step


def test_a_200_whose_json_body_is_cut_in_half_is_retried(judge_server, tmp_path):
    server = judge_server(["truncated"])
    sleeps: list[float] = []
    assert make_judge(judge_config(server.url), tmp_path, sleeps).verdicts("q", ["x", "y"], "x") == [True, True]
    assert server.requests == 2 and len(sleeps) == 1


def test_a_reply_slower_than_the_timeout_is_retried(judge_server, tmp_path):
    server = judge_server(["slow"])  # held until the server closes: only the client's timeout ends the wait
    sleeps: list[float] = []
    started = time.monotonic()
    got = make_judge(judge_config(server.url, judge_timeout_s=0.3), tmp_path, sleeps).verdicts("q", ["x"], "x")
    assert got == [True] and server.requests == 2 and len(sleeps) == 1
    assert time.monotonic() - started < 20  # eval.judge_timeout_s, not the old fixed 120 s


def test_breaker_opens_after_n_consecutive_failed_questions(judge_server, tmp_path):
    server = judge_server([503] * 100)
    sleeps: list[float] = []
    judge = make_judge(judge_config(server.url, judge_max_retries=2, judge_max_consecutive_failures=3), tmp_path,
                       sleeps)
    got = [judge.verdicts(f"q{i}", ["x"], "x") for i in range(10)]
    assert got == [None] * 10 and judge.failures == 10 and judge.breaker_open
    assert server.requests == 3 * 3  # three questions of 1 call + 2 retries; then no call at all
    assert len(sleeps) == 3 * 2


def test_a_success_closes_the_count_of_consecutive_failures(judge_server, tmp_path):
    # max_retries 1: a failed question costs 2 requests. fail, ok, fail, ok, fail: never 2 failures in a row
    server = judge_server([503, 503, "[true]", 503, 503, "[true]", 503, 503])
    judge = make_judge(judge_config(server.url, judge_max_retries=1, judge_max_consecutive_failures=2), tmp_path, [])
    got = [judge.verdicts(f"q{i}", ["x"], "x") for i in range(5)]
    assert got == [None, [True], None, [True], None] and not judge.breaker_open and judge.failures == 3


def test_the_default_backoff_wakes_when_the_breaker_opens(tmp_path):
    judge = Judge(judge_config(down_url(), judge_max_retries=0, judge_max_consecutive_failures=1), tmp_path)
    assert judge.verdicts("q", ["x"], "x") is None and judge.breaker_open
    started = time.monotonic()
    judge._sleep(60)  # what a thread backing off calls: it must not sit out its wait for a judge known to be down
    assert time.monotonic() - started < 5


def test_breaker_bounds_the_calls_to_a_judge_down_for_the_whole_scoring(tmp_path):
    cfg = judge_config(down_url(), judge_max_retries=3, judge_max_consecutive_failures=4)
    judge = make_judge(cfg, tmp_path, [])
    got = score_responses(write_responses(tmp_path / "responses", 60), cfg, judge=judge)
    assert judge.breaker_open and got["judge"]["failed_questions"] == 60 and got["judge"]["breaker_open"] is True
    # without the breaker: 60 x 4 calls (each question its full back-off); with it, at most the questions already
    # under way in the scoring's 8 threads when it opened
    assert judge.http_calls <= (4 + 8) * 4
    assert "circuit breaker open" in got["incomplete"]


def _vigos(*args: str) -> int:
    from vigos.cli import main

    try:
        main(list(args))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_judge_down_is_a_failure_marked_incomplete_then_a_rerun_recovers(judge_server, tmp_path, capsys,
                                                                         monkeypatch):
    monkeypatch.setenv("FAULT_JUDGE_KEY", "any-value")
    responses = write_responses(tmp_path / "run" / "responses", 3)
    common = ["eval", "score", str(responses), "--grader", "judge", "--set", "eval.judge_model=judge-m",
              "--set", "eval.judge_api_key_env=FAULT_JUDGE_KEY", "--set", "eval.judge_max_retries=0"]
    code = _vigos(*common, "--set", f"eval.judge_base_url={down_url()}")
    err = capsys.readouterr().err
    assert code != 0 and "scores.json is marked incomplete: 3 question(s) not graded by the judge" in err
    scores_json = json.loads((tmp_path / "run" / "scores.json").read_text())
    mmmu = scores_json["benchmarks"]["mmmu"]
    assert scores_json["incomplete"] and mmmu["grader"] == "judge (incomplete)" and mmmu["ungraded_by_judge"] == 3
    assert mmmu["pass_at_k"] == 0.0  # the rule grades, which the label no longer calls the judge's
    grades = [json.loads(x) for x in (tmp_path / "run" / "grades" / "mmmu.jsonl").read_text().splitlines()]
    assert all(g["grader"] == "rules" and g["judge_failed"] for g in grades)

    server = judge_server()  # the judge is back: the same command again
    assert _vigos(*common, "--set", f"eval.judge_base_url={server.url}") == 0
    scores_json = json.loads((tmp_path / "run" / "scores.json").read_text())
    assert "incomplete" not in scores_json and scores_json["benchmarks"]["mmmu"]["grader"] == "judge"
    assert scores_json["benchmarks"]["mmmu"]["pass_at_k"] == 100.0 and server.requests == 3


# -- the champion gate ------------------------------------------------------------------------------------------------
@pytest.fixture
def name(tracking_env):
    return f"fault-{uuid.uuid4().hex[:8]}"


def test_gate_refuses_incomplete_scores_until_they_are_complete(name):
    from mlflow import MlflowClient

    from vigos.publish.registry import TAG_INCOMPLETE

    register(name, "r1", 50.0)
    partial = register(name, "r2", 75.0, scores=scores(75.0, incomplete="2 question(s) not graded by the judge"))
    assert not partial.champion_moved and champion_of(name) == 1
    assert partial.decision.startswith("scores incomplete (2 question(s) not graded by the judge)")
    assert "refuses" in partial.decision
    client = MlflowClient()
    assert client.get_model_version(name, "2").tags["gate.decision"] == partial.decision
    assert TAG_INCOMPLETE in client.get_model_version(name, "2").tags
    # scores from before the `incomplete` mark: the judge record's failures say it
    legacy = {**scores(80.0), "judge": {"model": "m", "failed_questions": 1}}
    assert not register(name, "r3", 80.0, scores=legacy).champion_moved
    # recovery: the run re-scored with the judge up and its register step re-run
    full = register(name, "r2", 75.0)
    assert full.reused and full.champion_moved and champion_of(name) == 2
    assert TAG_INCOMPLETE not in client.get_model_version(name, "2").tags


def test_two_registrations_reading_the_champion_before_either_writes(name):
    results = interleaved(name, champion_value=50.0, slow_value=55.0, fast_value=70.0)
    assert champion_of(name) == results["fast"].version  # not the slow racer's stale "55 > 50"
    assert results["fast"].champion_moved and not results["slow"].champion_moved
    assert results["slow"].decision == f"mean.pass_at_k 55 <= champion v{results['fast'].version}'s 70: candidate only"


def test_racing_registrations_in_real_threads_converge_on_the_best(name):
    from mlflow import MlflowClient

    values = [50.0, 55.0, 70.0, 62.0, 68.0]
    got = race(name, values, repeats=2)  # every run also races a retried attempt of itself
    assert not [r for r in got if isinstance(r, Exception)], got
    versions = MlflowClient().search_model_versions(f"name = '{name}'")
    assert sorted(v.tags["kfp.run_id"] for v in versions) == [f"r{i}" for i in range(len(values))]
    best = next(v for v in versions if v.tags["kfp.run_id"] == "r2")
    assert champion_of(name) == int(best.version)


@pytest.mark.parametrize("method", ["set_model_version_tag", "set_registered_model_alias"])
def test_a_write_that_lost_a_database_race_is_retried(name, method):
    with conflict_once(method) as hit:
        r = register(name, "r1", 50.0)
    assert hit == [method] and r.champion_moved and champion_of(name) == 1


def test_an_excluded_version_is_never_champion(name):
    from mlflow import MlflowClient

    from vigos.publish.registry import TAG_GATE_EXCLUDED

    register(name, "r1", 50.0)
    register(name, "r2", 70.0)
    MlflowClient().set_model_version_tag(name, "2", TAG_GATE_EXCLUDED, "broken tokenizer")  # the rollback
    r = register(name, "r3", 60.0)
    assert r.champion_moved and champion_of(name) == 3
    assert r.decision == "champion v2 is excluded from the gate by its gate.excluded tag (broken tokenizer): replaced"
