"""Free-form short answers: the same words after clean-up, or the same number. Pure, no I/O.

Deliberately strict: an open-ended answer ("a red umbrella on the left") cannot be judged by rules; benchmarks
of that kind (MM-Vet) default to the LLM judge and are marked "rules (approximate)" without one.
"""

from __future__ import annotations

from vigos.evaluation.grade.numbers import numbers_match
from vigos.evaluation.grade.text import norm_text
from vigos.evaluation.grade.verdict import RuleVerdict


def grade_free_form(extracted: str, reference: str) -> RuleVerdict:
    got, ref = norm_text(extracted), norm_text(reference)
    if got and got == ref:
        return RuleVerdict(True, "free_form.text")
    if numbers_match(extracted, reference):
        return RuleVerdict(True, "free_form.number")
    return RuleVerdict(False, "free_form.no_match")
