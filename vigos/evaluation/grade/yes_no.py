"""Yes / no answers: the first word decides ("Yes, it is." is yes). Pure, no I/O."""

from __future__ import annotations

from vigos.evaluation.grade.text import EDGE_PUNCT, norm_text
from vigos.evaluation.grade.verdict import RuleVerdict

_YES = {"yes", "true", "y", "correct"}
_NO = {"no", "false", "n", "incorrect"}


def yes_or_no(s: str) -> str | None:
    """"yes" / "no" when the answer starts with one (or a synonym), else None."""
    words = norm_text(s).replace(",", " ").split()
    if not words:
        return None
    first = words[0].strip(EDGE_PUNCT)
    return "yes" if first in _YES else "no" if first in _NO else None


def grade_yes_no(extracted: str, reference: str) -> RuleVerdict:
    got, ref = yes_or_no(extracted), yes_or_no(reference)
    if ref is None:  # a mislabelled reference: grade it as free text
        from vigos.evaluation.grade.free_form import grade_free_form

        return grade_free_form(extracted, reference)
    return RuleVerdict(got == ref, "yes_no.first_word")
