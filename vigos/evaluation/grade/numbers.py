"""Numbers: parse an answer as a number (units, %, degrees, currency, fractions, e-notation, counting words) and
compare two with the tolerance their written precision implies. Pure, no I/O."""

from __future__ import annotations

import math
import re
from typing import NamedTuple

from vigos.evaluation.grade.text import NUMBER_WORDS, unwrap
from vigos.evaluation.grade.verdict import RuleVerdict

_MANTISSA = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_NUM = rf"[-+]?(?:{_MANTISSA})(?:[eE][-+]?\d+)?"
# A unit: words, optionally with powers (cm^2, m/s^2, km/h, square meters). No free digits, so "3 apples and 4"
# is not read as 3.
_UNIT = r"(?:[a-zA-Z°µ²³]+(?:\^\{?-?\d+\}?)?(?:\s*[/*.·]\s*|\s+)?)+"
_NUMBER_ANSWER = re.compile(rf"^(?P<num>{_NUM})(?:\s*/\s*(?P<den>{_NUM}))?\s*(?P<pct>%)?\s*(?:{_UNIT})?\.?$")
_FRAC = re.compile(r"\\frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}")
_DEGREE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\circ|\\degree")
_LEADING = re.compile(r"^(?:approximately|approx\.?|about|around|≈|~|\\approx|[a-zA-Z]\s*=)\s*", re.I)
_CURRENCY = re.compile(r"^(?:\\\$|\$|€|£|¥|usd\s*)", re.I)
# "7.243 \times 10^{6}", "7.243×10^6", "7.243 * 10^6" -> "7.243e6" (then parsed like any e-notation).
_TIMES_TEN = re.compile(r"\s*(?:\\times|\\cdot|×|·|\*|x)\s*10\s*\^\s*\{?\s*([-+]?\d+)\s*\}?")
_FIRST_WORD = re.compile(r"^([a-zA-Z]+)\b")
_PERCENT_WORD = re.compile(r"\s*\b(?:percent|per\s+cent|pct)\b\.?", re.I)


class Number(NamedTuple):
    value: float
    decimals: int | None
    """Decimal places the answer shows (e-notation: mantissa places minus exponent); None for a fraction (exact)."""
    percent: bool
    digits: int | None
    """Significant digits shown (None for a fraction): `0.02` shows one, `0.33` two."""


def _counting_word(s: str) -> str:
    m = _FIRST_WORD.match(s)
    word = m.group(1).lower() if m else ""
    return str(NUMBER_WORDS[word]) + s[m.end():] if m and word in NUMBER_WORDS else s


def _shown(num: str) -> tuple[int, int]:
    """(decimal places, significant digits) a written number shows."""
    mantissa, _, exp = num.lower().replace(",", "").lstrip("+-").partition("e")
    places = len(mantissa.split(".")[1]) if "." in mantissa else 0
    digits = len(mantissa.replace(".", "").lstrip("0")) or 1
    return places - (int(exp) if exp else 0), digits


def parse_number(s: str) -> Number | None:
    """The number an answer states, or None when it is not (only) a number.

    Accepts thousands separators, a trailing unit or %, degrees, currency, `\\frac{a}{b}`, `a/b`, e-notation and
    `a \\times 10^{k}`, and the counting words zero to twenty ("three apples").
    """
    s = s.replace("\\%", "%").replace("−", "-").replace("\\$", "$ ").strip()
    s = _PERCENT_WORD.sub("%", s)  # "25 percent" is "25%", so it can meet a reference of 0.25
    s = _DEGREE.sub("", s)
    s = unwrap(s)  # also \dfrac -> \frac
    s = _FRAC.sub(r"\1/\2", s)
    s = _CURRENCY.sub("", _LEADING.sub("", _CURRENCY.sub("", s.strip()))).strip()
    s = _counting_word(_TIMES_TEN.sub(r"e\1", s))
    m = _NUMBER_ANSWER.match(s)
    if not m or any(w in NUMBER_WORDS for w in s[m.end("num"):].lower().split()):  # "twelve or thirteen"
        return None
    try:
        value = float(m.group("num").replace(",", ""))
        den = m.group("den")
        if den is not None:
            d = float(den.replace(",", ""))
            if d == 0:
                return None
            return Number(value / d, None, bool(m.group("pct")), None)
    except ValueError:
        return None
    decimals, digits = _shown(m.group("num"))
    return Number(value, decimals, bool(m.group("pct")), digits)


def _half_unit(decimals: int) -> float:
    return 0.5 * 10.0**-decimals + 1e-12


def _close(got: Number, ref: Number) -> bool:
    """Equal, or equal up to the rounding that one side's written precision implies.

    A more precise answer matches a rounded reference (3.14159 vs 3.14; 7243012 vs 7.243e6). A decimal answer
    matches an exact fraction when it is that fraction correctly rounded AND shows at least two significant digits
    (0.33 vs 1/3, 0.016 vs 1/64, but not 0.02 vs 1/64: one digit says little). A coarser answer never matches a
    decimal reference (0.3 vs 0.33: the question asked for that precision), nor an integer a decimal (2 vs 2.4),
    and an integer reference is matched exactly.
    """
    if math.isclose(got.value, ref.value, rel_tol=1e-6, abs_tol=1e-9):
        return True
    if ref.decimals is not None and ref.decimals != 0 and (got.decimals is None or got.decimals > ref.decimals):
        return abs(got.value - ref.value) <= _half_unit(ref.decimals)
    if ref.decimals is None and got.decimals is not None and got.decimals >= 1 and (got.digits or 0) >= 2:
        return abs(got.value - ref.value) <= _half_unit(got.decimals)
    return False


def numbers_match(extracted: str, reference: str) -> bool | None:
    """Numeric equality with tolerance; None when either side is not a number."""
    got, ref = parse_number(extracted), parse_number(reference)
    if got is None or ref is None:
        return None
    if _close(got, ref):
        return True
    # "25%" vs "0.25": the percent sign may be on one side only.
    if got.percent != ref.percent:
        g, r = (got.value / 100, ref.value) if got.percent else (got.value, ref.value / 100)
        return math.isclose(g, r, rel_tol=1e-6, abs_tol=1e-9)
    return False


def grade_numeric(extracted: str, reference: str) -> RuleVerdict:
    match = numbers_match(extracted, reference)
    if match is not None:
        return RuleVerdict(match, "numeric.value")
    # Not a plain number on one side ("2\sqrt{2}", "1.2 \times 10^{3} m^2"): let the math rule decide.
    from vigos.evaluation.grade.expressions import grade_math

    return grade_math(extracted, reference)
