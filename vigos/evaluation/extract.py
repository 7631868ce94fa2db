"""Final-answer extraction from a model response (EVALUATION.md, "Extraction"). Pure, no I/O.

Order: the LAST `\\boxed{...}` with balanced braces (reusing `vigos.data.answers.last_boxed`, the one brace
finder); only when the response has no `\\boxed{` at all, the last `<answer>...</answer>`. An unclosed last box
means no answer: it is almost always a truncated generation, and an earlier box (or an `<answer>` tag before it) is
a draft the model moved past. `\\boxed{None}` and empty content also mean no answer.
"""

from __future__ import annotations

import re

from vigos.data.answers import last_boxed

_BOX_START = re.compile(r"\\boxed\s*\{")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
# "None" the model writes when it declines to answer, possibly wrapped as \text{None} or $None$.
_NONE = re.compile(r"^\$?\s*(?:\\text\s*\{\s*none\s*\}|none)\s*\$?$", re.IGNORECASE)


def extract_answer(response: str | None) -> str | None:
    """The model's final answer in `response` (stripped), or None when it gave none."""
    if not response:
        return None
    if _BOX_START.search(response):
        content = last_boxed(response)  # None when the last box is unclosed: no fall-back, on purpose
    else:
        tags = _ANSWER_TAG.findall(response)
        content = tags[-1] if tags else None
    if content is None:
        return None
    content = content.strip()
    if not content or _NONE.match(content):
        return None
    return content
