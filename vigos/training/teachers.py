"""Teacher contexts and the token alignment between student and teacher sequences.

One network plays every teacher: the frozen base model, i.e. the policy with its LoRA adapter disabled, in eval
mode, under no_grad (no second copy of the 7B weights). Teachers differ only in their context (docs/training.md;
every text is the release's, in vigos/data/prompts.py):

| role       | context (user turn, then assistant prefill)                                       | scores              |
|------------|-----------------------------------------------------------------------------------|---------------------|
| perception | the image only; assistant turn opened, no prefill                                 | description tokens  |
| reasoning  | image + problem + reference solution + "derive the same final answer"; `<think>`  | reasoning tokens    |
| reference  | image + problem + reference solution + the three-part format; `<description>`     | every token (invalid rollouts) |

The student's completion tokens are appended (as ids, never re-tokenised) after each context, and positions are
aligned by completion index: in a sequence whose appended tokens start at completion index `s0`, the hidden
state at `context_len - 1 + (j - s0)` predicts completion token `j`, exactly as the student's hidden state at
`prompt_len - 1 + j` does. `SequenceBatch.offset` stores `context_len - 1 - s0` per row, so one function maps a
completion-token mask onto any sequence's positions.

The reference answer never appears in the student's or the perception teacher's context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vigos.data.prompts import (
    DESCRIPTION_PREFILL,
    THINK_PREFILL,
    build_messages,
    format_reasoning_prompt,
    format_reference_prompt,
    image_items,
)

ROLES = ("student", "perception", "reasoning", "reference")


def context_messages(
    role: str, problem: str, answer: str, image: Any, student_prompt: str = "release"
) -> list[dict[str, Any]]:
    """The user turn of `role`'s context (one image: the student uses the first image, so do the teachers)."""
    if role == "student":  # evaluation's own messages: the student is prompted in training as it is scored
        return build_messages(problem, [image], prompt=student_prompt)
    content = image_items([image])
    if role == "perception":
        pass  # the image alone: it can only judge what the description says about the image
    elif role == "reasoning":
        content.append({"type": "text", "text": format_reasoning_prompt(problem, answer)})
    elif role == "reference":
        content.append({"type": "text", "text": format_reference_prompt(problem, answer)})
    else:
        raise ValueError(f"unknown role {role!r}; one of {ROLES}")
    return [{"role": "user", "content": content}]


def context_prefill(role: str, sees_description: bool = False) -> str:
    if role in ("student", "reference"):
        return DESCRIPTION_PREFILL
    if role == "reasoning":
        # Seeing the student's description means continuing the student's own turn from its start.
        return DESCRIPTION_PREFILL if sees_description else THINK_PREFILL
    return ""


def context_text(
    processor: Any, role: str, problem: str, answer: str, sees_description: bool = False,
    student_prompt: str = "release", prefill: str | None = None,
) -> str:
    """Chat-template text of `role`'s context, assistant turn opened and prefilled (`prefill`: the role's own
    prefill by default; `segment_tail` gives the one that joins exactly onto a rollout's tokens). The image is a
    placeholder: the template only needs to know there is one; pixels go through the processor."""
    messages = context_messages(role, problem, answer, image=None, student_prompt=student_prompt)
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + (context_prefill(role, sees_description) if prefill is None else prefill)


def segment_tail(role: str, parsed: Any, sees_description: bool = False) -> tuple[str, int, int]:
    """What `role` reads of one rollout: `(prefill, first, end)`, its context's prefill and the completion tokens
    `[first, end)` appended after it (as ids).

    The context + appended tokens read exactly as the role's prefill + the student's own text from the segment's
    start. That needs care where a token straddles a tag edge: Qwen's BPE merges `>` with a following newline, so
    the reasoning span (which starts right after `<think>`) begins with the token `>\n`, whose `>` belongs to the
    tag. Appending it after a `<think>` prefill would read `<think>>\n`; instead the prefill gives up the characters
    the token brings back (`<think` + `>\n...` reads `<think>\n...`), and the token is scored as the student
    generated it. `parsed` is a `ParsedCompletion`; student/reference/OPSD roles read every token.
    """
    prefill = context_prefill(role, sees_description)
    if role == "perception":
        return prefill, 0, parsed.description_tokens[1]
    if role == "reasoning":
        first, end = parsed.reasoning_tokens
        if sees_description:  # the student's own turn from its start: nothing straddles its prefill
            return prefill, 0, end
        lead = parsed.text[parsed.offsets[first][0]: parsed.segments.reasoning[0]]
        if lead:
            if not prefill.endswith(lead):
                raise ValueError(
                    f"the reasoning's first token also holds {lead!r}, which is not the end of the prefill "
                    f"{prefill!r}: this tokenizer merges text before the tag into the reasoning, so no context can "
                    "read exactly as the prefill + the reasoning"
                )
            prefill = prefill[: len(prefill) - len(lead)]
        return prefill, first, end
    return prefill, 0, parsed.num_tokens


