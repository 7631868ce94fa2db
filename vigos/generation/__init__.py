"""One batched sampling engine for training rollouts and evaluation.

    from vigos.generation import GenerationRequest, HFEngine, SamplingParams

    engine = HFEngine(model, processor, batch_size=32)        # static cache + compiled decode on CUDA
    results = engine.generate([GenerationRequest(prompt, [image], seed=42 + s) for s in range(5)],
                              SamplingParams.from_eval(cfg.eval))

`HFEngine` (torch/transformers) is imported lazily, so importing the types is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vigos.generation.parallel import dist_rank_world, merge_shards, shard_for_rank
from vigos.generation.types import Engine, FinishReason, GenerationRequest, GenerationResult, SamplingParams

if TYPE_CHECKING:  # pragma: no cover
    from vigos.generation.engine import HFEngine

__all__ = [
    "Engine",
    "FinishReason",
    "GenerationRequest",
    "GenerationResult",
    "HFEngine",
    "SamplingParams",
    "dist_rank_world",
    "merge_shards",
    "shard_for_rank",
]


def __getattr__(name: str) -> Any:
    if name == "HFEngine":
        from vigos.generation.engine import HFEngine

        return HFEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
