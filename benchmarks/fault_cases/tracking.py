"""Tracking outages (issue 14): a real `mlflow server` behind `Link`, a relay switched between up, down (connections
cut at once) and hung (accepted, never answered). `vigos.tracking.BackgroundLogger` must never make the job wait,
and every metric point must reach the server, in order, once it is back (at the latest when the journal is
replayed). `tests/faults/test_tracking.py` asserts the same faults."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path

from fault_cases import Outcome, mlflow_server


class Link:
    """127.0.0.1 relay to the MLflow server; `state` is "up", "down" or "hung" (a stand-in for the network)."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.state = "up"
        self._server = socket.create_server(("127.0.0.1", 0))
        self.uri = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            if self.state == "down":
                conn.close()
            elif self.state == "hung":
                self._held.append(conn)
            else:
                threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            conn.close()
            return

        def pipe(a: socket.socket, b: socket.socket) -> None:
            try:
                while data := a.recv(65536):
                    if self.state != "up":  # the link went down mid-request
                        break
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=pipe, args=(upstream, conn), daemon=True).start()
        pipe(conn, upstream)

    def close(self) -> None:
        self._server.close()
        for conn in self._held:
            conn.close()


def _delivered(uri: str, run_id: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, "train/loss"))


def _job(folder: Path, uri: str, link: Link, outage: str, steps: int, back_before_end: bool) -> tuple[bool, int, float]:
    """Log `steps` points with the link `outage` for the middle half; (survived, points lost, recovery seconds)."""
    from mlflow.tracking import MlflowClient

    from vigos import tracking

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("faults") or client.get_experiment(client.create_experiment("faults"))
    run_id = client.create_run(exp.experiment_id).info.run_id
    logger = tracking.BackgroundLogger(folder, run_id, retry_max_s=0.5)
    expected, worst = [], 0.0
    for step in range(1, steps + 1):
        if step == steps // 4:
            link.state = outage
        if step == 3 * steps // 4 and back_before_end:
            link.state = "up"
        started = time.perf_counter()
        logger.log_metrics({"train/loss": 1.0 / step}, step)
        worst = max(worst, time.perf_counter() - started)
        expected.append((step, 1.0 / step))
        time.sleep(0.02)  # the job's own work
    if back_before_end:
        started = time.perf_counter()
        left = logger.close(flush_s=120)
    else:
        logger.close(flush_s=1)  # the job ends while the server is still away
        link.state = "up"
        started = time.perf_counter()
        left = tracking.replay(folder, flush_s=120)
    recovery = time.perf_counter() - started
    got = _delivered(uri, run_id)
    lost = len(set(expected) - set(got)) + max(0, len(got) - len(expected))  # missing or duplicated points
    return left == 0 and got == expected and worst < 0.1, lost, recovery


def run(workdir: Path, runs: int) -> list[Outcome]:
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cases = [("MLflow down mid-job, back before the end", "down", True),
             ("MLflow hung mid-job, back before the end", "hung", True),
             ("MLflow down until after the job ended (journal replay)", "down", False)]
    rows = []
    with mlflow_server(workdir) as uri:
        for name, outage, back in cases:
            survived, lost, times = 0, 0, []
            for i in range(runs):
                link = Link(uri)
                os.environ["MLFLOW_TRACKING_URI"] = link.uri
                ok, n, seconds = _job(workdir / f"{outage}-{back}-{i}", uri, link, outage, 40, back)
                link.close()
                survived += ok
                lost += n
                times.append(seconds)
            rows.append(Outcome(name, runs, survived, lost, "metric points", sum(times) / len(times)))
    return rows
