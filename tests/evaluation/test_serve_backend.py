"""`vigos eval run --backend openai` against a REAL OpenAI-compatible server: `transformers serve` on 127.0.0.1
serving the tiny random Qwen2.5-VL. No mock: the openai client, HTTP, the server's request validation, its chat
template call (with our request-side template) and its generation all run for real.

What the server cannot be made to do on cue (answer 429 / 503 with Retry-After) comes from a small fault proxy in
front of it (`FaultProxy`, a test double for a misbehaving load balancer: it answers the first requests with the
statuses it is given, then forwards everything to the real server). A kill of the server mid-run happens at a named
point: the `on_chunk` hook run_eval calls after each chunk is on disk.
"""

from __future__ import annotations

import http.server
import importlib.util
import os
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from vigos.config import load_config
from vigos.errors import VigosError
from vigos.evaluation.fixtures import write_benchmark_fixtures
from vigos.evaluation.run import ROW_FIELDS, read_rows, responses_path, run_eval

_START_TIMEOUT_S = 180
_TRANSFORMERS_CLI = Path(sys.executable).with_name("transformers")
BENCHES = ["cv-bench", "mmmu"]
N_ROWS = 2  # questions per benchmark; k = 2: 4 rows each

pytestmark = pytest.mark.skipif(
    not _TRANSFORMERS_CLI.exists() or not all(importlib.util.find_spec(m) for m in ("fastapi", "uvicorn", "openai")),
    reason="`transformers serve` cannot run here: it needs the `transformers` CLI beside the Python interpreter "
    "and fastapi + uvicorn + openai (pip install 'transformers[serving]')",
)


def _command(model_dir):
    return lambda port: [str(_TRANSFORMERS_CLI), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
                         "--device", "cpu", "--log-level", "warning"]


_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory, serve):
    """One `transformers serve` for the module; yields its API root."""
    log_path = tmp_path_factory.mktemp("serve") / "server.log"
    with serve(_command(tiny_model_dir), log_path, timeout_s=_START_TIMEOUT_S, env=_ENV) as base:
        yield f"{base}/v1"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return write_benchmark_fixtures(tmp_path_factory.mktemp("serve-fx"), BENCHES, n=N_ROWS, seed=0)


def _cfg(tiny_model_dir, sources, base_url, **extra):
    overrides = [f"model.name_or_path={tiny_model_dir}", "eval.n_samples=2", "eval.max_new_tokens=4",
                 "eval.max_examples=null", "eval.backend=openai", f"eval.base_url={base_url}",
                 f"eval.server_model={tiny_model_dir}", "eval.concurrency=2", "eval.request_retries=0",
                 *[f"eval.{k}={v}" for k, v in extra.items()]]
    cfg = load_config("tiny", overrides=overrides)
    cfg.eval.benchmarks = list(BENCHES)
    cfg.eval.sources = list(sources)
    return cfg


def _check_rows(out, cfg, names=BENCHES):
    for name in names:
        rows = read_rows(responses_path(out, name))[0]
        assert len(rows) == 2 * N_ROWS
        assert [r["sample_index"] for r in rows] == [0, 1] * N_ROWS  # item order, then sample order
        for r in rows:
            assert tuple(r) == ROW_FIELDS
            assert r["response"].startswith("<description>")
            assert not r["response"].startswith("<description><description>")  # the server's echo is cut once
            assert r["seed"] == cfg.eval.seed + r["sample_index"]
            assert r["finish_reason"] in ("stop", "length") and 1 <= r["num_tokens"] <= 4


