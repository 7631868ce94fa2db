"""LLM judge through any OpenAI-compatible endpoint (docs/evaluation.md, "Rule grading").

One call per question lists its k extracted answers and the reference and asks for one JSON verdict per answer:
`{"verdicts": [true, false, ...]}`. Why this shape: the judge sees all attempts at once (k times fewer calls), and
`any()` / Pass@k is recomputed locally from the verdicts, never taken from the judge.

Judge models often write near-JSON (Python literals, trailing commas, a bare list, "yes"/"no" words):
`parse_verdicts` repairs those forms, and only those. Failure policy (ours): a reply that still cannot be read, has
the wrong number of verdicts, or whose HTTP body is not even JSON (a 200 cut short) is retried like an HTTP error or a
time-out, `judge_max_retries` times, after the server's Retry-After when it sends one, else an exponential back-off
with jitter (so that the scoring threads do not retry in lock-step). A question whose judge call finally failed gets
`None` from `Judge.verdicts`: the caller keeps its rule grade and reports it as ungraded-by-judge, and the scores as
incomplete. Failures are never cached and never counted as incorrect. Circuit breaker: after
`judge_max_consecutive_failures` failed questions in a row the judge is taken for down, and every later question
fails at once without a call (a judge down for a whole run would otherwise cost each question the full back-off).
Credentials that the endpoint rejects (401/403) or an unknown model or URL (404) raise `VigosError` at once: every
other question would fail the same way.

Replies are cached on disk, one JSON file per key (question, answers, reference, judge model, prompt version),
written atomically, so a re-run (or a crashed run resumed) pays only for new questions. The API key is read from
the environment variable NAMED in the config and is never logged or stored.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import random
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vigos.backoff import backoff_s
from vigos.errors import VigosError
from vigos.redact import redact
from vigos.volume import write_atomic

if TYPE_CHECKING:  # pragma: no cover
    from vigos.config import EvalConfig

log = logging.getLogger(__name__)

Verdict = bool | float
"""True/False, or a partial credit in [0, 1] (MM-Vet-style judges)."""

PROMPT_VERSION = "v1"  # part of the cache key: a changed prompt must not reuse old verdicts
# Reply length cap sent as `max_tokens`: `{"verdicts": [true, false, ...]}` takes ~2 tokens per verdict plus ~10, so
# this leaves room for a code fence or a sentence around it while a judge that rambles (or a broken/tiny model)
# stops early instead of generating until the request times out; its truncated reply is then retried as malformed.
# A reasoning judge counts its thinking against this cap: use one with thinking off.
_MAX_TOKENS_BASE = 64
_MAX_TOKENS_PER_ANSWER = 8

_SYSTEM = (
    "You grade answers to a question against its reference answer. An answer is correct when it means the same "
    "as the reference (equivalent numbers, expressions, option letters or option texts, synonyms); it is incorrect "
    "when it differs, is incomplete, or hedges between several answers. Reply with JSON only, no prose: "
    '{"verdicts": [one true or false per answer, in order]}.'
)


class JudgeReplyError(ValueError):
    """The judge answered, but not with a usable verdict list (retried like a failed call)."""


def build_messages(question: str, answers: Sequence[str], reference: str) -> list[dict[str, str]]:
    """Chat messages asking for one verdict per answer."""
    listed = "\n".join(f"{i + 1}. {a}" for i, a in enumerate(answers))
    user = (
        f"Question:\n{question}\n\nReference answer:\n{reference}\n\n"
        f"Answers to grade ({len(answers)}):\n{listed}\n\n"
        f'Reply exactly as {{"verdicts": [...]}} with {len(answers)} booleans.'
    )
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.S | re.I)
_TRAILING_COMMA = re.compile(r",\s*([\]}])")
_JSON_WORDS = re.compile(r"\b(true|false|null)\b")
_WORDS: dict[str, bool] = {"true": True, "yes": True, "correct": True, "false": False, "no": False, "incorrect": False}


def _loads_lenient(s: str) -> Any:
    """JSON, or the near-JSON that judge models write: trailing commas (`[true, false,]`) and Python literals
    (`{'verdicts': [True, False]}`, as models trained on Python print them). Anything else: JudgeReplyError."""
    try:
        return json.loads(s)
    except json.JSONDecodeError as e:
        error = e
    s = _TRAILING_COMMA.sub(r"\1", s)
    try:
        return json.loads(s)
    except json.JSONDecodeError:
        pass
    try:  # literal_eval evaluates literals only (no names, no calls): safe on untrusted text
        return ast.literal_eval(_JSON_WORDS.sub(lambda m: {"true": "True", "false": "False"}.get(m[1], "None"), s))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise JudgeReplyError(f"malformed JSON: {error}") from None


def _verdict(v: Any) -> Verdict:
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float) and 0.0 <= v <= 1.0:
        return float(v)
    if isinstance(v, str) and v.strip().lower() in _WORDS:  # "yes" / "correct" / "false" ... for a boolean
        return _WORDS[v.strip().lower()]
    raise JudgeReplyError(f"verdict {v!r} is neither a boolean, a score in [0, 1] nor yes/no/correct/incorrect")


def parse_verdicts(text: str | None, n: int) -> list[Verdict]:
    """The `n` verdicts in a judge reply; JudgeReplyError when unreadable or of the wrong count.

    Accepted around the `{"verdicts": [...]}` object: a code fence, prose, the near-JSON of `_loads_lenient`; a bare
    list `[...]` instead of the object; "yes"/"no"/"correct"/"incorrect" (or "true"/"false") strings as verdicts.
    """
    if not text:
        raise JudgeReplyError("empty reply")
    s = text.strip()
    fence = _FENCE.search(s)
    if fence:
        s = fence.group(1)
    data: Any = None
    error: JudgeReplyError = JudgeReplyError("no JSON object or list in the reply")
    for open_, close in ("{}", "[]"):  # the object, else a bare list (or the list inside a broken object)
        start, end = s.find(open_), s.rfind(close)  # tolerate a sentence around it
        if 0 <= start < end:
            try:
                data = _loads_lenient(s[start : end + 1])
                break
            except JudgeReplyError as e:
                error = e
    else:
        raise error
    verdicts = data.get("verdicts") if isinstance(data, dict) else data
    if not isinstance(verdicts, list):
        raise JudgeReplyError('no "verdicts" list')
    if len(verdicts) != n:
        raise JudgeReplyError(f"{len(verdicts)} verdicts for {n} answers")
    return [_verdict(v) for v in verdicts]


def cache_key(question: str, answers: Sequence[str], reference: str, model: str) -> str:
    payload = json.dumps([PROMPT_VERSION, model, question, list(answers), reference], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temp file beside `path`, then rename: readers never see half a file."""
    write_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2))


