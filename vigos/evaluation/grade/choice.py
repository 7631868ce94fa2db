"""Multiple choice: an answer names an option by its letter, or by its content in any notation. Pure, no I/O.

An answer without a letter is matched to an option by the first of these steps that singles out exactly ONE
option (two options that match the same way cannot tell a letter apart, so the step is skipped):

1. `text`: the same text after clean-up (case, spaces, `$`, `\\text{}`, edge punctuation, a leading article);
2. `compact`: the same without any spaces (`\\dfrac{1}{2}` for `\\frac {1}{2}`);
3. `value`: the same number, units and notation aside (`15` for `15 m`, `55^\\circ` for `55°`, `0.5` for `1/2`);
4. `yes_no`: a Yes/No option answered by a sentence that starts with it ("Yes, the cup is on the left.");
5. `wording`: the same meaning-bearing words, relation synonyms folded (`the same` / `equal` for `equal to`).

When the options are unknown, the reference's own text ("(B) right", CV-Bench) is the one candidate.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from vigos.evaluation.grade.numbers import numbers_match
from vigos.evaluation.grade.text import compact, content_words, norm_text, unwrap
from vigos.evaluation.grade.verdict import RuleVerdict
from vigos.evaluation.grade.yes_no import yes_or_no

LETTERS = "ABCDEFGHIJ"  # up to 10 options (MMMU-Pro)

_LEAD_IN = re.compile(r"^(?:the\s+)?(?:correct\s+|final\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:：]?\s*", re.I)
_BARE_LETTER = re.compile(r"^\(?([A-Ja-j])\)?[.:)]?$")
# A letter followed by its option text: "(B) a cat", "B. a cat", "B) a cat", "B: a cat". Upper case only, so the
# article in "a cat" is never read as option A.
_LETTER_WITH_TEXT = re.compile(r"^(?:\(([A-J])\)|([A-J])[.:)])\s*(.+)$", re.S)
_OPTION_PREFIX = re.compile(r"^\(?[A-J]\s*[).:]\s*")

_YES_NO_OPTION = frozenset({"yes", "no", "true", "false"})
_STEPS: tuple[tuple[str, Callable[[str, str], bool]], ...] = (
    ("text", lambda answer, option: norm_text(answer) == norm_text(option)),
    ("compact", lambda answer, option: compact(answer) == compact(option)),
    ("value", lambda answer, option: bool(numbers_match(answer, option))),
    ("yes_no", lambda answer, option: norm_text(option) in _YES_NO_OPTION and yes_or_no(answer) == yes_or_no(option)),
    ("wording", lambda answer, option: bool(content_words(answer)) and content_words(answer) == content_words(option)),
)


def option_text(option: Any) -> str:
    """An option's text without its own "A." / "(B)" prefix."""
    return _OPTION_PREFIX.sub("", str(option).strip())


def match_option(answer: str, options: Sequence[str]) -> tuple[int, str] | None:
    """(index, step) of the one option `answer` states by content, or None (see the module docstring)."""
    if not norm_text(answer):
        return None
    for step, same in _STEPS:
        hits = [i for i, option in enumerate(options) if norm_text(option) and same(answer, option)]
        if len(hits) == 1:
            return hits[0], step
    return None


def _letter_and_text(s: str) -> tuple[str | None, str]:
    """(option letter the answer or reference states, or None; its remaining text)."""
    s = _LEAD_IN.sub("", unwrap(s)).strip()
    m = _BARE_LETTER.match(s)
    if m:
        return m.group(1).upper(), ""
    m = _LETTER_WITH_TEXT.match(s)
    if m:
        return (m.group(1) or m.group(2)), m.group(3)
    return None, s


def grade_choice(extracted: str, reference: str, options: Sequence[Any] | None) -> RuleVerdict:
    texts = [option_text(o) for o in options or []]
    ref_letter, ref_text = _letter_and_text(reference)
    if ref_letter is None and texts:  # a reference given as an option's text
        found = match_option(ref_text, texts)
        ref_letter = LETTERS[found[0]] if found else None
    got_letter, got_text = _letter_and_text(extracted)
    if got_letter is not None:
        if ref_letter is not None:
            return RuleVerdict(got_letter == ref_letter, "choice.letter")
        # The reference is text only: compare the chosen option's text (or the text the answer gave with it).
        index = LETTERS.index(got_letter)
        got_text = got_text or (texts[index] if index < len(texts) else "")
    if ref_letter is not None and texts:
        found = match_option(got_text, texts)
        if found is None:
            return RuleVerdict(False, "choice.no_option")
        return RuleVerdict(LETTERS[found[0]] == ref_letter, f"choice.{found[1]}")
    # Options unknown: the reference's own text ("(B) right") is the one candidate.
    if ref_text and got_text:
        found = match_option(got_text, [ref_text])
        if found is not None:
            return RuleVerdict(True, f"choice.{found[1]}")
    return RuleVerdict(False, "choice.no_option")
