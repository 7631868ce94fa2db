"""`vllm serve` started by the evaluation itself (`eval.backend=vllm`): on 127.0.0.1 inside the pod, data-parallel
over the pod's GPUs, used through `OpenAIEngine`, and stopped on every exit path.

    with vllm_server("/mnt/vigos/runs/x/merged", data_parallel_size=8, log_path=out / "vllm.log") as base_url:
        engine = OpenAIEngine(base_url, SERVED_MODEL_NAME, processor)

Start, health wait and stop are `vigos.localserver`'s: SIGTERM to the server's process group (vLLM's API server,
engine cores and data-parallel workers), SIGKILL after `STOP_GRACE_S`. A SIGTERM to this process while the server runs (Kubernetes stopping the pod, the step's own
time-out) is turned into an exception, so the `finally` that stops the server runs (Python's default for SIGTERM
is to die at once, which would leave the GPU workers behind).

`command` swaps the command line for another OpenAI-compatible server's (same start, health wait and stop):
benchmarks/eval_throughput.py's CPU smoke test runs `transformers serve` through it where vLLM cannot run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from vigos.errors import VigosError, sigterm_exits
from vigos.localserver import STOP_GRACE_S, local_server

VLLM: tuple[str, ...] = ("vllm",)
"""The executable (tests point it at a stand-in script)."""
SERVED_MODEL_NAME = "vigos-eval"
"""The name requests carry: the same for every model folder, so it never depends on a path."""


def vllm_command(model: str, port: int, data_parallel_size: int, extra_args: Sequence[str] = ()) -> list[str]:
    """The `vllm serve` command line. `--generation-config vllm`: ignore the checkpoint's sampling defaults (the
    requests carry every sampling field anyway); `extra_args` (`eval.vllm_args`) come last, so they win."""
    return [*VLLM, "serve", str(model), "--host", "127.0.0.1", "--port", str(port),
            "--data-parallel-size", str(data_parallel_size), "--served-model-name", SERVED_MODEL_NAME,
            "--generation-config", "vllm", *extra_args]


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


@contextlib.contextmanager
def vllm_server(
    model: str,
    *,
    data_parallel_size: int = 0,
    log_path: Path,
    timeout_s: float = 1800.0,
    extra_args: Sequence[str] = (),
    grace_s: float = STOP_GRACE_S,
    command: Callable[[int], Sequence[str]] | None = None,
) -> Iterator[str]:
    """Start `vllm serve` on `model` (0 replicas: one per visible GPU), wait for /health, yield the OpenAI API root
    (`http://127.0.0.1:<port>/v1`); stop the server however the block ends. `command(port)`: another server's
    command line instead (`model`, `data_parallel_size` and `extra_args` are then unused)."""
    name = "vllm serve" if command is None else "the generation server"
    if command is None:
        if data_parallel_size <= 0:
            data_parallel_size = visible_gpus()
            if data_parallel_size == 0:
                raise VigosError("eval.backend=vllm needs a GPU and this machine shows none; use --backend engine "
                                 "on CPU")
        command = lambda port: vllm_command(model, port, data_parallel_size, extra_args)  # noqa: E731
    with sigterm_exits(), local_server(
            command, log_path, timeout_s=timeout_s, name=name, timeout_setting="eval.vllm_start_timeout_s",
            not_installed="eval.backend=vllm runs in the evaluation image (docker/vllm.Dockerfile), or use "
                          "--backend engine / openai", grace_s=grace_s) as base:
        yield f"{base}/v1"
