"""Shared fixtures: a real `mlflow server` process on 127.0.0.1 (SQLite backend, one worker), and one tiny random
Qwen2.5-VL per test session (built offline in well under a second)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(command: Callable[[int], list[str]], log_path: Path, *, timeout_s: float = 120,
           env: dict[str, str] | None = None) -> Iterator[str]:
    """Run `command(port)` (a server on 127.0.0.1:port, in its own process group) until its `/health` answers
    200; yield its base URL, then stop the whole group. A server that exits or stays silent past `timeout_s`
    fails the test with the tail of its log."""
    port = _free_port()
    cmd, base = command(port), f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                why = f"exited with {proc.returncode}" if proc.poll() is not None else f"no answer in {timeout_s} s"
                pytest.fail(f"`{' '.join(map(str, cmd))}` did not start ({why}); its log ends with:\n"
                            f"{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.3)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


@pytest.fixture(scope="session")
def serve():
    """`served` for test modules (they cannot import conftest under --import-mode=importlib)."""
    return served


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory):
    """The folder of the session's MLflow server: its SQLite database and artifact store, for tests that search
    what the server keeps on disk."""
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(scope="session")
def mlflow_server(mlflow_store):
    """A real MLflow tracking server for the session; yields its URI. Stopped at the end."""
    root = mlflow_store
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    with served(lambda port: [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                              "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
                              "--port", str(port), "--workers", "1"],
                root / "server.log") as uri:
        yield uri


@pytest.fixture
def tracking_env(mlflow_server, monkeypatch, tmp_path):
    """Point MLFLOW_TRACKING_URI (and VIGOS_HOME) at the test server / a temp folder for one test."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("VIGOS_HOME", str(tmp_path / "vigos-home"))
    mlflow.set_tracking_uri(mlflow_server)
    yield mlflow_server
    while mlflow.active_run():
        mlflow.end_run()

@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from vigos.modeling.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_processor(tiny_model_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir)


@pytest.fixture
def red_image():
    from PIL import Image

    return Image.new("RGB", (120, 90), (200, 30, 30))
