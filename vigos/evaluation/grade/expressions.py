"""Math expressions: text equality, then numbers, then math-verify (sympy) equivalence. Pure, no I/O."""

from __future__ import annotations

import threading

from vigos.evaluation.grade.text import compact
from vigos.evaluation.grade.verdict import RuleVerdict

_MV_MAX_CHARS = 400  # longer "answers" are prose or runaway output; sympy on them can take minutes


def _mv_timeout() -> int | None:
    # math-verify times out with signal.alarm, which only works in the main thread: elsewhere (judge/grading
    # pools) it must run without a timeout or it raises (measured with math-verify 0.9).
    return 5 if threading.current_thread() is threading.main_thread() else None


def math_verify(extracted: str, reference: str) -> bool:
    if len(extracted) > _MV_MAX_CHARS or len(reference) > _MV_MAX_CHARS:
        return False
    from math_verify import parse, verify  # heavy (sympy): loaded on first use only

    timeout = _mv_timeout()

    def wrap(s: str) -> str:
        return s if "$" in s else f"${s}$"

    try:
        gold = parse(wrap(reference), parsing_timeout=timeout)
        pred = parse(wrap(extracted), parsing_timeout=timeout)
        return bool(gold and pred and verify(gold, pred, timeout_seconds=timeout))
    except Exception:  # math-verify raises on odd input and on timeouts: the other rules still apply
        return False


def grade_math(extracted: str, reference: str) -> RuleVerdict:
    from vigos.evaluation.grade.numbers import numbers_match

    if compact(extracted) == compact(reference):
        return RuleVerdict(True, "math.text")
    if numbers_match(extracted, reference):
        return RuleVerdict(True, "math.number")
    return RuleVerdict(math_verify(extracted, reference), "math.verify")
