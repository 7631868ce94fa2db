"""Text clean-up shared by every rule: LaTeX wrappers off, case/space/edge punctuation folded. Pure, no I/O."""

from __future__ import annotations

import re

# Macros whose argument is the text itself: \text{B} -> B, \mathrm{cm} -> cm.
_TEXT_MACRO = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mathit|operatorname|mbox|textrm)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\[,;:! ]|~|\\quad|\\qquad|\\left|\\right")
# \dfrac and \tfrac are \frac at another size: the same value, so the same text.
_FRAC_SIZE = re.compile(r"\\[dt]frac(?![a-zA-Z])")

EDGE_PUNCT = " .,;:!?\"'`“”‘’"
_ARTICLE = re.compile(r"^(?:the|a|an)\s+")

NUMBER_WORDS: dict[str, int] = {
    word: i
    for i, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}
"""Counting words a model writes instead of digits ("three"); beyond twenty, models write digits."""


def unwrap(s: str) -> str:
    """Drop `$` delimiters, spacing macros and text macros (keeping their content), then collapse spaces."""
    s = s.replace("$", " ")
    s = _SPACING.sub(" ", s)
    s = _FRAC_SIZE.sub(r"\\frac", s)
    prev = None
    while prev != s:  # nested: \textbf{\text{B}}
        prev = s
        s = _TEXT_MACRO.sub(r"\1", s)
    return " ".join(s.split())


def norm_text(s: str) -> str:
    """Case-, space- and edge-punctuation-insensitive form of a free-form answer; leading articles dropped."""
    s = unwrap(s).lower().strip(EDGE_PUNCT)
    return _ARTICLE.sub("", s).strip(EDGE_PUNCT)


def compact(s: str) -> str:
    """`norm_text` without any spaces: `\\frac {1}{2}` and `\\frac{1} {2}` are one expression."""
    return "".join(norm_text(s).split())


# Words that carry no meaning in a short answer ("equal to", "it is the same", "both are larger").
_FILLER = frozenset("the a an to than as is are it its they both be was were".split())
# Comparison words that name one relation: an answer may use any of them for an option worded with another.
_RELATION = {
    **dict.fromkeys(("equal", "same", "identical", "equivalent"), "equal"),
    **dict.fromkeys(("greater", "larger", "bigger", "more"), "greater"),
    **dict.fromkeys(("less", "smaller", "fewer"), "less"),
}
_WORD = re.compile(r"[a-z0-9]+(?:['.][a-z0-9]+)*")


def content_words(s: str) -> tuple[str, ...]:
    """The meaning-bearing words of a short answer, in order, relation synonyms folded: `the same` and
    `equal to` both give ("equal",). Used only to tell options apart, never to compare free text."""
    words = _WORD.findall(norm_text(s))
    return tuple(_RELATION.get(w, w) for w in words if w not in _FILLER)
