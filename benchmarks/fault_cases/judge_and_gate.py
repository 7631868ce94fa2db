"""Judge and champion-gate faults (issue 14): a misbehaving LLM judge, and registrations racing for `champion`.

The fault helpers here are shared with tests/faults/test_judge_and_gate.py:
- `MisbehavingJudge`: an OpenAI-compatible server on 127.0.0.1 that answers each request by a script (503 with
  Retry-After, 429, a 200 whose JSON body is cut in half, a reply held until the client times out) and `down_url()`:
  a port where nothing listens (connection refused).
- `pause_after_champion_read`: a hook at the registry's champion read (`registry._alias_version`) that holds one
  racer between reading the champion and writing it, so another registration runs to the end in between.
- `conflict_once`: the tracking server's reply to a write that lost a race for the same database row
  (`sqlite3.IntegrityError`, UNIQUE constraint), injected once at the registry's client.
- `mlflow_server` (in `fault_cases`): a real `mlflow server` for the benchmark; the tests use the conftest fixture.

Each benchmark row runs the fault, then the recovery a user would run, and counts what was lost: questions scored
under a wrong label or a wrong champion.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fault_cases import Outcome, mlflow_server

Action = int | tuple[int, dict[str, str]] | str
"""A scripted reply: an HTTP status (with headers), "truncated" (a 200 cut in half), "slow" (held until the
server closes), or reply text served with 200."""


class MisbehavingJudge:
    """Test double for a paid judge API that misbehaves: `POST /v1/chat/completions` on 127.0.0.1 (stdlib
    `http.server` in a thread). Each request pops the next `script` action; once the script is empty it answers
    "every answer correct". Requests are counted in `requests`."""

    def __init__(self, script: list[Action] | None = None) -> None:
        self.script: list[Action] = list(script or [])
        self.requests = 0
        self._lock = threading.Lock()
        self._release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer._lock:
                    outer.requests += 1
                    action = outer.script.pop(0) if outer.script else None
                if action == "slow":  # never answered in time: the client's timeout fires first
                    outer._release.wait(30)
                    return
                if isinstance(action, int | tuple):
                    status, headers = action if isinstance(action, tuple) else (action, {})
                    return self._send(status, json.dumps({"error": {"message": f"scripted {status}"}}).encode(),
                                      headers)
                n = len(re.findall(r"^\d+\. ", body["messages"][-1]["content"].split("Answers to grade", 1)[1],
                                   re.M))
                text = action if isinstance(action, str) and action != "truncated" else json.dumps(
                    {"verdicts": [True] * n})
                data = json.dumps({
                    "id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                }).encode()
                self._send(200, data[: len(data) // 2] if action == "truncated" else data, {})

            def _send(self, status: int, data: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))  # a truncated body says so: no read error
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self) -> None:
        self._release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def down_url() -> str:
    """A judge URL where nothing listens: every call is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def judge_config(url: str, **overrides: Any) -> Any:
    """An `EvalConfig` grading with the judge at `url` (its key is read from $FAULT_JUDGE_KEY, set here)."""
    from vigos.config import EvalConfig

    os.environ.setdefault("FAULT_JUDGE_KEY", "any-value")
    return EvalConfig(**{"grader": "judge", "judge_base_url": url, "judge_model": "judge-m",
                         "judge_api_key_env": "FAULT_JUDGE_KEY", **overrides})


def write_responses(folder: Path, questions: int) -> Path:
    """`questions` MMMU questions of 2 samples: sample 0 wrong by rules ("C" for "B"), sample 1 right only in the
    judge's eyes ("the second one": no rule reads it), so rules give Pass@2 0 and the judge 100."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"benchmark": "mmmu", "example_id": f"q{i}", "sample_index": s, "response": f"\\boxed{{{a}}}",
             "reference": "B", "answer_type": "multiple_choice", "question": f"question {i}"}
            for i in range(questions) for s, a in enumerate(("C", "the second one"))]
    (folder / "mmmu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


# -- the champion gate ------------------------------------------------------------------------------------------
SETTINGS = {"sampling": {"temperature": 1.0, "top_p": 0.9}, "seed": 42, "student_prompt": "release"}


def scores(value: float, incomplete: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "benchmarks": {"mmmu": {"n_examples": 8, "k": 5, "pass_at_k": value, "avg_at_k": value / 2,
                                "grader": "rules"}},
        "mean": {"pass_at_k": value, "avg_at_k": value / 2, "benchmarks": ["mmmu"], "missing": []},
        "vilp": {}, "grader": "rules", "student_prompt": "release",
    }
    if incomplete:
        out["incomplete"] = incomplete
    return out


def register(name: str, kfp_run_id: str, value: float, **kw: Any) -> Any:
    """One registration as the pipeline's register step makes it (source on a made-up bucket)."""
    from vigos.publish.registry import register_model_version

    args: dict[str, Any] = dict(run_id=None, kfp_run_id=kfp_run_id, scores=scores(value), base_model="base",
                                dataset="data", gate_metric="mean.pass_at_k", eval_settings=SETTINGS)
    return register_model_version(name, f"s3://bucket/{kfp_run_id}", **{**args, **kw})