@dataclass
class SequenceBatch:
    """Sequences (context + appended completion tokens) ready for the model: right-padded rows `[B, L]`, or, when
    `cu_seqlens` is set, the rows packed into one sequence `[1, N]` without padding (`build_sequences(pack=True)`).

    `mm_token_type_ids` (0 text, 1 image) is the processor's, zero over appended tokens and padding: with it (and
    `image_grid_thw`) Qwen2.5-VL computes the same multimodal rotary (mRoPE) positions as at sampling; without
    it the model silently falls back to 1-D positions (text after a 1,296-token image at 1,617 instead of 357).

    Packed, every row keeps the positions it has alone (`packed_position_ids`: the model's own `get_rope_index`
    per row, concatenated) and attends only within itself: the position ids carry a leading text-position row
    that restarts at 0 with each row, from which transformers builds a block-diagonal causal mask (sdpa, eager)
    or the cu_seqlens of flash-attention's varlen kernel (flash_attention_2).
    """

    input_ids: torch.Tensor  # [B, L] padded; [1, N] packed
    attention_mask: torch.Tensor | None  # [B, L] padded; None packed (rows are told apart by their positions)
    pixel_values: torch.Tensor  # all rows' image patches, in row order
    image_grid_thw: torch.Tensor  # [B, 3]: one image per row
    mm_token_type_ids: torch.Tensor  # like input_ids
    offset: torch.Tensor  # [B]: position in its row whose hidden state predicts completion token 0
    cu_seqlens: torch.Tensor | None = None  # [B + 1] packed: row i is [cu_seqlens[i], cu_seqlens[i + 1])

    @property
    def packed(self) -> bool:
        return self.cu_seqlens is not None

    @property
    def num_tokens(self) -> int:
        """Real tokens (padding excluded): what a throughput counts."""
        return int(self.input_ids.numel() if self.packed else self.attention_mask.sum())

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The padded batch's model inputs (a packed one also needs `packed_position_ids`: see `hidden_states`)."""
        inputs = {"input_ids": self.input_ids, "pixel_values": self.pixel_values,
                  "image_grid_thw": self.image_grid_thw, "mm_token_type_ids": self.mm_token_type_ids}
        if self.attention_mask is not None:
            inputs["attention_mask"] = self.attention_mask
        return inputs

    def positions(self, completion_mask: torch.Tensor) -> torch.Tensor:
        """The sequence positions whose hidden states predict the True completion tokens (see `positions`)."""
        return positions(completion_mask, self.offset, self.input_ids.shape[1], self.cu_seqlens)

    def to(self, device) -> SequenceBatch:
        return SequenceBatch(*(None if t is None else t.to(device) for t in (
            self.input_ids, self.attention_mask, self.pixel_values, self.image_grid_thw, self.mm_token_type_ids,
            self.offset, self.cu_seqlens)))


def build_sequences(
    processor: Any,
    contexts: Sequence[str],
    images: Sequence[Any],
    appended: Sequence[Sequence[int]],
    start_index: Sequence[int],
    dtype: torch.dtype | None = None,
    pack: bool = False,
) -> SequenceBatch:
    """Tokenise each context with its image, append the given completion tokens (ids), right-pad into a batch
    (`pack`: concatenate the rows into one sequence instead, see `SequenceBatch`).

    `start_index[i]` is the completion index of `appended[i][0]` (0 for the student and the perception and
    reference teachers; the first reasoning token for the reasoning teacher).
    """
    rows, types, pixels, grids, offsets = [], [], [], [], []
    for text, image, tail, s0 in zip(contexts, images, appended, start_index, strict=True):
        enc = processor(text=[text], images=[image], return_tensors="pt", return_mm_token_type_ids=True)
        ids = enc["input_ids"][0].tolist()
        offsets.append(len(ids) - 1 - int(s0))
        rows.append(ids + [int(t) for t in tail])
        types.append(enc["mm_token_type_ids"][0].tolist() + [0] * len(tail))
        pixels.append(enc["pixel_values"])
        grids.append(enc["image_grid_thw"])
    pixel_values = torch.cat(pixels)
    if dtype is not None:
        pixel_values = pixel_values.to(dtype)
    if pack:
        cu_seqlens = torch.tensor([0] + [len(r) for r in rows]).cumsum(0)
        return SequenceBatch(torch.tensor([[t for r in rows for t in r]], dtype=torch.long), None, pixel_values,
                             torch.cat(grids), torch.tensor([[t for ty in types for t in ty]], dtype=torch.long),
                             torch.tensor(offsets), cu_seqlens)
    pad_id = processor.tokenizer.pad_token_id
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    mm_token_type_ids = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (r, ty) in enumerate(zip(rows, types, strict=True)):
        input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        attention_mask[i, : len(r)] = 1
        mm_token_type_ids[i, : len(ty)] = torch.tensor(ty, dtype=torch.long)
    return SequenceBatch(input_ids, attention_mask, pixel_values, torch.cat(grids), mm_token_type_ids,
                         torch.tensor(offsets))


