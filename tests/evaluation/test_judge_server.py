"""The LLM judge end to end against a REAL OpenAI-compatible server: `transformers serve` on 127.0.0.1, serving the
tiny random Qwen2.5-VL (the `tiny_model_dir` fixture). No mock: the openai client, HTTP, the server's request
validation and its generation all run for real. The tiny model's replies are real but meaningless text, so every
judge call here ends in an unreadable reply: these tests check that such a reply is a judge FAILURE (retried, not
cached, the question left ungraded with its rule grade kept), never an "incorrect" verdict. The parsing of readable
replies is tested against an HTTP double in test_judge.py.

One server per module (~10-20 s to start on a busy CPU); the judge sends a small `max_tokens`, so each call is short.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import urllib.request
from pathlib import Path

import pytest

from vigos.config import EvalConfig
from vigos.evaluation.judge import Judge
from vigos.evaluation.score import score_responses

_START_TIMEOUT_S = 180  # measured ~7 s on 2 idle cores; generous for busy shared CI machines
_TRANSFORMERS_CLI = Path(sys.executable).with_name("transformers")

pytestmark = pytest.mark.skipif(
    not _TRANSFORMERS_CLI.exists() or not all(importlib.util.find_spec(m) for m in ("fastapi", "uvicorn", "openai")),
    reason="`transformers serve` cannot run here: it needs the `transformers` CLI beside the Python interpreter "
    "and fastapi + uvicorn + openai (pip install 'transformers[serving]')",
)


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def served_judge(tiny_model_dir, tmp_path_factory, serve):
    """`transformers serve` pinned to the tiny model on a free 127.0.0.1 port; yields (base URL, the
    model ids /v1/models lists, the server log).

    The server answers only for the model it was started with, under the name it was given (here the folder path,
    as /v1/models lists it): any other `model` in a request is a 400. Always stopped, whatever happens."""
    log_path = tmp_path_factory.mktemp("judge-server") / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = lambda port: [str(_TRANSFORMERS_CLI), "serve", str(tiny_model_dir), "--host", "127.0.0.1",  # noqa: E731
                            "--port", str(port), "--device", "cpu", "--log-level", "info"]
    with serve(command, log_path, timeout_s=_START_TIMEOUT_S, env=env) as base:
        models = [m["id"] for m in _get_json(f"{base}/v1/models")["data"]]
        yield f"{base}/v1", models, log_path


@pytest.fixture
def cfg(served_judge, tiny_model_dir, monkeypatch):
    url, models, _ = served_judge
    assert models == [str(tiny_model_dir)]  # a pinned server lists its one model, named by the path it was given
    monkeypatch.setenv("TEST_JUDGE_KEY", "any-value")  # the server has no auth; the client still needs a key
    return EvalConfig(grader="judge", judge_base_url=url, judge_model=models[0], judge_api_key_env="TEST_JUDGE_KEY",
                      judge_max_retries=2)


def _cache_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def test_unreadable_reply_from_a_real_server_is_a_failure(cfg, served_judge, tmp_path, caplog):
    sleeps: list[float] = []
    judge = Judge(cfg, tmp_path / "cache", sleep=sleeps.append)  # built the normal way: a real openai client
    with caplog.at_level(logging.WARNING, logger="vigos.evaluation.judge"):
        got = judge.verdicts("What colour is the square?", ["red", "blue"], "red")
    assert got is None  # ungraded, not "incorrect"
    assert judge.http_calls == 3 and judge.failures == 1 and judge.cache_hits == 0  # 1 call + judge_max_retries
    assert len(sleeps) == 2 and 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0  # jittered exponential back-off
    assert _cache_files(tmp_path / "cache") == []  # failures are never cached
    # Every attempt was a 200 whose text did not parse (JudgeReplyError), not an HTTP error: the round trip worked.
    attempts = [r.getMessage() for r in caplog.records if "judge attempt" in r.getMessage()]
    assert len(attempts) == 3 and all("JudgeReplyError" in a for a in attempts), attempts
    log = served_judge[2].read_text(errors="replace")
    assert log.count('"POST /v1/chat/completions HTTP/1.1" 200') >= 3


def _row(qid: str, s: int, response: str, reference: str = "B") -> dict:
    return {"benchmark": "mmmu", "example_id": qid, "sample_index": s, "response": response, "reference": reference,
            "answer_type": "multiple_choice", "question": f"Which option? ({qid})"}


@pytest.mark.parametrize("grader", ["rules+judge", "judge"])
def test_scoring_keeps_rule_grades_when_the_real_judge_fails(cfg, tmp_path, grader):
    # q1: B right by rules, C wrong by rules; q2: A wrong by rules. `judge` asks about every extracted answer,
    # `rules+judge` only about the ones the rules call wrong: either way both questions are asked, and both fail.
    (tmp_path / "responses").mkdir()
    rows = [_row("q1", 0, "\\boxed{B}"), _row("q1", 1, "\\boxed{C}"), _row("q2", 0, "\\boxed{A}")]
    (tmp_path / "responses" / "mmmu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg.grader, cfg.judge_max_retries = grader, 1
    judge = Judge(cfg, tmp_path / "cache", sleep=lambda _s: None)
    scores = score_responses(tmp_path / "responses", cfg, tmp_path / "grades", tmp_path / "scores.json", judge=judge)

    graded = [json.loads(line) for line in (tmp_path / "grades" / "mmmu.jsonl").read_text().splitlines()]
    by = {(g["example_id"], g["sample_index"]): g for g in graded}
    assert [by[k]["correct"] for k in [("q1", 0), ("q1", 1), ("q2", 0)]] == [True, False, False]  # the rule grades
    assert all(g["grader"] == "rules" and g["correct"] == g["rules_correct"] for g in graded)
    assert by[("q1", 1)]["judge_failed"] is True and by[("q2", 0)]["judge_failed"] is True
    assert by[("q1", 0)].get("judge_failed") is (True if grader == "judge" else None)  # asked only by `judge`
    s = scores["benchmarks"]["mmmu"]
    assert s["grader"] == f"{grader} (incomplete)" and s["ungraded_by_judge"] == 2  # not the judge's numbers
    assert s["pass_at_k"] == pytest.approx(50.0)  # q1 right (by rules), q2 wrong
    assert scores["judge"] == {"model": cfg.judge_model, "http_calls": 4, "cache_hits": 0, "failed_questions": 2,
                               "breaker_open": False}
    assert "2 question(s) not graded by the judge" in scores["incomplete"]
    assert json.loads((tmp_path / "scores.json").read_text()) == scores
    assert _cache_files(tmp_path / "cache") == []