def _make_client(cfg: EvalConfig) -> Any:
    if not cfg.judge_base_url or not cfg.judge_model:
        raise VigosError(
            "the judge grader needs eval.judge_base_url and eval.judge_model "
            "(e.g. --set eval.judge_base_url=http://host:8000/v1 --set eval.judge_model=NAME), or use --grader rules"
        )
    key = os.environ.get(cfg.judge_api_key_env)
    if not key:
        raise VigosError(
            f"the judge's API key is read from ${cfg.judge_api_key_env}, which is unset: export it "
            "(any non-empty value for an endpoint without auth) or change eval.judge_api_key_env"
        )
    import openai  # heavy-ish; only judge runs need it

    # Retries are ours (counted, backed off, malformed replies included), so the client's own are off.
    return openai.OpenAI(base_url=cfg.judge_base_url, api_key=key, max_retries=0, timeout=cfg.judge_timeout_s)


class Judge:
    """Grades the answers of one question per call; thread-safe (scoring runs several calls at once)."""

    def __init__(
        self,
        cfg: EvalConfig,
        cache_dir: Path | None,
        *,
        sleep: Callable[[float], Any] | None = None,
        rng: random.Random | None = None,
        client: Any = None,
    ) -> None:
        self.model = cfg.judge_model
        self.max_retries = cfg.judge_max_retries
        self.max_consecutive_failures = cfg.judge_max_consecutive_failures
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._client = client if client is not None else _make_client(cfg)
        self._broken = threading.Event()  # set when the circuit breaker opens
        # Injectable: tests must not wait for real back-off. The default wakes up when the breaker opens, so a
        # thread backing off does not sit out its full wait for a judge already known to be down.
        self._sleep = sleep if sleep is not None else self._broken.wait
        self._rng = rng if rng is not None else random.Random()
        self._lock = threading.Lock()
        self.http_calls = 0
        self.cache_hits = 0
        self.failures = 0
        self._consecutive_failures = 0

    @property
    def breaker_open(self) -> bool:
        """True once `max_consecutive_failures` questions in a row failed: no more calls this run."""
        return self._broken.is_set()

    def _record(self, ok: bool) -> None:
        with self._lock:
            if ok:
                self._consecutive_failures = 0
                return
            self.failures += 1
            self._consecutive_failures += 1
            if self._consecutive_failures >= self.max_consecutive_failures and not self._broken.is_set():
                log.error("judge circuit breaker open: %d questions in a row failed; the remaining questions are "
                          "not sent (eval.judge_max_consecutive_failures)", self._consecutive_failures)
                self._broken.set()

    # -- cache ----------------------------------------------------------------------------------------------
    def _cache_path(self, key: str) -> Path | None:
        return self.cache_dir / key[:2] / f"{key}.json" if self.cache_dir is not None else None

    def _cached(self, key: str, n: int) -> list[Verdict] | None:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        try:
            return parse_verdicts(json.dumps(json.loads(path.read_text())), n)
        except (OSError, ValueError):  # unreadable or foreign file: ask again (and overwrite it)
            return None

    # -- calls ----------------------------------------------------------------------------------------------
    def _ask(self, messages: list[dict[str, str]], max_tokens: int) -> str | None:
        with self._lock:
            self.http_calls += 1
        resp = self._client.chat.completions.create(
            model=self.model, messages=messages, temperature=0.0, max_tokens=max_tokens
        )
        try:
            return resp.choices[0].message.content
        except (AttributeError, IndexError, TypeError):  # a 200 without a choice: as bad as malformed JSON
            raise JudgeReplyError("reply has no choices") from None

    def verdicts(self, question: str, answers: Sequence[str | None], reference: str) -> list[Verdict] | None:
        """One verdict per answer (None answers are False, never sent); None when the judge call failed."""
        sent = [a for a in answers if a is not None]
        if not sent:
            return [False] * len(answers)
        got = self._verdicts_for(question, sent, reference)
        if got is None:
            return None
        it = iter(got)
        return [next(it) if a is not None else False for a in answers]

    def _verdicts_for(self, question: str, answers: list[str], reference: str) -> list[Verdict] | None:
        import openai

        key = cache_key(question, answers, reference, self.model)
        cached = self._cached(key, len(answers))
        if cached is not None:
            with self._lock:
                self.cache_hits += 1
            return cached
        messages = build_messages(question, answers, reference)
        for attempt in range(self.max_retries + 1):
            if self._broken.is_set():
                break
            try:
                reply = self._ask(messages, _MAX_TOKENS_BASE + _MAX_TOKENS_PER_ANSWER * len(answers))
                verdicts = parse_verdicts(reply, len(answers))
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
                raise VigosError(
                    f"the judge at its base URL rejected the request ({type(e).__name__}, HTTP {e.status_code}): "
                    "check eval.judge_base_url, eval.judge_model and the API key's environment variable"
                ) from None
            # json.JSONDecodeError: the client could not read the HTTP body itself (a 200 cut short)
            except (openai.APIError, JudgeReplyError, json.JSONDecodeError) as e:
                # Type and message only, redacted: an error's message quotes the server's reply, and a server may
                # quote the credential it refused.
                log.warning(
                    "judge attempt %d/%d failed: %s: %s", attempt + 1, self.max_retries + 1, type(e).__name__,
                    redact(str(e))[:200],
                )
                if attempt < self.max_retries:
                    self._sleep(backoff_s(attempt, e, self._rng))
                continue
            path = self._cache_path(key)
            if path is not None:  # only validated replies reach the cache
                entry = {"verdicts": verdicts, "model": self.model, "question": question, "answers": answers,
                         "reference": reference}
                write_json_atomic(path, entry)
            self._record(ok=True)
            return verdicts
        self._record(ok=False)
        return None
