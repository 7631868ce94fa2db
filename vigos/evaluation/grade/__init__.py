"""Rule grader: is an extracted answer equal to the reference? One module per answer type. Pure, no I/O.

    grade(extracted, reference, answer_type, options=None, benchmark=None) -> bool
    grade_detail(...) -> RuleVerdict(correct, rule)      # `rule` names the step that decided, for tracing

Modules: `choice` (multiple choice), `yes_no`, `numbers` (numeric), `expressions` (math), `free_form`;
`references` (references that accept several answers: MMMU list literals, MM-Vet `<OR>` / `<AND>`), `vilp`
(ViLP's own one-word normalisation), `text` (the clean-up they share).

Always available and free, so every run has a grade even without a judge (docs/evaluation.md, "Rule grading"). Each rule
accepts only sound equivalences (a letter and its option text, 0.5 and 1/2, "12 cm" and 12): a false "correct"
inflates Pass@k far more than a false "incorrect" (Pass@k takes the best of k samples).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from vigos.evaluation.grade.choice import grade_choice
from vigos.evaluation.grade.expressions import grade_math
from vigos.evaluation.grade.free_form import grade_free_form
from vigos.evaluation.grade.numbers import grade_numeric, numbers_match, parse_number
from vigos.evaluation.grade.references import alternatives, answer_parts
from vigos.evaluation.grade.text import norm_text
from vigos.evaluation.grade.verdict import RuleVerdict
from vigos.evaluation.grade.yes_no import grade_yes_no
from vigos.evaluation.metrics import is_vilp

__all__ = ["RuleVerdict", "grade", "grade_detail", "numbers_match", "parse_number"]

_RULES: dict[str, Callable[[str, str, Sequence[Any] | None], RuleVerdict]] = {
    "multiple_choice": grade_choice,
    "yes_no": lambda e, r, _o: grade_yes_no(e, r),
    "numeric": lambda e, r, _o: grade_numeric(e, r),
    "math": lambda e, r, _o: grade_math(e, r),
    "free_form": lambda e, r, _o: grade_free_form(e, r),
}


def _single(extracted: str, reference: str, kind: str, options: Sequence[Any] | None,
            benchmark: str | None) -> RuleVerdict:
    verdict = _RULES[kind](extracted, reference, options)
    if not verdict.correct and benchmark is not None and is_vilp(str(benchmark)):
        from vigos.evaluation.grade.vilp import normalize

        got, ref = normalize(norm_text(extracted)), normalize(norm_text(reference))
        if got and got == ref:
            return RuleVerdict(True, "vilp.normalised")
    return verdict


def _kind_of(part: str, kind: str, options: Sequence[Any] | None) -> str:
    """The answer type of one accepted answer: a choice stays a choice; otherwise classified on its own (the row's
    type was classified on the whole list, e.g. `['24/7', '3.429']`)."""
    from vigos.data.answers import answer_type

    return kind if kind == "multiple_choice" else answer_type(part, options)


def _contains(answer: str, part: str) -> bool:
    needle = norm_text(part)
    return bool(needle) and re.search(rf"(?<![\w]){re.escape(needle)}(?![\w])", norm_text(answer)) is not None


def _all_parts(extracted: str, parts: list[str], kind: str, options: Sequence[Any] | None,
               benchmark: str | None) -> bool:
    """Every part is stated by the answer: one of the items it lists grades equal to it, or it appears as words."""
    pieces = answer_parts(extracted)
    return all(
        _contains(extracted, part)
        or any(_single(p, part, _kind_of(part, kind, options), options, benchmark).correct for p in pieces)
        for part in parts
    )


def grade_detail(extracted: str | None, reference: Any, answer_type: str, options: Sequence[Any] | None = None,
                 benchmark: str | None = None) -> RuleVerdict:
    """The grade of `extracted` against `reference` and the rule that decided it; no answer (None) is incorrect.

    `answer_type` is one of `vigos.data.answers.ANSWER_TYPES` (ValueError otherwise). `options` (letter order) lets
    a multiple-choice answer be the option's content instead of its letter. `benchmark` turns on a benchmark's own
    normalisation where it has one (ViLP).
    """
    if answer_type not in _RULES:
        raise ValueError(f"unknown answer_type {answer_type!r}; expected one of {sorted(_RULES)}")
    if extracted is None:
        return RuleVerdict(False, "no_answer")
    extracted, reference = str(extracted), str(reference)
    alts = alternatives(reference)
    if alts is None:
        return _single(extracted, reference, answer_type, options, benchmark)
    for parts in alts:
        if len(parts) == 1:
            verdict = _single(extracted, parts[0], _kind_of(parts[0], answer_type, options), options, benchmark)
            if verdict.correct:
                return RuleVerdict(True, f"reference.any_of+{verdict.rule}")
        elif _all_parts(extracted, parts, answer_type, options, benchmark):
            return RuleVerdict(True, "reference.all_of")
    return RuleVerdict(False, "reference.none_of")


def grade(extracted: str | None, reference: Any, answer_type: str, options: Sequence[Any] | None = None,
          benchmark: str | None = None) -> bool:
    """True when `extracted` answers `reference` (see `grade_detail`)."""
    return grade_detail(extracted, reference, answer_type, options, benchmark).correct
