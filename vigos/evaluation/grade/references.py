"""References that accept several answers. Pure, no I/O.

- A Python list literal of strings, as MMMU stores some golds (`['24/7', '3.429']`): any element is correct. Only
  quoted elements count: `[0, 1]` is an interval, a single answer.
- MM-Vet's `A<OR>B` (either) and `A<AND>B` (all parts must be in the answer); `<OR>` binds loosest, as in
  MM-Vet's grading prompt: `a<AND>b<OR>c` is "a and b, or c".
"""

from __future__ import annotations

import ast
import re

_OR = re.compile(r"\s*<OR>\s*", re.I)
_AND = re.compile(r"\s*<AND>\s*", re.I)
# Where an answer that lists several things splits into its parts ("red, blue and green").
_LIST_SEPARATORS = re.compile(r"\s*(?:[,;\n&]|\band\b|\bor\b|\\text\{\s*and\s*\})\s*", re.I)


def _list_literal(reference: str) -> list[str] | None:
    s = reference.strip()
    if not (s.startswith("[") and s.endswith("]") and ("'" in s or '"' in s)):
        return None
    try:
        value = ast.literal_eval(s)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        return [v.strip() for v in value]
    return None


def alternatives(reference: str) -> list[list[str]] | None:
    """The accepted answers of a reference that has several: a list of alternatives, each the list of parts it
    needs (one part: a plain answer). None for an ordinary single-answer reference."""
    listed = _list_literal(reference)
    if listed is not None:
        return [[item] for item in listed]
    if not (_OR.search(reference) or _AND.search(reference)):
        return None
    alts = [[p for p in _AND.split(alt) if p] for alt in _OR.split(reference)]
    return [a for a in alts if a] or None


def answer_parts(answer: str) -> list[str]:
    """The items an answer lists ("red, blue and green" -> red / blue / green), or the answer itself."""
    parts = [p for p in _LIST_SEPARATORS.split(answer) if p and p.strip()]
    return parts or [answer]
