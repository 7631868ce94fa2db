"""Process-group setup for single-process, `torchrun` and `deepspeed`-launcher runs, and the few collectives the
trainer needs. CPU runs use gloo (DeepSpeed works on CPU with gloo, no oneCCL); GPU runs NCCL."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from vigos.localserver import free_port


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join (or, alone, create) the process group. A single process gets a one-member group rendezvousing through
    a temporary file (no port: a port picked free can be taken by someone else before the store binds it), so the
    same DeepSpeed code path serves the laptop demo and the 8-GPU pod."""
    alone = "WORLD_SIZE" not in os.environ
    if alone:
        os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(free_port())})  # read by DeepSpeed, unused by the file rendezvous
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        import deepspeed

        backend = "nccl" if device.type == "cuda" else "gloo"
        if alone:
            import tempfile

            rendezvous = Path(tempfile.mkdtemp(prefix="vigos-pg-")) / "store"
            dist.init_process_group(backend, init_method=rendezvous.as_uri(), rank=0, world_size=1)
        deepspeed.init_distributed(dist_backend=backend, verbose=False)  # wraps the group made above, if any
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a no-op copy for one process). Float64 on the wire: counts stay exact."""
    out = values.detach().to(torch.float64).clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            out = out.cuda()
        dist.all_reduce(out)
    return out.to(values.device)


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
