"""Answer normalisation and classification: pure functions, no I/O.

Reference answers in Vision-SR1-47K (and model responses at evaluation time) arrive wrapped in several ways:
code fences, a leading "Answer:", `<answer>...</answer>` tags, `\\boxed{...}`. `normalize_answer` peels them off
in a fixed order so that every later consumer (the teacher's reference context, grading) sees the bare answer.
`last_boxed` is the one balanced-brace finder; evaluation's answer extraction reuses it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

ANSWER_TYPES: tuple[str, ...] = ("multiple_choice", "numeric", "yes_no", "math", "free_form")
"""Every value `answer_type` can return (the response-row contract's vocabulary)."""

_BOXED = re.compile(r"\\boxed\s*\{")
# The language tag only counts when a newline follows it: in "```red```" the answer is "red".
_FENCE = re.compile(r"^```(?:[\w+-]*[ \t]*\n)?(.*?)\n?[ \t]*```$", re.DOTALL)
_LEADING_ANSWER = re.compile(r"^(?:final\s+)?answer\s*[:：]\s*", re.IGNORECASE)
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_QUOTES = "\"'`“”‘’"
# "B", "(B)", "B." or "B)": a bare option letter. A-J covers the 10-option benchmarks (MMMU-Pro).
_CHOICE = re.compile(r"^\(?([A-J])\)?\.?$")
_NUMBER = re.compile(r"^[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?%?$")
_YES_NO = {"yes", "no", "true", "false"}
# LaTeX commands or operators that make an answer an expression rather than a plain number or word.
_MATH = re.compile(r"\\[a-zA-Z]+|[\^_=/√π∞±×÷]|\d\s*[+*]\s*\d")
_OPTION_PREFIX = re.compile(r"^\(?[A-J][).:]\s*")


def last_boxed(text: str) -> str | None:
    """Content of the LAST `\\boxed{...}` in `text`, braces balanced (nested braces kept), or None.

    None also when the last `\\boxed{` is never closed: an earlier box is a draft the model moved past, so
    falling back to it would grade an answer the model did not give. `\\{` and `\\}` are literal braces (as in
    `\\boxed{\\{1, 2\\}}`) and do not count towards the balance.
    """
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    end = closing_brace_end(text, starts[-1])
    return None if end is None else text[starts[-1] : end - 1]


def closing_brace_end(text: str, start: int) -> int | None:
    """Index just past the `}` that closes a `{` opened right before `start`, or None if it never closes.

    TeX escapes (`\\{`, `\\}`, `\\\\`) are literal characters and do not count towards the balance.
    """
    depth = 1
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2  # skip the escaped character, whatever it is
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _strip_quotes(text: str) -> str:
    # Repeat: answers such as "` 'red' `" nest several layers.
    prev = None
    while prev != text:
        prev = text
        text = text.strip().strip(_QUOTES).strip()
    return text


def normalize_answer(text: Any) -> str:
    """The bare answer inside `text`; "" when nothing is left (the caller decides what empty means).

    In order: strip code fences, a leading `answer:` (any case), keep the `<answer>...</answer>` content (the
    last pair), keep the last balanced `\\boxed{...}` content, strip surrounding quotes, backticks and whitespace.
    Non-strings (numbers in some datasets' answer columns) are converted with `str`; None gives "".
    """
    if text is None:
        return ""
    s = text if isinstance(text, str) else str(text)
    s = s.strip()
    fence = _FENCE.match(s)
    if fence:
        s = fence.group(1).strip()
    s = _LEADING_ANSWER.sub("", s, count=1).strip()
    tags = _ANSWER_TAG.findall(s)
    if tags:
        s = tags[-1].strip()
    boxed = last_boxed(s)
    if boxed is not None:
        s = boxed
    return _strip_quotes(s)


def _option_texts(options: Sequence[Any] | None) -> list[str]:
    """Option texts without their "A." / "(B)" prefixes, lower-cased, for matching an answer against them."""
    if not options:
        return []
    return [_OPTION_PREFIX.sub("", str(o)).strip().lower() for o in options if o is not None]


def answer_type(answer: str, options: Sequence[Any] | None = None) -> str:
    """Classify a normalised answer as one of `ANSWER_TYPES` (for stats and for choosing a grader).

    `multiple_choice`: a single letter A-J, optionally "(B)" / "B." / "B)", or the text of one of `options`;
    `numeric`: an integer or decimal, optionally signed, with thousands separators or a trailing %;
    `yes_no`: yes/no/true/false; `math`: a LaTeX or operator expression; `free_form`: anything else.
    """
    a = answer.strip()
    if not a:
        return "free_form"
    if _CHOICE.match(a) or (options and a.lower() in _option_texts(options)):
        return "multiple_choice"
    if any(ch.isdigit() for ch in a) and _NUMBER.match(a):
        return "numeric"
    if a.lower().rstrip(".") in _YES_NO:
        return "yes_no"
    if _MATH.search(a):
        return "math"
    return "free_form"