def champion_of(name: str) -> int:
    from mlflow import MlflowClient

    from vigos.publish.registry import CHAMPION
    from vigos.tracking import tracking_uri

    return int(MlflowClient(tracking_uri=tracking_uri()).get_model_version_by_alias(name, CHAMPION).version)


@contextmanager
def pause_after_champion_read(thread_name: str, read: threading.Event, resume: threading.Event) -> Iterator[None]:
    """In the thread named `thread_name`, its first read of the champion sets `read`, then waits for `resume`
    before returning: the worst point of a lost update (the champion read, not yet written)."""
    from vigos.publish import registry

    original = registry._alias_version

    def hooked(client: Any, name: str, alias: str) -> Any:
        got = original(client, name, alias)
        if alias == registry.CHAMPION and threading.current_thread().name == thread_name and not read.is_set():
            read.set()
            resume.wait(60)
        return got

    registry._alias_version = hooked
    try:
        yield
    finally:
        registry._alias_version = original


def interleaved(name: str, champion_value: float, slow_value: float, fast_value: float) -> dict[str, Any]:
    """The lost update of issue 14, deterministically: champion first; then the `slow` registration reads the
    champion and waits, the `fast` one runs from start to end, and only then the slow one goes on."""
    register(name, "champion", champion_value)
    read, done = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def slow() -> None:
        results["slow"] = register(name, "slow", slow_value)

    def fast() -> None:
        read.wait(60)
        try:
            results["fast"] = register(name, "fast", fast_value)
        finally:
            done.set()

    with pause_after_champion_read("slow", read, done):
        threads = [threading.Thread(target=slow, name="slow"), threading.Thread(target=fast, name="fast")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    return results


def race(name: str, values: list[float], repeats: int = 1) -> list[Any]:
    """Registrations of `values` (pipeline runs r0, r1, ...) all at once from real threads, each run `repeats`
    times (a retried pod racing itself); returns every result or exception."""
    start = threading.Barrier(len(values) * repeats)
    out: list[Any] = []

    def one(i: int) -> None:
        start.wait(60)
        try:
            out.append(register(name, f"r{i}", values[i]))
        except Exception as e:  # noqa: BLE001 - reported by the caller
            out.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(values)) for _ in range(repeats)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return out


@contextmanager
def conflict_once(method: str) -> Iterator[list[str]]:
    """The registry's client raises, once, on its first `method` call, the error the tracking server sends when a
    concurrent write inserted the same tag/alias row first (measured against `mlflow server` 3.17 with SQLite).
    Yields the list of calls that got the fault."""
    from mlflow.exceptions import RestException

    from vigos.publish import registry

    original = registry._client
    hit: list[str] = []

    def client() -> Any:
        real = original()
        write = getattr(real, method)

        def faulty(*args: Any, **kwargs: Any) -> Any:
            if not hit:
                hit.append(method)
                raise RestException({"error_code": "BAD_REQUEST", "message": (
                    "(sqlite3.IntegrityError) UNIQUE constraint failed: model_version_tags.workspace, "
                    "model_version_tags.key, model_version_tags.name, model_version_tags.version")})
            return write(*args, **kwargs)

        setattr(real, method, faulty)
        return real

    registry._client = client
    try:
        yield hit
    finally:
        registry._client = original


# -- the benchmark -------------------------------------------------------------------------------------------------
def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    got = fn()
    return got, time.perf_counter() - started


