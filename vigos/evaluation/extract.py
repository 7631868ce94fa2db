"""Final-answer extraction from a model response (docs/evaluation.md, "Extraction"). Pure, no I/O.

The content of the LAST `\\boxed{...}` with balanced braces (`vigos.data.answers.last_boxed`, the one brace finder;
`\\boxed {x}` with a space counts). When that last box gives no answer (unclosed: usually a truncated generation;
empty; `None` / `\\text{None}`), or there is no box, the last `<answer>...</answer>` is used instead; never an
earlier box (a draft the model moved past). A leading `Final answer:` / `Answer:` inside the answer is stripped.
"""

from __future__ import annotations

import re

from vigos.data.answers import last_boxed

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_LEAD_IN = re.compile(r"^(?:the\s+)?(?:final\s+)?answer\s*(?:is\s*)?[:：]\s*", re.IGNORECASE)
# "None" the model writes when it declines to answer, possibly wrapped as \text{None} or $None$.
_NONE = re.compile(r"^\$?\s*(?:\\text\s*\{\s*none\s*\}|none)\s*\$?$", re.IGNORECASE)


def _answer(content: str | None) -> str | None:
    """The stripped answer in a box's or tag's content, or None when it states none."""
    if content is None:
        return None
    content = _LEAD_IN.sub("", content.strip(), count=1).strip()
    return None if not content or _NONE.match(content) else content


def extract_answer(response: str | None) -> str | None:
    """The model's final answer in `response` (stripped), or None when it gave none."""
    if not response:
        return None
    boxed = _answer(last_boxed(response))  # None also when the last box is unclosed: no earlier box, on purpose
    if boxed is not None:
        return boxed
    tags = _ANSWER_TAG.findall(response)
    return _answer(tags[-1]) if tags else None
