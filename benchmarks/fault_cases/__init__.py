"""Fault cases for benchmarks/faults.py: one module per area, each with `run(workdir, runs) -> list[Outcome]`."""

from __future__ import annotations

from dataclasses import dataclass


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
