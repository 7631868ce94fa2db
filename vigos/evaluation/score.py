"""Score saved responses: extract, grade (rules and/or judge), write grades/<benchmark>.jsonl and scores.json.

No model is needed: this runs on any `responses/` folder (or one JSONL), e.g. to re-grade with another grader.
Input rows need only `benchmark`, `example_id`, `sample_index`, `response`, `reference`, `answer_type`
(`options` and `meta` when known; `question` or `prompt` gives the judge the question text). `extracted` and
`correct` are always recomputed. Outputs are written atomically (temp file + rename), grades first.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vigos.data.answers import ANSWER_TYPES
from vigos.errors import VigosError
from vigos.evaluation.benchmarks import BENCHMARKS
from vigos.evaluation.extract import extract_answer
from vigos.evaluation.grade import RuleVerdict, grade_detail
from vigos.evaluation.judge import Judge, Verdict, write_json_atomic
from vigos.evaluation.metrics import compute_scores, incomplete_reason, score_rows
from vigos.volume import write_atomic

if TYPE_CHECKING:  # pragma: no cover
    from vigos.config import EvalConfig

log = logging.getLogger(__name__)

REQUIRED_FIELDS: tuple[str, ...] = ("benchmark", "example_id", "sample_index", "response", "reference", "answer_type")
APPROXIMATE = "rules (approximate)"
"""The grader label of a benchmark meant for the LLM judge (MM-Vet) that was graded by rules."""
INCOMPLETE = " (incomplete)"
"""Appended to the grader label of a benchmark where the judge left questions ungraded (they keep rule grades)."""
_MIN_PARALLEL_KEYS = 2000  # below this, starting worker processes costs more than grading in-process
_JUDGE_WORKERS = 8  # concurrent judge calls: the endpoint's latency, not our CPU, bounds throughput
_SAFE_NAME = re.compile(r"^[\w.+-]+$")  # a benchmark name becomes a file name under grades/
_FIX = "every response row needs " + ", ".join(REQUIRED_FIELDS) + "; regenerate it with `vigos eval run` or fix it"


def generation_settings(responses: Path | Sequence[Path]) -> dict[str, Any]:
    """The settings `vigos eval run` recorded beside a responses folder (sampling, prompt set, ...), or {}."""
    from vigos.evaluation.run import RUN_FILE

    if not isinstance(responses, str | os.PathLike) or not (Path(responses) / RUN_FILE).is_file():
        return {}
    try:
        data = json.loads((Path(responses) / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    settings = data.get("settings") if isinstance(data, dict) else None
    return settings if isinstance(settings, dict) else {}


def response_files(responses: Path | Sequence[Path]) -> list[Path]:
    """The JSONL files to score: a folder's `*.jsonl` (sorted), a single file, or a list of either."""
    items = [responses] if isinstance(responses, str | os.PathLike) else list(responses)
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(item.glob("*.jsonl"))
            if not found:
                raise VigosError(f"{item}: no *.jsonl response files in this folder (expected <benchmark>.jsonl)")
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise VigosError(f"{item}: no such responses file or folder")
    return files