def test_cli_openai_backend_writes_rows_that_score(server, tiny_model_dir, sources, tmp_path):
    from typer.testing import CliRunner

    from vigos.evaluation.cli import app
    from vigos.evaluation.score import score_responses

    out = tmp_path / "out"
    args = ["run", "--model", str(tiny_model_dir), "--output", str(out), "--preset", "tiny",
            "--backend", "openai", "--base-url", server, "--set", f"eval.server_model={tiny_model_dir}",
            "--set", f"eval.benchmarks=[{','.join(BENCHES)}]", "--set", f"eval.sources=[{','.join(sources)}]",
            "--set", "eval.n_samples=2", "--set", "eval.max_new_tokens=4", "--set", "eval.max_examples=null",
            "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cfg = _cfg(tiny_model_dir, sources, server)
    _check_rows(out, cfg)
    scores = score_responses(out / "responses", cfg.eval, grades_dir=out / "grades", output=out / "scores.json")
    assert set(scores["benchmarks"]) == set(BENCHES) and "incomplete" not in scores


def test_prefill_route_is_probed_on_the_real_server(server, tiny_model_dir, red_image):
    from vigos.data.prompts import build_messages, build_prompt_text, with_prefill
    from vigos.generation import GenerationRequest, SamplingParams
    from vigos.generation.openai import OpenAIEngine
    from vigos.modeling.load import load_processor

    cfg = load_config("tiny", overrides=[f"model.name_or_path={tiny_model_dir}"])
    processor = load_processor(cfg.model)
    messages = build_messages("What colour is the square?", [red_image, red_image])
    request = GenerationRequest(build_prompt_text(processor, messages), [red_image, red_image], seed=7,
                                messages=with_prefill(messages))
    params = SamplingParams(1.0, 0.9, 20, 3)
    engine = OpenAIEngine(server, str(tiny_model_dir), processor, max_retries=0)
    (result,) = engine.generate([request], params)
    # transformers serve refuses continue_final_message (422): the request chat template is taken, whose prompt
    # has exactly the engine's token count (two images included), and whose replies repeat the prefill (cut off)
    assert engine.route.name == "chat_template" and engine.route.echoes_prefill
    assert result.finish_reason in ("stop", "length") and 1 <= result.num_tokens <= 3 and result.seed == 7
    assert result.prompt_tokens == len(processor(text=[request.prompt], images=[red_image, red_image])["input_ids"][0])

    forced = OpenAIEngine(server, str(tiny_model_dir), processor, prefill="continue_final_message", max_retries=0)
    with pytest.raises(VigosError) as e:
        forced.generate([request], params)
    text = str(e.value)
    assert "\n" not in text and "does not continue the assistant prefill" in text and "422" in text


class FaultProxy:
    """A test double for a misbehaving gateway (see the module docstring): answers the first chat requests with
    `faults` (status, headers; None passes one on), then forwards every request to `upstream`. Counts the chat requests it saw."""

    def __init__(self, upstream: str, faults: list[tuple[int, dict[str, str]]]) -> None:
        self.faults = list(faults)
        self.chat_requests = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _forward(self, body: bytes | None) -> None:
                req = urllib.request.Request(upstream + self.path, data=body, method=self.command,
                                             headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=120) as r:
                        status, data = r.status, r.read()
                except urllib.error.HTTPError as e:
                    status, data = e.code, e.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._forward(None)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with proxy.lock:
                    proxy.chat_requests += 1
                    fault = proxy.faults.pop(0) if proxy.faults else None  # None: pass this one on
                if fault is None:
                    return self._forward(body)
                status, headers = fault
                data = b'{"error": {"message": "injected"}}'
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_429_and_5xx_are_retried_after_retry_after_and_a_request_failing_for_good_is_an_error_row(
        server, tiny_model_dir, sources, tmp_path, monkeypatch):
    import vigos.generation.openai as openai_mod
    from vigos.evaluation.score import score_responses

    sleeps: list[float] = []
    monkeypatch.setattr(openai_mod, "_sleep", sleeps.append)  # no real waiting
    # the probe's first attempt gets a 429 asking for 7 s, its second a 503 (back-off 2 s x jitter in [0.5, 1]);
    # the third reaches the server, which refuses continue_final_message (422): the chat_template probe passes
    proxy = FaultProxy(server.removesuffix("/v1"), [(429, {"Retry-After": "7"}), (503, {})])
    cfg = _cfg(tiny_model_dir, sources, proxy.url, request_retries=2, concurrency=1)
    cfg.eval.benchmarks = ["cv-bench"]
    try:
        counts = run_eval(tiny_model_dir, cfg, tmp_path / "out", progress=False)
        assert counts["cv-bench"]["complete"] and counts["cv-bench"]["errors"] == 0
        assert sleeps[0] == 7.0 and 1.0 <= sleeps[1] <= 2.0 and len(sleeps) == 2
        assert proxy.chat_requests == 3 + 1 + 2 * N_ROWS  # 3 probes of one route, 1 of the other, 1 call per sample

        # the server breaks after the probe: each request gets 3 attempts (1 + 2 retries), then an error row
        out = tmp_path / "down"
        cfg.eval.benchmarks = ["mmmu"]
        cfg.eval.prefill = "chat_template"  # the route named: one probe request, which passes
        proxy.faults = [None] + [(502, {})] * 100
        sleeps.clear()
        with pytest.raises(VigosError) as e:
            run_eval(tiny_model_dir, cfg, out, progress=False)
        assert f"{2 * N_ROWS} request(s) failed" in str(e.value) and "\n" not in str(e.value)
        assert len(sleeps) == 2 * 2 * N_ROWS
        rows = read_rows(responses_path(out, "mmmu"))[0]
        assert len(rows) == 2 * N_ROWS
        assert all(r["finish_reason"] == "error" and r["response"] is None and r["num_tokens"] == 0 for r in rows)
        scores = score_responses(out / "responses", cfg.eval)  # a failed request is scored wrong, never skipped
        assert scores["benchmarks"]["mmmu"]["pass_at_k"] == 0.0 and scores["benchmarks"]["mmmu"]["n_examples"] == N_ROWS

        # the server is back: the same command asks for the failed rows alone, and they replace the error rows
        proxy.faults = []
        counts = run_eval(tiny_model_dir, cfg, out, progress=False)
        assert counts["mmmu"]["generated"] == 2 * N_ROWS and counts["mmmu"]["resumed"] == 0
        assert counts["mmmu"]["complete"] and counts["mmmu"]["errors"] == 0
        _check_rows(out, cfg, ["mmmu"])
    finally:
        proxy.close()


def test_resume_after_the_server_is_killed_mid_run_and_restarted(tiny_model_dir, sources, tmp_path, serve):
    import contextlib

    out = tmp_path / "out"
    stack = contextlib.ExitStack()
    base = stack.enter_context(serve(_command(tiny_model_dir), tmp_path / "a.log", timeout_s=_START_TIMEOUT_S,
                                     env=_ENV))
    cfg = _cfg(tiny_model_dir, sources, f"{base}/v1", concurrency=1)  # a chunk = 4 rows = one benchmark

    def kill_after_first_chunk(name, done, total):
        if name == BENCHES[0]:
            stack.close()  # the server is gone: the next benchmark's requests find nobody

    try:
        with pytest.raises(VigosError, match="request\\(s\\) failed"):
            run_eval(tiny_model_dir, cfg, out, progress=False, on_chunk=kill_after_first_chunk)
        assert len(read_rows(responses_path(out, BENCHES[0]))[0]) == 2 * N_ROWS
        # restarted (on another port, as a rescheduled server would be): only the missing rows are asked for
        base = stack.enter_context(serve(_command(tiny_model_dir), tmp_path / "b.log", timeout_s=_START_TIMEOUT_S,
                                         env=_ENV))
        cfg.eval.base_url = f"{base}/v1"
        counts = run_eval(tiny_model_dir, cfg, out, progress=False)
    finally:
        stack.close()
    assert counts[BENCHES[0]]["resumed"] == 2 * N_ROWS and counts[BENCHES[0]]["generated"] == 0
    assert counts[BENCHES[1]]["generated"] == 2 * N_ROWS and counts[BENCHES[1]]["complete"]
    _check_rows(out, cfg, BENCHES)
