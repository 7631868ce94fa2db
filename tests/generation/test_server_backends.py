"""The pieces of the server backends that need no server: the request-side chat template, and the `vllm serve`
launcher run against a STAND-IN process (vLLM does not run on this CPU machine): a small Python script in the place
of the `vllm` executable that records its argv, answers /health after a delay, and can be told to ignore SIGTERM.
The stand-in is a test double; the real server path is tested against `transformers serve`
(tests/evaluation/test_serve_backend.py)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pytest

from vigos import localserver
from vigos.errors import VigosError
from vigos.generation import vllm_server
from vigos.generation.vllm_server import SERVED_MODEL_NAME
from vigos.generation.vllm_server import vllm_server as start_vllm

STAND_IN = r'''
import http.server, json, os, signal, sys, threading, time
argv_file, delay, on_term = os.environ["STANDIN_ARGV"], float(os.environ["STANDIN_DELAY"]), os.environ["STANDIN_TERM"]
with open(argv_file, "w") as f:
    json.dump({"argv": sys.argv[1:], "pid": os.getpid(), "pgid": os.getpgid(0)}, f)
if on_term == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.environ.get("STANDIN_EXIT"):
    print("cannot load the model", flush=True)
    sys.exit(3)
port = int(sys.argv[sys.argv.index("--port") + 1])
started = time.monotonic()
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        ok = self.path == "/health" and time.monotonic() - started >= delay
        self.send_response(200 if ok else 503); self.end_headers()
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
'''


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    script = tmp_path / "vllm_stand_in.py"
    script.write_text(STAND_IN)
    monkeypatch.setattr(vllm_server, "VLLM", (sys.executable, str(script)))
    monkeypatch.setattr(localserver, "HEALTH_POLL_S", 0.1)
    monkeypatch.setenv("STANDIN_ARGV", str(tmp_path / "argv.json"))
    monkeypatch.setenv("STANDIN_DELAY", "0.5")
    monkeypatch.setenv("STANDIN_TERM", "exit")
    return tmp_path / "argv.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def test_command_line_health_wait_and_stop(stand_in, tmp_path):
    with start_vllm("/models/merged", data_parallel_size=4, log_path=tmp_path / "vllm.log", timeout_s=30,
                    extra_args=["--max-model-len", "32768"]) as base_url:
        started = json.loads(stand_in.read_text())
        import urllib.request

        with urllib.request.urlopen(base_url.removesuffix("/v1") + "/health", timeout=5) as r:
            assert r.status == 200  # only yielded once healthy (the stand-in answers 503 for its first 0.5 s)
    argv = started["argv"]
    port = argv[argv.index("--port") + 1]
    assert argv == ["serve", "/models/merged", "--host", "127.0.0.1", "--port", port, "--data-parallel-size", "4",
                    "--served-model-name", SERVED_MODEL_NAME, "--generation-config", "vllm",
                    "--max-model-len", "32768"]
    assert base_url == f"http://127.0.0.1:{port}/v1"
    assert started["pgid"] == started["pid"]  # its own process group: stopping it takes its workers along
    assert not _alive(started["pid"])


def test_a_server_ignoring_sigterm_is_killed_and_an_error_inside_the_block_still_stops_it(stand_in, tmp_path,
                                                                                           monkeypatch):
    monkeypatch.setenv("STANDIN_TERM", "ignore")
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="boom"):
        with start_vllm("m", data_parallel_size=1, log_path=tmp_path / "vllm.log", timeout_s=30, grace_s=0.5):
            raise RuntimeError("boom")
    assert not _alive(json.loads(stand_in.read_text())["pid"])
    assert time.monotonic() - t0 < 20


def test_sigterm_to_this_process_stops_the_server(stand_in, tmp_path):
    with pytest.raises(SystemExit):
        with start_vllm("m", data_parallel_size=1, log_path=tmp_path / "vllm.log", timeout_s=30):
            os.kill(os.getpid(), signal.SIGTERM)  # Kubernetes stopping the pod
            time.sleep(5)  # pragma: no cover - the handler raises first
    assert not _alive(json.loads(stand_in.read_text())["pid"])
    assert signal.getsignal(signal.SIGTERM) is not None


def test_a_server_that_exits_or_never_gets_healthy_is_one_line_with_its_log(stand_in, tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_EXIT", "1")
    with pytest.raises(VigosError) as e:
        with start_vllm("m", data_parallel_size=1, log_path=tmp_path / "a.log", timeout_s=30):
            pass  # pragma: no cover
    assert "exited with code 3" in str(e.value) and "cannot load the model" in str(e.value)
    monkeypatch.delenv("STANDIN_EXIT")
    monkeypatch.setenv("STANDIN_DELAY", "60")
    with pytest.raises(VigosError, match="did not answer .*/health within 1 s"):
        with start_vllm("m", data_parallel_size=1, log_path=tmp_path / "b.log", timeout_s=1):
            pass  # pragma: no cover
    assert not _alive(json.loads(stand_in.read_text())["pid"])


def test_open_template_renders_the_engine_prompt(tiny_processor, red_image):
    """The request-side template gives byte for byte `build_prompt_text`'s prompt (images, system turn, prefill)."""
    from vigos.data.prompts import build_messages, build_prompt_text, with_prefill
    from vigos.generation.openai import OPEN_TEMPLATE

    for images in ([], [red_image], [red_image, red_image]):
        messages = build_messages("What colour?", images)
        want = build_prompt_text(tiny_processor, messages)
        got = tiny_processor.apply_chat_template(with_prefill(messages), tokenize=False, add_generation_prompt=True,
                                                 chat_template=OPEN_TEMPLATE)
        assert got == want and got.endswith("<|im_start|>assistant\n<description>")


def test_another_servers_command_goes_through_the_same_start_wait_and_stop(stand_in, tmp_path, monkeypatch):
    """`command=` (benchmarks/eval_throughput.py's CPU smoke test runs `transformers serve` this way): that command
    line, no GPU count asked for, and the same health wait and stop."""
    monkeypatch.setattr(vllm_server, "visible_gpus", lambda: pytest.fail("a custom command needs no GPU count"))
    script = vllm_server.VLLM[1]
    with start_vllm("ignored", log_path=tmp_path / "s.log", timeout_s=30,
                    command=lambda port: [sys.executable, script, "--port", str(port), "--other"]) as base_url:
        started = json.loads(stand_in.read_text())
    assert started["argv"] == ["--port", base_url.rsplit(":", 1)[1].removesuffix("/v1"), "--other"]
    assert not _alive(started["pid"])