def positions(
    completion_mask: torch.Tensor, offset: torch.Tensor, seq_len: int, cu_seqlens: torch.Tensor | None = None
) -> torch.Tensor:
    """Map a completion-token mask [B, T] onto sequence positions: [B, seq_len] for right-padded rows, [1, seq_len]
    for rows packed at `cu_seqlens` (see the module docstring and `SequenceBatch`).

    Row-major order of the True entries is preserved (packed rows follow each other), so the student's and a
    teacher's position masks built from the same completion mask select matching (row, token) pairs in the same
    order, padded or packed.
    """
    device = completion_mask.device
    rows, cols = completion_mask.nonzero(as_tuple=True)
    pos = offset.to(device)[rows] + cols
    if cu_seqlens is None:
        start, end = torch.zeros_like(pos), torch.full_like(pos, seq_len)
    else:
        cu = cu_seqlens.to(device)
        start, end = cu[rows], cu[rows + 1]
        pos = pos + start
    if len(pos) and ((pos < start) | (pos >= end)).any():
        raise ValueError("a scored completion token falls outside its sequence (were its tokens appended?)")
    out = torch.zeros((completion_mask.shape[0] if cu_seqlens is None else 1, seq_len), dtype=torch.bool,
                      device=device)
    out[torch.zeros_like(rows) if cu_seqlens is not None else rows, pos] = True
    return out


def lm_parts(model: Any) -> tuple[Any, torch.Tensor]:
    """(the backbone that returns final-norm hidden states, the lm_head weight) of a (PEFT-wrapped) Qwen2.5-VL."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model, base.lm_head.weight


def packed_position_ids(backbone: Any, batch: SequenceBatch) -> torch.Tensor:
    """[4, 1, N] position ids of a packed batch: a text-position row restarting at 0 with every row (what
    transformers reads the rows' boundaries from), then each row's mRoPE positions exactly as the model computes
    them for that row alone (`get_rope_index`, the function its padded forward calls)."""
    parts = []
    for i, (start, end) in enumerate(zip(batch.cu_seqlens[:-1].tolist(), batch.cu_seqlens[1:].tolist(), strict=True)):
        mrope, _ = backbone.get_rope_index(batch.input_ids[:, start:end], batch.mm_token_type_ids[:, start:end],
                                           image_grid_thw=batch.image_grid_thw[i: i + 1])
        text = torch.arange(end - start, device=mrope.device, dtype=mrope.dtype).view(1, 1, -1)
        parts.append(torch.cat([text, mrope]))
    return torch.cat(parts, dim=2)


def hidden_states(model: Any, batch: SequenceBatch) -> torch.Tensor:
    """Final hidden states [B, L, H] ([1, N, H] packed), after the final norm: the lm_head is applied chunk by
    chunk in the loss."""
    backbone, _ = lm_parts(model)
    inputs = batch.model_inputs()
    if batch.packed:
        inputs["position_ids"] = packed_position_ids(backbone, batch)
    out = backbone(**inputs, use_cache=False)
    return out.last_hidden_state


@torch.no_grad()
def teacher_hidden_states(model: Any, batch: SequenceBatch) -> torch.Tensor:
    """The frozen base model's hidden states: adapter disabled, eval mode, no grad; training mode restored."""
    was_training = model.training
    model.eval()
    try:
        with model.disable_adapter():
            return hidden_states(model, batch)
    finally:
        model.train(was_training)
