"""How long to wait before retrying an HTTP call: the server's Retry-After when it sends one, else an exponential
back-off with jitter (so that many threads retrying at once do not retry in lock-step).

One home for the LLM judge (`vigos.evaluation.judge`) and the OpenAI-compatible generation backend
(`vigos.generation.openai`).
"""

from __future__ import annotations

import email.utils
import random
import time

BASE_S = 1.0
"""1, 2, 4, 8 ... seconds between attempts, each times a random factor in [0.5, 1]."""
MAX_S = 60.0
RETRY_AFTER_MAX_S = 300.0
"""A server's Retry-After is honoured up to this (a silly value must not stall the run)."""


def retry_after_s(error: BaseException) -> float | None:
    """The wait an HTTP error's `Retry-After` (seconds or an HTTP date) or `retry-after-ms` header asks for."""
    headers = getattr(getattr(error, "response", None), "headers", None)
    if headers is None:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_s(attempt: int, error: BaseException, rng: random.Random) -> float:
    """Seconds to wait after failed attempt `attempt` (0-based) ended in `error`."""
    after = retry_after_s(error)
    if after is not None:
        return min(after, RETRY_AFTER_MAX_S)
    return min(MAX_S, BASE_S * 2**attempt) * rng.uniform(0.5, 1.0)
