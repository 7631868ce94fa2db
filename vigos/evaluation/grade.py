"""Rule grader: is an extracted answer equal to the reference? One rule per `answer_type`. Pure, no I/O.

Always available and free, so every run has a grade even without a judge (EVALUATION.md, "Grading"). Each rule
accepts only sound equivalences (a letter and its option text, 0.5 and 1/2, "12 cm" and 12): a false "correct"
inflates Pass@k far more than a false "incorrect" (Pass@k takes the best of k samples).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

_LETTERS = "ABCDEFGHIJ"  # up to 10 options (MMMU-Pro)

# ---- LaTeX / text clean-up -------------------------------------------------------------------------------------

# Macros whose argument is the text itself: \text{B} -> B, \mathrm{cm} -> cm.
_TEXT_MACRO = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mathit|operatorname|mbox|textrm)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\[,;:! ]|~|\\quad|\\qquad|\\left|\\right")


def _unwrap(s: str) -> str:
    """Drop `$` delimiters, spacing macros and text macros (keeping their content), then strip."""
    s = s.replace("$", " ")
    s = _SPACING.sub(" ", s)
    prev = None
    while prev != s:  # nested: \textbf{\text{B}}
        prev = s
        s = _TEXT_MACRO.sub(r"\1", s)
    return " ".join(s.split())


_EDGE_PUNCT = " .,;:!?\"'`“”‘’"
_ARTICLE = re.compile(r"^(?:the|a|an)\s+")


def _norm_text(s: str) -> str:
    """Case-, space- and edge-punctuation-insensitive form of a free-form answer; leading articles dropped."""
    s = _unwrap(s).lower().strip(_EDGE_PUNCT)
    return _ARTICLE.sub("", s).strip(_EDGE_PUNCT)


# ---- multiple choice -------------------------------------------------------------------------------------------

_LEAD_IN = re.compile(r"^(?:the\s+)?(?:correct\s+|final\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:：]?\s*", re.I)
_BARE_LETTER = re.compile(r"^\(?([A-Ja-j])\)?[.:)]?$")
# A letter followed by its option text: "(B) a cat", "B. a cat", "B) a cat", "B: a cat". Upper case only, so the
# article in "a cat" is never read as option A.
_LETTER_WITH_TEXT = re.compile(r"^(?:\(([A-J])\)|([A-J])[.:)])\s*(.+)$", re.S)
_OPTION_PREFIX = re.compile(r"^\(?[A-J]\s*[).:]\s*")


def _option_texts(options: Sequence[Any] | None) -> list[str]:
    """Normalised option texts in letter order, their own "A." / "(B)" prefixes removed."""
    return [_norm_text(_OPTION_PREFIX.sub("", str(o).strip())) for o in options or []]


def _letter_and_text(s: str, options: Sequence[Any] | None) -> tuple[str | None, str]:
    """(option letter or None, normalised answer text) of an answer or a reference."""
    s = _LEAD_IN.sub("", _unwrap(s)).strip()
    m = _BARE_LETTER.match(s)
    if m:
        letter = m.group(1).upper()
        texts = _option_texts(options)
        idx = _LETTERS.index(letter)
        return letter, texts[idx] if idx < len(texts) else ""
    m = _LETTER_WITH_TEXT.match(s)
    if m:
        return (m.group(1) or m.group(2)), _norm_text(m.group(3))
    text = _norm_text(s)
    matches = [i for i, t in enumerate(_option_texts(options)) if t and t == text]
    # Two options with the same text cannot tell a letter apart: leave it to text comparison.
    return (_LETTERS[matches[0]] if len(matches) == 1 else None), text


def _grade_choice(extracted: str, reference: str, options: Sequence[Any] | None) -> bool:
    got_letter, got_text = _letter_and_text(extracted, options)
    ref_letter, ref_text = _letter_and_text(reference, options)
    if got_letter and ref_letter:
        return got_letter == ref_letter
    # No letter on one side (options unknown): compare the option texts, e.g. "cat" vs reference "(B) cat".
    return bool(got_text) and got_text == ref_text


# ---- yes / no --------------------------------------------------------------------------------------------------

_YES = {"yes", "true", "y", "correct"}
_NO = {"no", "false", "n", "incorrect"}


def _yes_no(s: str) -> str | None:
    words = _norm_text(s).replace(",", " ").split()
    if not words:
        return None
    first = words[0].strip(_EDGE_PUNCT)  # "Yes, it is." -> yes
    return "yes" if first in _YES else "no" if first in _NO else None


def _grade_yes_no(extracted: str, reference: str) -> bool:
    got, ref = _yes_no(extracted), _yes_no(reference)
    if ref is None:  # a mislabelled reference: grade it as free text
        return _grade_free_form(extracted, reference)
    return got == ref


# ---- numbers ---------------------------------------------------------------------------------------------------

_NUM = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+"
# A unit: words, optionally with powers (cm^2, m/s^2, km/h, square meters). No free digits, so "3 apples and 4"
# is not read as 3.
_UNIT = r"(?:[a-zA-Z°µ²³]+(?:\^\{?-?\d+\}?)?(?:\s*[/*.·]\s*|\s+)?)+"
_NUMBER_ANSWER = re.compile(rf"^(?P<num>{_NUM})(?:\s*/\s*(?P<den>{_NUM}))?\s*(?P<pct>%)?\s*(?:{_UNIT})?\.?$")
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}")
_DEGREE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\circ|\\degree")
_LEADING = re.compile(r"^(?:approximately|approx\.?|about|around|≈|~|\\approx|[a-zA-Z]\s*=)\s*", re.I)
_CURRENCY = re.compile(r"^(?:\\\$|\$|€|£|¥|usd\s*)", re.I)


def parse_number(s: str) -> tuple[float, int | None, bool] | None:
    """(value, decimals shown or None for a fraction, had a percent sign) of a numeric answer, else None.

    Accepts thousands separators, a trailing unit or %, degrees, currency, `\\frac{a}{b}` and `a/b`.
    """
    s = s.replace("\\%", "%").replace("−", "-").replace("\\$", "$ ").strip()
    s = _DEGREE.sub("", s)
    s = _FRAC.sub(r"\1/\2", s)
    s = _CURRENCY.sub("", s.strip())
    s = _unwrap(s)
    s = _CURRENCY.sub("", _LEADING.sub("", s)).strip()
    m = _NUMBER_ANSWER.match(s)
    if not m:
        return None
    try:
        value = float(m.group("num").replace(",", ""))
        den = m.group("den")
        if den is not None:
            d = float(den.replace(",", ""))
            if d == 0:
                return None
            return value / d, None, bool(m.group("pct"))
    except ValueError:
        return None
    num = m.group("num")
    decimals = len(num.split(".")[1]) if "." in num else 0
    return value, decimals, bool(m.group("pct"))


def _close(got: float, got_dec: int | None, ref: float, ref_dec: int | None) -> bool:
    """Equal, or equal up to the rounding that one side's shown decimals imply (None: a fraction, exact).

    A more precise answer matches a rounded reference (3.14159 vs 3.14; 1/3 vs 0.33), and a decimal answer with
    two or more places matches an exact fraction (0.33 vs 1/3). A coarser answer never matches a decimal
    reference (0.3 vs 0.33: the question asked for that precision), nor an integer a decimal (2 vs 2.4).
    """
    if math.isclose(got, ref, rel_tol=1e-6, abs_tol=1e-9):
        return True
    if ref_dec is not None and ref_dec >= 1 and (got_dec is None or got_dec > ref_dec):
        return abs(got - ref) <= 0.5 * 10.0**-ref_dec + 1e-12
    if ref_dec is None and got_dec is not None and got_dec >= 2:
        return abs(got - ref) <= 0.5 * 10.0**-got_dec + 1e-12
    return False


def numbers_match(extracted: str, reference: str) -> bool | None:
    """Numeric equality with tolerance; None when either side is not a number."""
    got, ref = parse_number(extracted), parse_number(reference)
    if got is None or ref is None:
        return None
    (g, gd, gp), (r, rd, rp) = got, ref
    if _close(g, gd, r, rd):
        return True
    # "25%" vs "0.25": the percent sign may be on one side only.
    if gp != rp:
        g2, r2 = (g / 100, r) if gp else (g, r / 100)
        return math.isclose(g2, r2, rel_tol=1e-6, abs_tol=1e-9)
    return False


def _grade_numeric(extracted: str, reference: str) -> bool:
    match = numbers_match(extracted, reference)
    if match is not None:
        return match
    # Not a plain number on one side ("2\sqrt{2}", "1.2 \times 10^{3}"): let the math rule decide.
    return _grade_math(extracted, reference)


# ---- math expressions ------------------------------------------------------------------------------------------

_MV_MAX_CHARS = 400  # longer "answers" are prose or runaway output; sympy on them can take minutes


def _mv_timeout() -> int | None:
    # math-verify times out with signal.alarm, which only works in the main thread: elsewhere (judge/grading
    # pools) it must run without a timeout or it raises (STACK-NOTES.md).
    return 5 if threading.current_thread() is threading.main_thread() else None


def _math_verify(extracted: str, reference: str) -> bool:
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


def _grade_math(extracted: str, reference: str) -> bool:
    return (
        _norm_text(extracted) == _norm_text(reference)
        or bool(numbers_match(extracted, reference))
        or _math_verify(extracted, reference)
    )


# ---- free form -------------------------------------------------------------------------------------------------


def _grade_free_form(extracted: str, reference: str) -> bool:
    got, ref = _norm_text(extracted), _norm_text(reference)
    return (bool(got) and got == ref) or bool(numbers_match(extracted, reference))


# ---- entry point -----------------------------------------------------------------------------------------------

_RULES: dict[str, Callable[[str, str, Sequence[Any] | None], bool]] = {
    "multiple_choice": _grade_choice,
    "yes_no": lambda e, r, _o: _grade_yes_no(e, r),
    "numeric": lambda e, r, _o: _grade_numeric(e, r),
    "math": lambda e, r, _o: _grade_math(e, r),
    "free_form": lambda e, r, _o: _grade_free_form(e, r),
}


def grade(extracted: str | None, reference: Any, answer_type: str, options: Sequence[Any] | None = None) -> bool:
    """True when `extracted` answers `reference` under the rule for `answer_type`; no answer (None) is incorrect.

    `answer_type` is one of `vigos.data.answers.ANSWER_TYPES` (ValueError otherwise). `options` (letter order) lets
    a multiple-choice answer be the option's text instead of its letter.
    """
    try:
        rule = _RULES[answer_type]
    except KeyError:
        raise ValueError(f"unknown answer_type {answer_type!r}; expected one of {sorted(_RULES)}") from None
    if extracted is None:
        return False
    return rule(str(extracted), str(reference), options)
