"""Rule grading throughput: responses graded per second, 1 process vs N, on synthetic rows of every answer type.

    .venv/bin/python benchmarks/grading.py                       # 50,000 rows, 1 vs 2 processes
    .venv/bin/python benchmarks/grading.py --rows 200000 --processes 1 2 4 --json out.json

Rows: 10,000 questions x 5 samples by default, over the ten benchmarks' answer types in the forms real models write
(option letters, option values with units, `\\dfrac`, yes/no sentences, numbers with units / e-notation / counting
words, LaTeX expressions, MMMU list references, MM-Vet `<OR>` / `<AND>`, ViLP one-word answers). A question's five
samples repeat one of a few answers, as sampled answers do, so the per-(question, answer) memo matters as it does
on real responses. Everything is graded by `vigos.evaluation.score.grade_rows` with `grader=rules` (extraction
included); the goal (issue 9) is 50,000 rows in under 30 s on 2 cores, negligible beside generation.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vigos.config import EvalConfig  # noqa: E402
from vigos.data.answers import answer_type  # noqa: E402
from vigos.evaluation.score import grade_rows  # noqa: E402

WORDS = ["cat", "dog", "red", "blue", "mouse", "mice", "three", "umbrella", "car", "tree", "left", "right"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def _question(rng: random.Random, q: int) -> tuple[str, str, list[str] | None, list[str]]:
    """(benchmark, reference, options, candidate answers) of one synthetic question."""
    kind = q % 8
    n = rng.randint(2, 999)
    if kind == 0:  # multiple choice with units
        opts = [f"{chr(65 + i)}. {n + 3 * i} m" for i in range(4)]
        return "mmmu", "B", opts, ["B", "(B)", f"{n + 3} m", f"{n + 3}", "C", "\\text{B}"]
    if kind == 1:  # CV-Bench
        opts = ["left", "right"]
        return "cv-bench", "(A) left", opts, ["A", "left", "(B) right", "Left.", "the left one"]
    if kind == 2:  # yes/no
        return "realworldqa", "Yes", ["A. Yes", "B. No"], ["Yes", "Yes, it is.", "No", "A"]
    if kind == 3:  # numeric
        return "mathvista", str(n), None, [str(n), f"{n} cm", f"{n}.0", f"{n + 1}", f"{n:.1e}", f"\\${n}"]
    if kind == 4:  # math expressions (math-verify)
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        return "mathverse", f"\\frac{{{a}}}{{{b}}}", None, [
            f"\\frac{{{a}}}{{{b}}}", f"\\dfrac{{{a}}}{{{b}}}", f"{a / b:.3f}", f"{a}/{b}", f"\\sqrt{{{a * a}}}/{b}",
            f"{a}x+{b}"]
    if kind == 5:  # MMMU list reference
        return "mmmu", f"['{n}/7', '{n / 7:.3f}']", None, [f"{n / 7:.3f}", f"{n}/7", f"{n}", "none of these"]
    if kind == 6:  # MM-Vet
        w1, w2 = rng.sample(WORDS, 2)
        return "mm-vet", f"{w1}<AND>{w2}", None, [f"{w1} and {w2}", w1, f"a {w1}, a {w2}", "I am not sure"]
    word = rng.choice(WORDS)  # ViLP
    return "vilp-f", word, None, [word, word.capitalize() + ".", rng.choice(NUMBER_WORDS), "co2", f"the {word}"]


def make_rows(n_rows: int, samples: int = 5, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    q = 0
    while len(rows) < n_rows:
        bench, ref, opts, answers = _question(rng, q)
        picks = rng.sample(answers, k=min(len(answers), rng.randint(1, 3)))  # samples repeat a few answers
        kind = "multiple_choice" if bench == "cv-bench" else answer_type(ref, opts)
        for s in range(samples):
            answer = rng.choice(picks)
            response = f"<description>x</description><think>y</think> \\boxed{{{answer}}}"
            rows.append({"benchmark": bench, "example_id": str(q), "sample_index": s, "response": response,
                         "reference": ref, "answer_type": kind, "options": opts})
        q += 1
    return rows[:n_rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args()
    rows = make_rows(args.rows)
    results: dict[str, Any] = {"rows": len(rows), "runs": []}
    correct_by: dict[int, list[bool]] = {}
    for p in args.processes:
        start = time.perf_counter()
        graded = grade_rows(rows, EvalConfig(grader="rules", grade_processes=p))
        seconds = time.perf_counter() - start
        correct_by[p] = [g["correct"] for g in graded]
        results["runs"].append({"processes": p, "seconds": seconds, "rows_per_s": len(rows) / seconds,
                                "correct_share": sum(correct_by[p]) / len(rows)})
    first = results["runs"][0]
    print(f"{len(rows):,} rows, rules only")
    for run in results["runs"]:
        print(f"  {run['processes']} process(es): {run['seconds']:6.2f} s  {run['rows_per_s']:9,.0f} rows/s  "
              f"({first['seconds'] / run['seconds']:.2f}x vs {first['processes']})  correct {run['correct_share']:.1%}")
    same = all(v == correct_by[args.processes[0]] for v in correct_by.values())
    print(f"  same grades in every run: {same}")
    results["same_grades"] = same
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
