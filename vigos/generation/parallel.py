"""Data parallel helpers for generation under torchrun: which items a rank generates, and how to put them back.

Items are dealt round-robin (`items[rank::world_size]`), so ranks get counts that differ by at most one and similar
mixes of long and short prompts. Because every sample carries its own seed, the results do not depend on the world
size: one GPU or eight produce the same samples.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def shard_for_rank(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """The items rank `rank` of `world_size` handles: `items[rank::world_size]`."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return list(items[rank::world_size])


def merge_shards(shards: Sequence[Sequence[T]]) -> list[T]:
    """Inverse of `shard_for_rank`: `shards[r]` is rank r's list; returns the items in their original order."""
    world_size = len(shards)
    total = sum(len(s) for s in shards)
    out: list[T] = []
    for i in range(total):
        rank, pos = i % world_size, i // world_size
        if pos >= len(shards[rank]):
            raise ValueError(f"shard sizes {[len(s) for s in shards]} do not come from shard_for_rank")
        out.append(shards[rank][pos])
    return out


def dist_rank_world() -> tuple[int, int]:
    """(rank, world_size) from torchrun's environment (RANK / WORLD_SIZE); (0, 1) outside torchrun."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
