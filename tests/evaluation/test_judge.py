"""LLM judge against a local OpenAI-compatible server: retries, validation, cache, failure policy, scoring."""

from __future__ import annotations

import json
import logging
import random
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from vigos.config import EvalConfig
from vigos.errors import VigosError
from vigos.evaluation.judge import Judge, JudgeReplyError, parse_verdicts
from vigos.evaluation.score import score_responses

KEY = "sk-test-secret-123"


class FakeJudgeServer:
    """Test double for a paid judge API: an OpenAI-compatible `POST /v1/chat/completions` on 127.0.0.1.

    stdlib `http.server` in a thread. Each request first pops the next scripted reply from `script` (an HTTP status,
    or reply text served with 200); once the script is empty, `respond(answers, user_text)` makes the reply text,
    by default "every answer correct". Every request body and Authorization header is recorded.
    """

    def __init__(self) -> None:
        self.script: list[int | str] = []
        self.respond: Callable[[list[str], str], str] = lambda answers, _t: json.dumps(
            {"verdicts": [True] * len(answers)}
        )
        self.requests: list[dict] = []
        self.auth: list[str] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer._lock:
                    outer.requests.append(body)
                    outer.auth.append(self.headers.get("Authorization", ""))
                    action = outer.script.pop(0) if outer.script else None
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "not found"}})
                if isinstance(action, int):
                    return self._send(action, {"error": {"message": f"scripted {action}", "type": "server_error"}})
                user = body["messages"][-1]["content"]
                answers = re.findall(r"^\d+\. (.*)$", user.split("Answers to grade", 1)[1], re.M)
                text = action if isinstance(action, str) else outer.respond(answers, user)
                self._send(200, {
                    "id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                })

            def _send(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeJudgeServer()
    yield s
    s.close()


@pytest.fixture
def cfg(server, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", KEY)
    return EvalConfig(
        grader="judge", judge_base_url=server.url, judge_model="judge-m", judge_api_key_env="TEST_JUDGE_KEY",
        judge_max_retries=3,
    )


class TopOfJitter(random.Random):
    """The back-off's random factor pinned to the top of its range [0.5, 1]: the exponential steps show exactly."""

    def uniform(self, a, b):
        return b


def make_judge(cfg, tmp_path, sleeps=None):
    return Judge(cfg, tmp_path / "cache", sleep=(sleeps.append if sleeps is not None else lambda _s: None),
                 rng=TopOfJitter())


def cache_files(tmp_path):
    return sorted((tmp_path / "cache").rglob("*.json")) if (tmp_path / "cache").exists() else []


def test_one_call_per_question_and_the_key_is_sent(server, cfg, tmp_path):
    server.respond = lambda answers, _t: json.dumps({"verdicts": [a == "B" for a in answers]})
    judge = make_judge(cfg, tmp_path)
    assert judge.verdicts("Which?", ["A", "B", "C"], "(B)") == [False, True, False]
    assert len(server.requests) == 1 and server.auth == [f"Bearer {KEY}"]
    assert server.requests[0]["model"] == "judge-m"
    assert server.requests[0]["max_tokens"] == 64 + 8 * 3  # a bounded reply: a few tokens per verdict
    user = server.requests[0]["messages"][-1]["content"]
    assert "Which?" in user and "(B)" in user and "3. C" in user


def test_retries_after_server_errors_with_exponential_backoff(server, cfg, tmp_path):
    server.script = [500, 503, 429]
    sleeps: list[float] = []
    judge = make_judge(cfg, tmp_path, sleeps)
    assert judge.verdicts("q", ["x"], "x") == [True]
    assert len(server.requests) == 4 and sleeps == [1.0, 2.0, 4.0]


@pytest.mark.parametrize(
    "bad_reply",
    ["the first is right", '{"verdicts": [true, tru', '{"verdicts": [true]}', '{"verdicts": ["maybe", true]}', ""],
    ids=["prose", "malformed-json", "wrong-count", "bad-value", "empty"],
)
def test_unusable_replies_are_retried(server, cfg, tmp_path, bad_reply):
    server.script = [bad_reply]
    sleeps: list[float] = []
    assert make_judge(cfg, tmp_path, sleeps).verdicts("q", ["x", "y"], "x") == [True, True]
    assert len(server.requests) == 2 and sleeps == [1.0]


def test_cache_hit_makes_no_http_call(server, cfg, tmp_path):
    assert make_judge(cfg, tmp_path).verdicts("q", ["4", "5"], "4") == [True, True]
    assert len(server.requests) == 1 and len(cache_files(tmp_path)) == 1
    second = make_judge(cfg, tmp_path)  # a fresh run over the same cache
    assert second.verdicts("q", ["4", "5"], "4") == [True, True]
    assert len(server.requests) == 1 and second.http_calls == 0 and second.cache_hits == 1
    # The key covers the question, the answers, the reference and the judge model.
    make_judge(cfg, tmp_path).verdicts("q", ["4", "6"], "4")
    make_judge(cfg, tmp_path).verdicts("q", ["4", "5"], "5")
    cfg.judge_model = "other-judge"
    make_judge(cfg, tmp_path).verdicts("q", ["4", "5"], "4")
    assert len(server.requests) == 4


def test_failures_are_not_cached_and_not_incorrect(server, cfg, tmp_path, caplog):
    cfg.judge_max_retries = 2
    server.script = [500, "not json", 502]
    sleeps: list[float] = []
    judge = make_judge(cfg, tmp_path, sleeps)
    with caplog.at_level(logging.WARNING):
        assert judge.verdicts("q", ["x"], "x") is None  # ungraded, not "incorrect"
    assert len(server.requests) == 3 and sleeps == [1.0, 2.0] and judge.failures == 1
    assert cache_files(tmp_path) == []
    assert KEY not in caplog.text and "judge attempt 3/3 failed" in caplog.text
    # The next run asks again (nothing cached) and gets a real verdict.
    assert make_judge(cfg, tmp_path).verdicts("q", ["x"], "x") == [True]
    assert len(server.requests) == 4


def test_none_answers_are_incorrect_without_asking(server, cfg, tmp_path):
    judge = make_judge(cfg, tmp_path)
    assert judge.verdicts("q", [None, None], "x") == [False, False]
    assert server.requests == []
    assert judge.verdicts("q", [None, "x", None, "y"], "x") == [False, True, False, True]
    user = server.requests[0]["messages"][-1]["content"]
    assert "Answers to grade (2)" in user and "1. x" in user and "2. y" in user


def test_rejected_key_is_a_user_error_at_once(server, cfg, tmp_path):
    server.script = [401]
    sleeps: list[float] = []
    with pytest.raises(VigosError, match="AuthenticationError, HTTP 401") as err:
        make_judge(cfg, tmp_path, sleeps).verdicts("q", ["x"], "x")
    assert KEY not in str(err.value) and sleeps == [] and cache_files(tmp_path) == []


def test_missing_key_or_endpoint(cfg, monkeypatch, tmp_path):
    monkeypatch.delenv("TEST_JUDGE_KEY")
    with pytest.raises(VigosError, match=r"\$TEST_JUDGE_KEY, which is unset"):
        Judge(cfg, tmp_path)
    with pytest.raises(VigosError, match="needs eval.judge_base_url and eval.judge_model"):
        Judge(EvalConfig(grader="judge"), tmp_path)


def test_parse_verdicts():
    assert parse_verdicts('```json\n{"verdicts": [true, false]}\n```', 2) == [True, False]
    assert parse_verdicts('Sure. {"verdicts": [1, 0.5]} Done.', 2) == [1.0, 0.5]
    for bad in ['{"verdict": [true]}', '{"verdicts": [2]}', '{"verdicts": [null]}', '{"verdicts": [-0.5]}']:
        with pytest.raises(JudgeReplyError):
            parse_verdicts(bad, 1)


@pytest.mark.parametrize(
    "reply",
    [
        "{'verdicts': [True, False]}",  # Python literals
        '{"verdicts": [True, False]}',
        "{'verdicts': [true, false]}",  # half Python, half JSON
        '{"verdicts": [true, false,]}',  # trailing commas
        '{"verdicts": [true, false,],}',
        'Here you go:\n```json\n{"verdicts": [true, false]}\n```\nHope this helps.',  # a fence inside prose
        "```\n{'verdicts': [True, False,]}\n```",
        'The first is right, the second is not. {"verdicts": [true, false]} That is all.',  # prose around it
        "[true, false]",  # a bare list
        "Verdicts: [True, False,]",
        '{"verdicts": ["yes", "no"]}',  # words as verdicts
        '{"verdicts": ["Correct", "incorrect"]}',
        "{'verdicts': ['YES ', 'No']}",
        '["true", "false"]',
        '{"verdicts": [true, false], "reason": "the second is "wrong""',  # a broken object: its list is clear
        "{verdicts: [true, false]}",
    ],
)
def test_parse_verdicts_repairs_near_json(reply):
    assert parse_verdicts(reply, 2) == [True, False]


@pytest.mark.parametrize(
    "reply",
    [
        "[true]",  # wrong count
        "[true, false, true]",
        "{'verdicts': [True]}",
        '{"verdicts": ["maybe", "no"]}',  # not a verdict word
        '{"verdicts": ["partially correct", true]}',
        '{"verdicts": [None, True]}',
        '{"verdicts": [null, true]}',
        '{"verdicts": [2, 1]}',  # a score out of [0, 1]
        '{"verdicts": [{"a": 1}, true]}',
        '{"verdicts": "yes, no"}',  # not a list
        '{"grades": [true, false]}',  # not "verdicts"
        "{'verdicts': [__import__('os'), True]}",  # literals only, never evaluated code
        "yes, no",  # no list at all
        "Answer [1] is right: {verdicts: [true, false]}",  # neither the object nor the list is readable
    ],
)
def test_parse_verdicts_still_rejects(reply):
    with pytest.raises(JudgeReplyError):
        parse_verdicts(reply, 2)


def _write_responses(path, rows):
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "mmmu.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def _row(qid, s, response, reference="B"):
    return {"benchmark": "mmmu", "example_id": qid, "sample_index": s, "response": response, "reference": reference,
            "answer_type": "multiple_choice", "question": f"question {qid}"}


def test_scoring_with_rules_plus_judge(server, cfg, tmp_path):
    # q1: B right by rules, "the cat" wrong by rules (options unknown) -> asked; no box -> never asked.
    # q2: all right by rules -> no call. q3: the judge fails -> rule grades kept, reported as ungraded.
    _write_responses(tmp_path / "responses", [
        _row("q1", 0, "\\boxed{B}"), _row("q1", 1, "\\boxed{the cat}"), _row("q1", 2, "no box"),
        _row("q2", 0, "\\boxed{B}"), _row("q2", 1, "\\boxed{(B)}"), _row("q2", 2, "\\boxed{B.}"),
        _row("q3", 0, "\\boxed{A}"), _row("q3", 1, "\\boxed{C}"), _row("q3", 2, "\\boxed{D}"),
    ])

    def respond(answers, user):
        if "question q3" in user:
            return "no verdicts today"
        return json.dumps({"verdicts": [a == "the cat" for a in answers]})

    server.respond = respond
    cfg.grader, cfg.judge_max_retries = "rules+judge", 1
    scores = score_responses(
        tmp_path / "responses", cfg, tmp_path / "grades", tmp_path / "scores.json", judge=make_judge(cfg, tmp_path)
    )
    asked = sorted(r["messages"][-1]["content"].split("\n")[1] for r in server.requests)
    assert asked == ["question q1", "question q3", "question q3"]  # q3 retried once, q2 never asked
    graded = [json.loads(line) for line in (tmp_path / "grades" / "mmmu.jsonl").read_text().splitlines()]
    by = {(g["example_id"], g["sample_index"]): g for g in graded}
    assert by[("q1", 1)]["correct"] is True and by[("q1", 1)]["grader"] == "judge"
    assert by[("q1", 1)]["rules_correct"] is False
    assert by[("q1", 2)]["extracted"] is None and by[("q1", 2)]["correct"] is False
    assert by[("q3", 0)]["judge_failed"] is True and by[("q3", 0)]["grader"] == "rules"
    s = scores["benchmarks"]["mmmu"]
    assert s["grader"] == "rules+judge (incomplete)" and s["ungraded_by_judge"] == 1
    assert s["pass_at_k"] == pytest.approx(200 / 3) and s["avg_at_k"] == pytest.approx(100 * 5 / 9)
    assert scores["judge"] == {"model": "judge-m", "http_calls": 3, "cache_hits": 0, "failed_questions": 1,
                               "breaker_open": False}
    assert scores["incomplete"].startswith("1 question(s) not graded by the judge (mmmu 1)")
    assert json.loads((tmp_path / "scores.json").read_text()) == scores
    # Re-scoring hits the cache for q1 and asks again only about q3 (its failure was not cached).
    n = len(server.requests)
    again = score_responses(tmp_path / "responses", cfg, None, None, judge=make_judge(cfg, tmp_path))
    assert again["judge"]["cache_hits"] == 1 and len(server.requests) == n + 2


def _mixed_responses(root):
    _write_responses(root, [
        {"benchmark": "mm-vet", "example_id": "v1", "sample_index": 0, "response": "\\boxed{a red umbrella}",
         "reference": "umbrella", "answer_type": "free_form", "question": "question v1"},
        _row("q1", 0, "\\boxed{the cat}"),
    ])


def test_auto_grades_mm_vet_by_the_judge_where_one_is_configured(server, cfg, tmp_path):
    """MM-Vet's default grader is the judge: `auto` asks it about MM-Vet only; the other benchmarks keep rules."""
    _mixed_responses(tmp_path / "responses")
    cfg.grader = "auto"
    scores = score_responses(tmp_path / "responses", cfg, tmp_path / "grades", judge=make_judge(cfg, tmp_path))
    asked = [r["messages"][-1]["content"].split("\n")[1] for r in server.requests]
    assert asked == ["question v1"]
    assert scores["benchmarks"]["mm-vet"]["grader"] == "judge" and scores["benchmarks"]["mm-vet"]["pass_at_k"] == 100
    assert scores["benchmarks"]["mmmu"]["grader"] == "rules" and scores["benchmarks"]["mmmu"]["pass_at_k"] == 0
    assert scores["grader"] == "auto"


def test_auto_without_a_judge_marks_mm_vet_approximate(tmp_path):
    _mixed_responses(tmp_path / "responses")
    scores = score_responses(tmp_path / "responses", EvalConfig(), tmp_path / "grades")  # auto, no judge configured
    assert scores["benchmarks"]["mm-vet"]["grader"] == "rules (approximate)"
    assert scores["benchmarks"]["mmmu"]["grader"] == "rules"
    assert "ungraded_by_judge" not in scores["benchmarks"]["mm-vet"]
    forced = score_responses(tmp_path / "responses", EvalConfig(grader="rules"))
    assert forced["benchmarks"]["mm-vet"]["grader"] == "rules (approximate)"
    graded = [json.loads(line) for line in (tmp_path / "grades" / "mm-vet.jsonl").read_text().splitlines()]
    assert graded[0]["rule"] == "free_form.no_match" and graded[0]["correct"] is False