def _judge_rows(workdir: Path, runs: int) -> list[Outcome]:
    """Judge faults: each run scores 4 questions through the fault, then re-runs the scoring against a healthy judge
    (the recovery). Lost: questions whose final grade is not the judge's, or that were labelled the judge's while
    not graded by it."""
    from vigos.evaluation.judge import Judge
    from vigos.evaluation.score import score_responses

    faults: dict[str, Callable[[], tuple[str, dict[str, Any]]]] = {
        "judge: down (connection refused) for the whole scoring": lambda: (down_url(), {}),
        "judge: 503 with Retry-After, then 429, then answers": lambda: ("", {"script": [
            (503, {"Retry-After": "2"}), (429, {"retry-after-ms": "500"})]}),
        "judge: 200 whose JSON body is cut in half": lambda: ("", {"script": ["truncated"]}),
        "judge: reply slower than eval.judge_timeout_s": lambda: ("", {"script": ["slow"], "timeout": 0.3}),
    }
    rows: list[Outcome] = []
    for fault, setup in faults.items():
        survived, lost, recovery = 0, 0.0, 0.0
        for run in range(runs):
            folder = workdir / f"judge-{len(rows)}-{run}"
            responses = write_responses(folder / "responses", 4)
            url, spec = setup()
            server = MisbehavingJudge(spec.get("script")) if not url else None
            cfg = judge_config(url or server.url, judge_max_retries=2, judge_max_consecutive_failures=2,
                               judge_timeout_s=spec.get("timeout", 120.0))
            try:
                first = score_responses(responses, cfg, folder / "grades", folder / "scores.json",
                                        judge=Judge(cfg, folder / "cache", sleep=lambda _s: None))
                healthy = MisbehavingJudge()
                try:
                    cfg.judge_base_url = healthy.url
                    again, seconds = _timed(lambda cfg=cfg, folder=folder, responses=responses: score_responses(
                        responses, cfg, folder / "grades", folder / "scores.json",
                        judge=Judge(cfg, folder / "cache", sleep=lambda _s: None)))
                finally:
                    healthy.close()
            finally:
                if server is not None:
                    server.close()
            mmmu = first["benchmarks"]["mmmu"]
            honest = (mmmu["grader"] == "judge") == (not first.get("incomplete"))  # the label tells the truth
            final = again["benchmarks"]["mmmu"]
            missing = 4 - final.get("graded_by", {}).get("judge", 0) // 2  # questions the judge did not grade
            lost += missing + (0 if honest else mmmu.get("ungraded_by_judge", 0))
            survived += honest and not missing and final["pass_at_k"] == 100.0 and not again.get("incomplete")
            recovery += seconds
        rows.append(Outcome(fault, runs, survived, lost, "questions", recovery / runs))
    return rows


def _gate_rows(workdir: Path, runs: int) -> list[Outcome]:
    """Gate faults against a real `mlflow server`. Lost: registrations that failed, plus a wrong final champion."""
    rows: list[Outcome] = []
    with mlflow_server(workdir):
        def interleave() -> tuple[bool, float]:
            name = f"fault-{uuid.uuid4().hex[:8]}"
            results = interleaved(name, 50.0, 55.0, 70.0)
            return len(results) == 2 and champion_of(name) == results["fast"].version, 2 - len(results)

        def racers() -> tuple[bool, float]:
            name = f"fault-{uuid.uuid4().hex[:8]}"
            values = [50.0, 55.0, 70.0, 62.0]
            got = race(name, values, repeats=2)
            ok = [r for r in got if not isinstance(r, Exception)]
            best = next(r.version for r in ok if r.gate_value == max(values)) if ok else -1
            return len(ok) == len(got) and champion_of(name) == best, len(got) - len(ok)

        def conflict() -> tuple[bool, float]:
            name = f"fault-{uuid.uuid4().hex[:8]}"
            with conflict_once("set_model_version_tag") as hit:
                try:
                    r = register(name, "r0", 50.0)
                except Exception:  # noqa: BLE001 - counted as lost
                    return False, 1
            return bool(hit) and r.champion_moved, 0

        for fault, case in [("gate: two racers read the champion before either writes", interleave),
                            ("gate: 4 runs x 2 attempts register at once (threads)", racers),
                            ("gate: a tag write loses a UNIQUE race (IntegrityError)", conflict)]:
            survived, lost, seconds = 0, 0.0, 0.0
            for _ in range(runs):
                (ok, missing), took = _timed(case)
                survived += ok
                lost += missing + (0 if ok else 1)
                seconds += took
            # "recovery" here is the whole registration under the fault: nothing is re-run by hand
            rows.append(Outcome(fault, runs, survived, lost, "registrations", seconds / runs))
    return rows


def run(workdir: Path, runs: int) -> list[Outcome]:
    return _judge_rows(workdir, runs) + _gate_rows(workdir, runs)
