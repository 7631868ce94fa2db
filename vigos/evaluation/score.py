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
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vigos.data.answers import ANSWER_TYPES
from vigos.errors import VigosError
from vigos.evaluation.extract import extract_answer
from vigos.evaluation.grade import grade
from vigos.evaluation.judge import Judge, Verdict, write_json_atomic
from vigos.evaluation.metrics import compute_scores

if TYPE_CHECKING:  # pragma: no cover
    from vigos.config import EvalConfig

log = logging.getLogger(__name__)

REQUIRED_FIELDS: tuple[str, ...] = ("benchmark", "example_id", "sample_index", "response", "reference", "answer_type")
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


def _rule_grades(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str | None], list[bool]]:
    extracted = [extract_answer(r["response"]) for r in rows]
    memo: dict[tuple[Any, ...], bool] = {}  # samples often repeat the same answer; math-verify is slow
    correct = []
    for r, e in zip(rows, extracted, strict=True):
        opts = r.get("options")
        key = (e, str(r["reference"]), r["answer_type"], tuple(map(str, opts)) if opts else None)
        if key not in memo:
            memo[key] = grade(e, r["reference"], r["answer_type"], opts)
        correct.append(memo[key])
    return extracted, correct


def _question_text(row: Mapping[str, Any]) -> str:
    return str(row.get("question") or row.get("prompt") or "")


def grade_rows(rows: Sequence[Mapping[str, Any]], cfg: EvalConfig, judge: Judge | None = None) -> list[dict[str, Any]]:
    """Rows + `extracted`, `correct`, `grader` (the grader that decided the row), in input order.

    `cfg.grader`: `rules` alone; `judge` asks the judge about every extracted answer; `rules+judge` asks only about
    the answers the rules call incorrect. With a judge, rows also get `rules_correct`, and `judge_failed: true` when
    their question's judge call finally failed: those rows keep the rule grade (and `grader: "rules"`).
    """
    extracted, rule_correct = _rule_grades(rows)
    out = [
        {**r, "extracted": e, "correct": c, "grader": "rules"}
        for r, e, c in zip(rows, extracted, rule_correct, strict=True)
    ]
    if cfg.grader == "rules":
        return out
    if judge is None:
        raise ValueError(f"grader {cfg.grader!r} needs a Judge")
    for row, c in zip(out, rule_correct, strict=True):
        row["rules_correct"] = c

    questions: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        questions[(r["benchmark"], str(r["example_id"]))].append(i)
    asks: list[list[int]] = []
    for idxs in questions.values():
        idxs = sorted(idxs, key=lambda i: rows[i]["sample_index"])
        ask = [i for i in idxs if extracted[i] is not None and (cfg.grader == "judge" or not rule_correct[i])]
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
    for ask, verdicts in zip(asks, results, strict=True):
        if verdicts is None:
            for i in ask:
                out[i]["judge_failed"] = True
            continue
        for i, v in zip(ask, verdicts, strict=True):
            out[i]["correct"] = v
            out[i]["grader"] = "judge"
    return out


def write_jsonl_atomic(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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

    A judge is built from `cfg` (caching replies under `judge_cache`) when `cfg.grader` needs one and none is
    passed; it is built before any grading so a missing URL or key fails at once.
    """
    if cfg.grader != "rules" and judge is None:
        judge = Judge(cfg, judge_cache)
    rows = read_responses(response_files(responses))
    if not rows:
        raise VigosError(f"{responses}: no response rows to score")
    graded = grade_rows(rows, cfg, judge)
    scores = compute_scores(graded, cfg.grader)
    prompt = generation_settings(responses).get("student_prompt")
    if prompt:
        scores["student_prompt"] = prompt  # which prompt set produced these responses (the report names it)
    if judge is not None:
        scores["judge"] = {
            "model": judge.model,
            "http_calls": judge.http_calls,
            "cache_hits": judge.cache_hits,
            "failed_questions": judge.failures,
        }
    if grades_dir is not None:
        by_bench: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in graded:
            by_bench[r["benchmark"]].append(r)
        for bench, brows in by_bench.items():
            write_jsonl_atomic(Path(grades_dir) / f"{bench}.jsonl", brows)
    if output is not None:
        write_json_atomic(Path(output), scores)
    return scores
