"""The ViGOS objective for one micro-batch of rollouts: route each rollout to its teachers, run them, and return
the clipped per-token KL terms per segment (docs/training.md, "One optimizer step").

Pure of any distributed or optimizer concern (the trainer adds all-reduced token means, DeepSpeed backward and
steps), so benchmarks and tests run exactly the trainer's computation with plain torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from vigos.config import TrainConfig
from vigos.training import teachers as T
from vigos.training.losses import KLTerms, chunked_clipped_token_kl
from vigos.training.segments import ParsedCompletion, SegmentMasks, build_segment_masks

SEGMENTS = ("perception", "reasoning", "reference")
"""Loss slots. `method: opsd` routes its single privileged teacher (forward KL over every token) through
`reference`."""


def teacher_batches(
    processor: Any, t: TrainConfig, examples: Sequence[Any], parsed: Sequence[ParsedCompletion],
    masks: SegmentMasks, dtype: torch.dtype | None = None, pack: bool | None = None,
) -> dict[str, tuple[T.SequenceBatch, torch.Tensor, list[int]]]:
    """role -> (its SequenceBatch, the completion mask of its rows, those row indices).

    Rows a teacher does not score are left out of its forward; a teacher with no rows is skipped entirely (e.g.
    no invalid rollout in the micro-batch: no reference forward). `examples` need `.problem`, `.answer`, `.image`.
    `pack` (default `t.pack_sequences`): each role's rows packed into one sequence.
    """
    pack = t.pack_sequences if pack is None else pack
    if t.method == "opsd":
        plan = {"reference": (list(range(len(parsed))), masks.completion)}
    else:
        valid = [i for i, p in enumerate(parsed) if p.valid]
        invalid = [i for i, p in enumerate(parsed) if not p.valid]
        plan = {"perception": (valid, masks.description), "reasoning": (valid, masks.reasoning),
                "reference": (invalid, masks.reference)}
    out = {}
    for role, (rows, mask) in plan.items():
        if not rows:
            continue
        contexts, tails, starts = [], [], []
        for i in rows:
            ex, p = examples[i], parsed[i]
            prefill, s0, end = T.segment_tail(role, p, t.reasoning_teacher_sees_description)
            contexts.append(T.context_text(processor, role, ex.problem, ex.answer, prefill=prefill))
            tails.append(p.token_ids[s0:end])
            starts.append(s0)
        batch = T.build_sequences(processor, contexts, [examples[i].image for i in rows], tails, starts, dtype=dtype,
                                  pack=pack)
        out[role] = (batch, mask[rows], rows)
    return out


def segment_kl_terms(
    model: Any, processor: Any, t: TrainConfig, examples: Sequence[Any], prompts: Sequence[str],
    parsed: Sequence[ParsedCompletion], device: torch.device, dtype: torch.dtype,
    timings: dict[str, float] | None = None, before_student: Callable[[int], Any] | None = None,
) -> dict[str, KLTerms]:
    """Teacher forwards (adapter off, no grad), then the student forward (adapter on, with grad) and the clipped
    KL of every scored token, computed from hidden states chunk by chunk (no [tokens, vocab] logits).

    Directions: perception / reasoning / OPSD: KL(teacher || student); reference: KL(student || teacher).
    `t.pack_sequences`: each forward's rows packed into one sequence (same values, no padding computed).
    `timings` (optional) accumulates seconds under "teachers" and "student". `before_student` (optional) is called
    with the student forward's positions (its input_ids.numel(), packed or padded) right before that forward: the
    trainer turns gradient checkpointing on or off there (`vigos.training.memory`).
    """
    timings = timings if timings is not None else {}
    terms: dict[str, KLTerms] = {}
    if not examples:
        return terms
    masks = build_segment_masks(parsed, device=device)
    clip = masks.clip_values(t.kl_token_clip, description_last_clip=t.description_last_token_clip,
                             reasoning_first_clip=t.reasoning_first_token_clip)
    weight = T.lm_parts(model)[1]

    t0 = time.perf_counter()
    batches = teacher_batches(processor, t, examples, parsed, masks, dtype)
    teacher_hidden = {role: T.teacher_hidden_states(model, batch.to(device)) for role, (batch, _, _) in batches.items()}
    timings["teachers"] = timings.get("teachers", 0.0) + time.perf_counter() - t0

    t0 = time.perf_counter()
    student = T.build_sequences(processor, prompts, [ex.image for ex in examples], [p.token_ids for p in parsed],
                                [0] * len(examples), dtype=dtype, pack=t.pack_sequences).to(device)
    if before_student is not None:
        before_student(student.input_ids.numel())
    h_student = T.hidden_states(model, student)
    for role, (batch, comp_mask, rows) in batches.items():
        full_mask = torch.zeros_like(masks.completion)
        full_mask[rows] = comp_mask
        student_pos = student.positions(full_mask)
        h_t = teacher_hidden[role]
        teacher_pos = batch.positions(comp_mask.to(device))
        reverse = role == "reference" and t.method == "vigos"  # the fallback teacher: KL(student || reference)
        source, target = (h_student, h_t) if reverse else (h_t, h_student)
        source_pos, target_pos = (student_pos, teacher_pos) if reverse else (teacher_pos, student_pos)
        terms[role] = chunked_clipped_token_kl(
            source, target, weight, source_pos, target_mask=target_pos, temperature=t.distill_temperature,
            clip=clip[full_mask], chunk_size=t.kl_chunk_size,
        )
    timings["student"] = timings.get("student", 0.0) + time.perf_counter() - t0
    return terms


def combine(
    terms: dict[str, KLTerms], counts: Sequence[float], t: TrainConfig, anchor: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = l_P * mean_P + l_R * mean_R + l_F * mean_F, each mean over `counts` tokens (all-reduced over ranks by
    the caller). An empty segment contributes `anchor` (a zero that keeps the graph connected).

    `method: opsd` has one privileged teacher, weighted 1 (docs/training.md): it only borrows the
    `reference` slot, not ViGOS's fallback weight `lambda_reference`."""
    reference_weight = 1.0 if t.method == "opsd" else t.lambda_reference
    lambdas = {"perception": t.lambda_perception, "reasoning": t.lambda_reasoning, "reference": reference_weight}
    parts = {k: (terms[k].sum / max(float(counts[i]), 1.0) if k in terms else anchor) for i, k in enumerate(SEGMENTS)}
    return anchor + sum(lambdas[k] * parts[k] for k in SEGMENTS), parts
