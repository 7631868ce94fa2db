"""A server process on 127.0.0.1 for the length of a `with` block: started in its own process group on a free port,
waited for until its `/health` answers 200, and stopped, the whole group, however the block ends.

One home for the evaluation's `vllm serve` (`vigos.generation.vllm_server`, which adds its command line, GPU count and
SIGTERM handling) and the test suite's real servers (tests/conftest.py: `mlflow server`, `transformers serve`).
Stop: SIGTERM to the group (a server's workers are its children), SIGKILL after `grace_s`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from vigos.errors import VigosError

STOP_GRACE_S = 30.0
HEALTH_POLL_S = 1.0


def free_port() -> int:
    """A port free on 127.0.0.1 right now (another process may still take it before the server binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def wait_healthy(base: str, proc: subprocess.Popen, timeout_s: float, log_path: Path, name: str,
                 timeout_setting: str = "", poll_s: float | None = None) -> None:
    """Until GET `base`/health answers 200; VigosError (with the log's tail) if the server exits or time runs out.
    `timeout_setting`: the setting that raises `timeout_s`, named in the time-out's message."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise VigosError(f"`{name}` exited with code {proc.returncode} before it was healthy; its log "
                             f"{log_path} ends with: {_tail(log_path)!r}")
        if time.monotonic() > deadline:
            setting = f" ({timeout_setting})" if timeout_setting else ""
            raise VigosError(f"`{name}` did not answer {base}/health within {timeout_s:g} s{setting}; its log "
                             f"{log_path} ends with: {_tail(log_path)!r}")
        time.sleep(HEALTH_POLL_S if poll_s is None else poll_s)


def stop(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the server's process group, SIGKILL it after `grace_s` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def local_server(
    command: Callable[[int], Sequence[str]],
    log_path: Path,
    *,
    timeout_s: float,
    name: str | None = None,
    timeout_setting: str = "",
    not_installed: str = "",
    env: Mapping[str, str] | None = None,
    grace_s: float = STOP_GRACE_S,
    poll_s: float | None = None,
) -> Iterator[str]:
    """Run `command(port)` (output appended to `log_path`) until /health answers; yield `http://127.0.0.1:<port>`;
    stop it however the block ends. `name`: how messages call it (default the command line); `not_installed`: the
    fix said when the executable does not exist."""
    port = free_port()
    cmd = [str(c) for c in command(port)]
    name = name or " ".join(cmd)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except FileNotFoundError:
            raise VigosError(f"`{cmd[0]}` is not installed here{'; ' + not_installed if not_installed else ''}") \
                from None
    try:
        print(f"[vigos] started `{' '.join(cmd)}` (pid {proc.pid}, log {log_path})", flush=True)
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, proc, timeout_s, log_path, name, timeout_setting, poll_s)
        yield base
    finally:
        stop(proc, grace_s)
