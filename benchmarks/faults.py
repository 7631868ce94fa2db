"""Fault-injection table: each fault a production run meets, injected deterministically, and what survived.

    .venv/bin/python benchmarks/faults.py [--runs N] [--only NAME ...] [--json out.json]

Every module in `benchmarks/fault_cases/` exposes `run(workdir: Path, runs: int) -> list[Outcome]`: it injects its
faults at fixed points (in-process hooks or a misbehaving local server, never timing luck), recovers the way a
user would (rerun the step), and measures what was lost against an uninterrupted reference. The table prints one
row per fault: runs, how many survived, data lost, recovery time (rerun wall time after the fault). The same
faults are asserted in `tests/faults/` (CI); this script is the summary people read (benchmarks/RESULTS.md).
Goal (issue 14): every row survived, zero lost.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fault_cases import Outcome  # noqa: E402


def case_modules(only: list[str] | None) -> list[str]:
    import fault_cases

    names = sorted(m.name for m in pkgutil.iter_modules(fault_cases.__path__))
    return [n for n in names if not only or n in only]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each fault (default 3)")
    parser.add_argument("--only", nargs="*", help="case modules to run (default: all)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    rows: list[Outcome] = []
    for name in case_modules(args.only):
        module = importlib.import_module(f"fault_cases.{name}")
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"vigos-faults-{name}-") as tmp:
            rows.extend(module.run(Path(tmp), args.runs))
        print(f"  ({name}: {time.perf_counter() - started:.1f} s)", file=sys.stderr)
    header = f"{'fault':<58} {'runs':>4} {'survived':>8} {'lost':>16} {'recovery':>9}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row.fault:<58} {row.runs:>4} {row.survived:>8} {row.lost:>16} {row.recovery_s:>8.2f}s")
    failed = [r.fault for r in rows if r.survived < r.runs or r.lost_amount]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} faults survived with nothing lost")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