def _check_row(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise VigosError(f"{where}: expected a JSON object per line, got {type(row).__name__}; {_FIX}")
    for name in REQUIRED_FIELDS:
        if name not in row:
            raise VigosError(f"{where}: missing field {name!r}; {_FIX}")
    if not isinstance(row["benchmark"], str) or not _SAFE_NAME.match(row["benchmark"]):
        raise VigosError(f"{where}: field 'benchmark' must be a name like 'mm-vet', got {row['benchmark']!r}")
    if not isinstance(row["sample_index"], int) or isinstance(row["sample_index"], bool):
        raise VigosError(f"{where}: field 'sample_index' must be an integer, got {row['sample_index']!r}")
    if row["response"] is not None and not isinstance(row["response"], str):
        raise VigosError(f"{where}: field 'response' must be a string, got {type(row['response']).__name__}")
    if row["reference"] is None:
        raise VigosError(f"{where}: field 'reference' is null; every scored question needs its reference answer")
    if row["answer_type"] not in ANSWER_TYPES:
        raise VigosError(f"{where}: field 'answer_type' is {row['answer_type']!r}; use one of {list(ANSWER_TYPES)}")
    if row.get("options") is not None and not isinstance(row["options"], list):
        raise VigosError(f"{where}: field 'options' must be a list or null, got {type(row['options']).__name__}")
    if row.get("meta") is not None and not isinstance(row["meta"], dict):
        raise VigosError(f"{where}: field 'meta' must be an object or null, got {type(row['meta']).__name__}")
    return row


def read_responses(files: Iterable[Path]) -> list[dict[str, Any]]:
    """Rows of the given JSONL files, validated; VigosError names the file, line and field of the first bad one."""
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[str, str, int], str] = {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise VigosError(f"{where}: not valid JSON ({e.msg}); {_FIX}") from None
                row = _check_row(row, where)
                key = (row["benchmark"], str(row["example_id"]), row["sample_index"])
                if key in seen:
                    raise VigosError(
                        f"{where}: duplicate sample (benchmark {key[0]!r}, example_id {row['example_id']!r}, "
                        f"sample_index {key[2]}) first seen at {seen[key]}; remove one of them"
                    )
                seen[key] = where
                rows.append(row)
    return rows


def _grade_keys(keys: Sequence[tuple[Any, ...]]) -> list[RuleVerdict]:
    """Rule verdicts of (extracted, reference, answer_type, options, benchmark) keys (a worker process's share)."""
    return [grade_detail(e, ref, kind, list(opts) if opts else None, bench) for e, ref, kind, opts, bench in keys]


def _rule_grades(rows: Sequence[Mapping[str, Any]], processes: int = 1) -> tuple[list[str | None], list[RuleVerdict]]:
    """Extracted answers and rule verdicts of `rows`; each distinct question/answer pair is graded once (samples
    often repeat an answer, and math-verify is slow), over `processes` worker processes when more than one."""
    extracted = [extract_answer(r["response"]) for r in rows]
    keys = [
        (e, str(r["reference"]), r["answer_type"], tuple(map(str, r["options"])) if r.get("options") else None,
         r["benchmark"])
        for r, e in zip(rows, extracted, strict=True)
    ]
    unique = list(dict.fromkeys(keys))
    if processes > 1 and len(unique) >= _MIN_PARALLEL_KEYS:
        import multiprocessing

        # Chunks several times the pool size: math-heavy keys cluster in some benchmarks, so even shares balance.
        n_chunks = processes * 8
        chunks = [unique[i::n_chunks] for i in range(n_chunks)]
        # spawn: a forked child of a process with threads (torch, the judge pool) can deadlock.
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            graded = list(pool.map(_grade_keys, chunks))
        verdicts = {k: v for chunk, vs in zip(chunks, graded, strict=True) for k, v in zip(chunk, vs, strict=True)}
    else:
        verdicts = dict(zip(unique, _grade_keys(unique), strict=True))
    return extracted, [verdicts[k] for k in keys]


def _question_text(row: Mapping[str, Any]) -> str:
    return str(row.get("question") or row.get("prompt") or "")


def judge_configured(cfg: EvalConfig) -> bool:
    return bool(cfg.judge_base_url and cfg.judge_model)


def benchmark_grader(benchmark: str, cfg: EvalConfig) -> str:
    """The grader that decides `benchmark`'s rows: `cfg.grader`, or with `auto` the benchmark's own default grader
    (`BenchmarkSpec.default_grader`), the judge only where one is configured."""
    if cfg.grader != "auto":
        return cfg.grader
    spec = BENCHMARKS.get(benchmark)
    return "judge" if spec is not None and spec.default_grader == "judge" and judge_configured(cfg) else "rules"


def grader_label(benchmark: str, grader: str, judge_failed: bool = False) -> str:
    """How a benchmark's numbers were graded, for scores.json and the report: a benchmark meant for the judge but
    graded by rules alone is marked approximate; one where the judge failed on some questions (`judge_failed`) is
    marked incomplete: its numbers are not the judge's."""
    spec = BENCHMARKS.get(benchmark)
    if grader == "rules" and spec is not None and spec.default_grader == "judge":
        return APPROXIMATE
    return grader + INCOMPLETE if judge_failed else grader


def grade_rows(rows: Sequence[Mapping[str, Any]], cfg: EvalConfig, judge: Judge | None = None) -> list[dict[str, Any]]:
    """Rows + `extracted`, `correct`, `rule` (the rule that decided the rule grade), `grader` (the grader that
    decided the row), in input order.

    Each benchmark is graded by `benchmark_grader`: `rules` alone; `judge` asks the judge about every extracted
    answer; `rules+judge` asks only about the answers the rules call incorrect. With a judge, rows also get
    `rules_correct`, and `judge_failed: true` when their question's judge call finally failed: those rows keep the
    rule grade (and `grader: "rules"`).
    """
    extracted, verdicts = _rule_grades(rows, cfg.grade_processes)
    out = [
        {**r, "extracted": e, "correct": v.correct, "rule": v.rule, "grader": "rules"}
        for r, e, v in zip(rows, extracted, verdicts, strict=True)
    ]
    graders = {b: benchmark_grader(b, cfg) for b in {r["benchmark"] for r in rows}}
    if all(g == "rules" for g in graders.values()):
        return out
    if judge is None:
        raise ValueError(f"grader {cfg.grader!r} needs a Judge")

    questions: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        if graders[r["benchmark"]] != "rules":
            out[i]["rules_correct"] = verdicts[i].correct
            questions[(r["benchmark"], str(r["example_id"]))].append(i)
    asks: list[list[int]] = []
    for (bench, _), idxs in questions.items():
        idxs = sorted(idxs, key=lambda i: rows[i]["sample_index"])
        everything = graders[bench] == "judge"
        ask = [i for i in idxs if extracted[i] is not None and (everything or not verdicts[i].correct)]
        if ask:  # no extracted answer to ask about: the rule grade ("no answer = incorrect") stands
            asks.append(ask)

    def call(ask: list[int]) -> list[Verdict] | None:
        first = rows[ask[0]]
        return judge.verdicts(_question_text(first), [extracted[i] for i in ask], str(first["reference"]))

    with ThreadPoolExecutor(max_workers=_JUDGE_WORKERS) as pool:
        try:
            results = list(pool.map(call, asks))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # a VigosError (bad key): stop asking at once
            raise
    for ask, judged in zip(asks, results, strict=True):
        if judged is None:
            for i in ask:
                out[i]["judge_failed"] = True
            continue
        for i, v in zip(ask, judged, strict=True):
            out[i]["correct"] = v
            out[i]["grader"] = "judge"
    return out


def ensure_complete(scores: Mapping[str, Any], where: Path | str) -> None:
    """VigosError when `scores` (written to `where`) are incomplete: the command must not look like a success."""
    reason = incomplete_reason(scores)
    if reason:
        raise VigosError(
            f"{where} is marked incomplete: {reason}; the registry gate refuses such scores. Check that the judge "
            "(eval.judge_base_url) answers, then run the scoring again: questions already graded come from the "
            "judge cache, only the others are asked"
        )


def write_jsonl_atomic(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def score_responses(
    responses: Path | Sequence[Path],
    cfg: EvalConfig,
    grades_dir: Path | None = None,
    output: Path | None = None,
    *,
    judge: Judge | None = None,
    judge_cache: Path | None = None,
) -> dict[str, Any]:
    """Grade the responses and return the Scores JSON; write grades/<benchmark>.jsonl and `output` when given.

    A judge is built from `cfg` (caching replies under `judge_cache`) when a benchmark's grader needs one and none
    is passed; it is built before any grading so a missing URL or key fails at once.
    """
    rows = read_responses(response_files(responses))
    if not rows:
        raise VigosError(f"{responses}: no response rows to score")
    graders = {b: benchmark_grader(b, cfg) for b in {r["benchmark"] for r in rows}}
    if judge is None and any(g != "rules" for g in graders.values()):
        judge = Judge(cfg, judge_cache)  # before any grading: a missing URL or key fails at once
    graded = grade_rows(rows, cfg, judge)
    ungraded = {r["benchmark"] for r in graded if r.get("judge_failed")}
    scores = compute_scores(graded, {b: grader_label(b, g, b in ungraded) for b, g in graders.items()})
    scores["grader"] = cfg.grader
    prompt = generation_settings(responses).get("student_prompt")
    if prompt:
        scores["student_prompt"] = prompt  # which prompt set produced these responses (the report names it)
    if judge is not None:
        scores["judge"] = {
            "model": judge.model,
            "http_calls": judge.http_calls,
            "cache_hits": judge.cache_hits,
            "failed_questions": judge.failures,
            "breaker_open": judge.breaker_open,
        }
        if judge.failures:
            per = ", ".join(f"{name} {row['ungraded_by_judge']}" for name, row in score_rows(scores)
                            if row.get("ungraded_by_judge"))
            why = ", the judge's circuit breaker open" if judge.breaker_open else ""
            scores["incomplete"] = (f"{judge.failures} question(s) not graded by the judge ({per}{why}); "
                                    "they keep their rule grades")
    if grades_dir is not None:
        by_bench: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in graded:
            by_bench[r["benchmark"]].append(r)
        for bench, brows in by_bench.items():
            write_jsonl_atomic(Path(grades_dir) / f"{bench}.jsonl", brows)
    if output is not None:
        write_json_atomic(Path(output), scores)
    return scores
