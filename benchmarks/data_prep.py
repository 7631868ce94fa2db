"""Data prep throughput (rows/s) on synthetic rows, 1 worker process vs 2, side by side.

    .venv/bin/python benchmarks/data_prep.py --rows 5000

Each setting runs `--repeats` times and the best run counts (the machine may be shared). `process` is the
per-row phase that `num_proc` parallelises; `total` includes loading, the sequential filter pass and the write.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from vigos.config import DataConfig
from vigos.data.prepare import prepare
from vigos.data.synthetic import write_synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000, help="Synthetic rows to prepare.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per setting; the fastest counts.")
    parser.add_argument("--seed", type=int, default=DataConfig().seed, help="Seed of the synthetic data.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vigos-bench-") as tmp:
        t = time.perf_counter()
        source = write_synthetic(Path(tmp) / "src", args.rows, args.seed, fmt="disk")
        print(f"generated {args.rows} synthetic rows in {time.perf_counter() - t:.1f}s; cpus: {os.cpu_count()}")
        best: dict[int, dict] = {}
        for num_proc in (1, 2):
            for _ in range(args.repeats):
                cfg = DataConfig(source=str(source), num_proc=num_proc)
                stats = prepare(cfg, Path(tmp) / f"out{num_proc}", progress=False)
                if num_proc not in best or stats["seconds"] < best[num_proc]["seconds"]:
                    best[num_proc] = stats

    def rate(stats: dict, key: str) -> float:
        seconds = stats["seconds"] if key == "total" else stats["seconds_by_phase"]["process"]
        return stats["rows_in"] / seconds

    print(f"{'phase':<10}{'num_proc=1 rows/s':>20}{'num_proc=2 rows/s':>20}{'ratio':>8}")
    for key in ("process", "total"):
        one, two = rate(best[1], key), rate(best[2], key)
        print(f"{key:<10}{one:>20,.0f}{two:>20,.0f}{two / one:>8.2f}")


if __name__ == "__main__":
    main()
