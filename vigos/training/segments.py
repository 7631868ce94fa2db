"""Parse a ViGOS completion into its description and reasoning segments (docs/training.md, "One optimizer step").

A completion is what the policy generated AFTER the assistant prefill ``<description>``. Expected shape::

    <description text></description> ... <think>reasoning</think> ... \\boxed{answer} ... EOS

Character-level rules (:func:`parse_segments`), applied to the decoded completion text:

1. the first ``</description>``;
2. the first ``<think>`` after it;
3. the first ``</think>`` after that;
4. the first ``\\boxed{`` after ``</think>`` whose braces balance. Each ``\\boxed{`` after ``</think>`` is tried in
   order and the first one that closes wins, so a box that never closes is skipped (it runs to the end of the
   text, so a later candidate can only be nested inside it). Braces follow TeX: a backslash escapes the next
   character, so ``\\{`` and ``\\}`` are literal braces and are not counted (``\\boxed{\\{1,2\\}}`` is one box).
   No closing box at all (missing, or every candidate unbalanced) is invalid.

Valid iff all four exist in that order and the description is non-empty. The description span is
``[0, start of </description>)``; a whitespace-only description is non-empty, hence valid (docs/training.md: "holds
at least one non-EOS token"). The reasoning span is ``[end of <think>, end of the "}" closing the box)``; it
includes ``</think>`` and the whole ``\\boxed{...}``. Spans are half-open character ranges into the text.

Token-level rule (:func:`token_range`): a completion token belongs to a span iff its character range overlaps the
span (it produced at least one character of it). So a token straddling an edge belongs to the span: ``"}."``
(the box's closing brace merged with the next text) is a reasoning token, ``"x</"`` is a description token,
``">\\n"`` (end of ``<think>`` plus the first reasoning character) is a reasoning token. A token that produced
only tag characters outside the spans (e.g. ``"</description>"`` or ``"<think>"`` whole) is in no span, as
are the text after the box and the EOS token. A byte-level BPE token that carries only part of a multi-byte
character is given that character (:func:`decode_with_offsets`), so every token that contributed bytes to a
character in a span belongs to the span.

Token-level masks (:func:`build_segment_masks`) cover completion tokens only (no prompt, no padding); position j
is completion token j. The logits that predict completion token j sit at sequence position
``prompt_len + j - 1`` of the student (and of each teacher, after its own context): the trainer aligns them.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from vigos.data.answers import closing_brace_end

DESCRIPTION_CLOSE = "</description>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
BOX_OPEN = "\\boxed{"

# Why a completion is invalid (Segments.reason); the first failing rule wins, in parsing order.
MISSING_DESCRIPTION_CLOSE = "missing </description>"
MISSING_THINK_OPEN = "missing <think> after </description>"
MISSING_THINK_CLOSE = "missing </think> after <think>"
MISSING_BOX = "missing \\boxed{ after </think>"
UNBALANCED_BOX = "unbalanced \\boxed{ after </think>"
EMPTY_DESCRIPTION = "empty description"

Span = tuple[int, int]
_REPLACEMENT = "\ufffd"


@dataclass(frozen=True)
class Segments:
    """The parse of one completion text. Spans are half-open ``(start, end)`` character ranges into the text."""

    valid: bool
    reason: str | None  # None when valid, else one of the module's MISSING_* / UNBALANCED_BOX / EMPTY_DESCRIPTION
    description: Span | None  # [0, start of </description>) when valid, else None
    reasoning: Span | None  # [end of <think>, end of the box's closing "}") when valid, else None
    answer: str | None = None  # content of the chosen box (between its braces) when one was found
    box: Span | None = None  # the whole "\boxed{...}" when one was found
    description_close: Span | None = None  # the tags, where found (also on invalid completions, for logs)
    think_open: Span | None = None
    think_close: Span | None = None
    truncated: bool = False  # the completion hit the length limit without EOS (passed in by the caller)


def _match_box(text: str, open_start: int) -> int | None:
    """End (exclusive) of the ``}`` closing the ``\\boxed{`` at ``open_start``, or None if it never closes."""
    return closing_brace_end(text, open_start + len(BOX_OPEN))


def find_balanced_box(text: str, start: int = 0) -> Span | None:
    """Span of the first ``\\boxed{...}`` at or after ``start`` whose braces balance (see module docstring)."""
    pos = text.find(BOX_OPEN, start)
    while pos != -1:
        end = _match_box(text, pos)
        if end is not None:
            return (pos, end)
        pos = text.find(BOX_OPEN, pos + 1)
    return None


def parse_segments(text: str, *, truncated: bool = False) -> Segments:
    """Apply the segment rules (docs/training.md) to a completion text (the text generated after ``<description>``).

    ``truncated`` is recorded as given: whether the completion hit the length limit without EOS. A truncated
    completion is valid if all its parts are there (the box closed before the cut); otherwise it is invalid
    with the reason of the first missing part.
    """

    def invalid(reason: str, **found) -> Segments:
        return Segments(False, reason, None, None, truncated=truncated, **found)

    d = text.find(DESCRIPTION_CLOSE)
    if d < 0:
        return invalid(MISSING_DESCRIPTION_CLOSE)
    d_tag = (d, d + len(DESCRIPTION_CLOSE))
    t = text.find(THINK_OPEN, d_tag[1])
    if t < 0:
        return invalid(MISSING_THINK_OPEN, description_close=d_tag)
    t_tag = (t, t + len(THINK_OPEN))
    tc = text.find(THINK_CLOSE, t_tag[1])
    if tc < 0:
        return invalid(MISSING_THINK_CLOSE, description_close=d_tag, think_open=t_tag)
    tc_tag = (tc, tc + len(THINK_CLOSE))
    tags = {"description_close": d_tag, "think_open": t_tag, "think_close": tc_tag}
    box = find_balanced_box(text, tc_tag[1])
    if box is None:
        reason = UNBALANCED_BOX if BOX_OPEN in text[tc_tag[1]:] else MISSING_BOX
        return invalid(reason, **tags)
    answer = text[box[0] + len(BOX_OPEN): box[1] - 1]
    if d == 0:
        return invalid(EMPTY_DESCRIPTION, answer=answer, box=box, **tags)
    return Segments(True, None, (0, d), (t_tag[1], box[1]), answer=answer, box=box, truncated=truncated, **tags)


# ---------------------------------------------------------------------------------------------------------------
# Token ids -> text + per-token character offsets


def _decoder(tokenizer) -> Callable[[list[int]], str]:
    """A ``ids -> str`` function that keeps special/added tokens and applies no clean-up of spaces.

    Accepts a ``tokenizers.Tokenizer``, a transformers fast tokenizer (its Rust ``backend_tokenizer`` is used,
    so ``clean_up_tokenization_spaces`` never rewrites text) or a processor holding one (``.tokenizer``).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None and hasattr(tokenizer, "tokenizer"):
        backend = getattr(tokenizer.tokenizer, "backend_tokenizer", None)
    if backend is None:
        backend = tokenizer
    return lambda ids: backend.decode(ids, skip_special_tokens=False)


def _id_list(token_ids) -> list[int]:
    """Token ids as Python ints, from a list, a 1-D tensor or array."""
    if hasattr(token_ids, "tolist"):
        token_ids = token_ids.tolist()
    return [int(t) for t in token_ids]


_WINDOW = 8  # tokens of already-decoded context kept in each decode call (handles Metaspace-style decoders)


def decode_with_offsets(tokenizer, token_ids: Iterable[int]) -> tuple[str, list[Span]]:
    """Decode ``token_ids`` incrementally; return the text and each token's ``(start, end)`` characters in it.

    Each step decodes a short window of tokens (at least ``_WINDOW`` already-decoded tokens plus the new ones)
    and takes the new suffix, so the cost is linear in the length. Special and added tokens are kept as text
    (the tags may be added tokens in some vocabularies; pass only the tokens before EOS). For byte-level BPE the
    text equals ``tokenizer.decode(ids, skip_special_tokens=False)`` without space clean-up.

    Multi-byte characters split over several tokens: while the decoded window ends with an incomplete
    character (U+FFFD), tokens are held back; when the character completes, each held token gets the
    characters it completed plus the (incomplete) character it contributed bytes to. Offsets are therefore
    monotone (non-decreasing starts and ends), a token may share a character with its neighbour, and a token
    that produced no text gets an empty range at its position.
    """
    ids = _id_list(token_ids)
    decode = _decoder(tokenizer)
    n = len(ids)
    pieces: list[str] = []
    offsets: list[Span] = []
    pos = 0  # characters committed so far
    boundaries = [0]  # token indices where text was committed (window starts are chosen among them)
    w = 0  # window start (token index)
    c = 0  # tokens committed
    base = ""  # decode(ids[w:c])
    pending: list[str] = []  # decode(ids[w:k+1]) for held tokens k in [c, i)
    for i in range(n):
        full = decode(ids[w: i + 1])
        if i + 1 < n and full.endswith(_REPLACEMENT):
            pending.append(full)
            continue
        if full.startswith(base):
            prev = len(base)
        else:  # a decoder that rewrites earlier text: keep what still agrees
            prev = 0
            while prev < min(len(base), len(full)) and base[prev] == full[prev]:
                prev += 1
        new = full[prev:]
        done = 0  # complete characters of `new` produced by the tokens handled so far
        for partial in pending:
            part = partial[prev:]
            body = part.rstrip(_REPLACEMENT)
            complete = min(max(len(body), done), len(new))
            end = min(complete + (1 if len(body) < len(part) else 0), len(new))
            offsets.append((pos + done, pos + max(end, done)))
            done = complete
        offsets.append((pos + done, pos + len(new)))
        pieces.append(new)
        pos += len(new)
        c = i + 1
        pending = []
        boundaries.append(c)
        if c - w > 2 * _WINDOW:
            k = bisect.bisect_right(boundaries, c - _WINDOW) - 1
            w = boundaries[k]
            base = decode(ids[w:c])
        else:
            base = full
    return "".join(pieces), offsets


def token_range(offsets: Sequence[Span], span: Span | None) -> tuple[int, int]:
    """Half-open range of token indices whose character range overlaps ``span`` (empty ``(0, 0)`` for None).

    Overlap means ``start < span_end and end > span_start``: a token straddling an edge belongs to the span; an
    empty (zero-width) token belongs only when strictly inside. ``offsets`` must be monotone (as produced by
    :func:`decode_with_offsets` or a fast tokenizer's ``offset_mapping``), so the matching tokens are contiguous.
    """
    if span is None or span[1] <= span[0]:
        return (0, 0)
    a, b = span
    ends = [e for _, e in offsets]
    starts = [s for s, _ in offsets]
    lo = bisect.bisect_right(ends, a)  # first token with end > a
    hi = bisect.bisect_left(starts, b)  # first token with start >= b
    return (lo, hi) if lo < hi else (0, 0)


def token_spans(segments: Segments, offsets: Sequence[Span]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(description token range, reasoning token range), half-open token indices; ``(0, 0)`` when absent."""
    return token_range(offsets, segments.description), token_range(offsets, segments.reasoning)


@dataclass(frozen=True)
class ParsedCompletion:
    """One rollout: its completion tokens (content, then EOS if any), text, offsets, segments and token ranges."""

    token_ids: tuple[int, ...]  # completion tokens that count: content + EOS (padding removed)
    text: str  # decoded content (EOS not included)
    offsets: tuple[Span, ...]  # per token in token_ids; EOS gets the empty range (len(text), len(text))
    has_eos: bool
    segments: Segments
    description_tokens: tuple[int, int]  # half-open token range, (0, 0) when invalid
    reasoning_tokens: tuple[int, int]

    @property
    def valid(self) -> bool:
        return self.segments.valid

    @property
    def truncated(self) -> bool:
        return not self.has_eos

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


def parse_completion(
    tokenizer,
    token_ids: Iterable[int],
    *,
    eos_token_ids: int | Iterable[int],
    length: int | None = None,
) -> ParsedCompletion:
    """Decode a sampled completion (ids after the ``<description>`` prefill) and parse its segments.

    The completion ends at its first EOS (kept, as one token) or, without EOS, at ``length`` tokens (default:
    all of them): it was then truncated. Anything after the first EOS is padding and dropped.
    """
    ids = _id_list(token_ids)
    if length is not None:
        ids = ids[:length]
    try:
        eos = set(_id_list(eos_token_ids))
    except TypeError:  # a single id
        eos = {int(eos_token_ids)}
    cut = next((i for i, t in enumerate(ids) if t in eos), None)
    content = ids if cut is None else ids[:cut]
    text, offsets = decode_with_offsets(tokenizer, content)
    has_eos = cut is not None
    if has_eos:
        content = content + [ids[cut]]
        offsets = offsets + [(len(text), len(text))]
    segments = parse_segments(text, truncated=not has_eos)
    desc, reas = token_spans(segments, offsets)
    if segments.valid and desc[1] <= desc[0]:  # cannot happen with a non-empty description; kept as a guard
        segments = Segments(False, EMPTY_DESCRIPTION, None, None, truncated=segments.truncated)
        desc, reas = (0, 0), (0, 0)
    return ParsedCompletion(tuple(content), text, tuple(offsets), has_eos, segments, desc, reas)


@dataclass
class SegmentMasks:
    """Boolean masks over completion tokens ``[batch, seq_len]`` (position j = completion token j; no padding).

    ``description`` / ``reasoning`` are set on valid rollouts only; ``reference`` covers every completion token
    (EOS included) of invalid rollouts only; ``completion`` covers every completion token of every rollout
    (what the OPSD teacher scores). ``description_last`` / ``reasoning_first`` hold the token index of the
    last description token / first reasoning token (-1 when invalid), for the extra clamps.
    """

    description: object  # torch.BoolTensor [B, T]
    reasoning: object
    reference: object
    completion: object
    valid: object  # torch.BoolTensor [B]
    truncated: object  # torch.BoolTensor [B]
    description_last: object  # torch.LongTensor [B]
    reasoning_first: object  # torch.LongTensor [B]

    def clip_values(
        self,
        clip: float,
        *,
        description_last_clip: float | None = None,
        reasoning_first_clip: float | None = None,
    ):
        """Per-token clip ``[B, T]`` float32: ``clip`` everywhere, ``min(clip, extra)`` at the two edge tokens."""
        import torch

        values = torch.full(self.completion.shape, float(clip), dtype=torch.float32, device=self.completion.device)
        rows = torch.arange(values.shape[0], device=values.device)
        for index, extra in ((self.description_last, description_last_clip),
                             (self.reasoning_first, reasoning_first_clip)):
            if extra is None:
                continue
            keep = index >= 0
            r, c = rows[keep], index[keep]
            values[r, c] = torch.clamp(values[r, c], max=float(extra))
        return values


def build_segment_masks(
    parsed: Sequence[ParsedCompletion],
    *,
    seq_len: int | None = None,
    device=None,
) -> SegmentMasks:
    """Stack per-rollout token ranges into batch masks (right-padded to ``seq_len``, default the longest)."""
    import torch

    longest = max((p.num_tokens for p in parsed), default=0)
    seq_len = longest if seq_len is None else seq_len
    if seq_len < longest:
        raise ValueError(f"seq_len {seq_len} is shorter than the longest completion ({longest} tokens)")
    b = len(parsed)
    desc = torch.zeros(b, seq_len, dtype=torch.bool)
    reas = torch.zeros(b, seq_len, dtype=torch.bool)
    ref = torch.zeros(b, seq_len, dtype=torch.bool)
    comp = torch.zeros(b, seq_len, dtype=torch.bool)
    desc_last = torch.full((b,), -1, dtype=torch.long)
    reas_first = torch.full((b,), -1, dtype=torch.long)
    for i, p in enumerate(parsed):
        comp[i, : p.num_tokens] = True
        if p.valid:
            d0, d1 = p.description_tokens
            r0, r1 = p.reasoning_tokens
            desc[i, d0:d1] = True
            reas[i, r0:r1] = True
            desc_last[i] = d1 - 1
            reas_first[i] = r0 if r1 > r0 else -1
        else:
            ref[i, : p.num_tokens] = True
    valid = torch.tensor([p.valid for p in parsed], dtype=torch.bool)
    truncated = torch.tensor([p.truncated for p in parsed], dtype=torch.bool)
    return SegmentMasks(
        *(t.to(device) if device is not None else t
          for t in (desc, reas, ref, comp, valid, truncated, desc_last, reas_first))
    )
