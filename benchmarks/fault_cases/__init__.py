"""Fault cases for benchmarks/faults.py: one module per area, each with `run(workdir, runs) -> list[Outcome]`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Outcome:
    """One row of the fault table."""

    fault: str  # what was injected, e.g. "kill between adapter and RNG file of a checkpoint save"
    runs: int  # how many times it was injected
    survived: int  # runs whose recovery ended with the reference result
    lost_amount: float  # data lost summed over runs (0 is the goal), in `lost_unit`
    lost_unit: str  # "bytes", "rows", "metrics", ...
    recovery_s: float  # mean wall time of the recovery (the rerun after the fault)

    @property
    def lost(self) -> str:
        return f"{self.lost_amount:g} {self.lost_unit}"


@contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """A real `mlflow server` (SQLite, one worker) on a free 127.0.0.1 port; MLFLOW_TRACKING_URI points at it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    log = open(root / "mlflow.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
                             f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    old = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"mlflow server did not start: {(root / 'mlflow.log').read_text()[-2000:]}") from None
                time.sleep(0.3)
        os.environ["MLFLOW_TRACKING_URI"] = uri
        yield uri
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
        os.killpg(proc.pid, 15)
        proc.wait(30)
        log.close()
