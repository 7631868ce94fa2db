"""Shared fixtures: a real `mlflow server` process on 127.0.0.1 (SQLite backend, one worker), and one tiny random
Qwen2.5-VL per test session (built offline in well under a second)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest


@contextmanager
def served(command: Callable[[int], list[str]], log_path: Path, *, timeout_s: float = 120,
           env: dict[str, str] | None = None) -> Iterator[str]:
    """Run `command(port)` (a server on 127.0.0.1:port, in its own process group) until its `/health` answers
    200; yield its base URL, then stop the whole group (`vigos.localserver`, as the evaluation runs vLLM). A
    server that exits or stays silent past `timeout_s` fails the test with the tail of its log."""
    from vigos.errors import VigosError
    from vigos.localserver import local_server

    with ExitStack() as stack:
        try:
            base = stack.enter_context(local_server(command, log_path, timeout_s=timeout_s, env=env, grace_s=20,
                                                    poll_s=0.3))
        except VigosError as e:
            pytest.fail(str(e))
        yield base


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
