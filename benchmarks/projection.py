"""The arithmetic of `benchmarks/full_run.py` (pure functions, no torch): card specs and the scaling rule between
cards, the bandwidth limit of a decode step, MFU, order statistics of capped log-normal completion lengths, and the
projection of the paper's training run and of one evaluation from per-phase times.

Scaling rule (stated in full_run's output): a decode step reads every weight once, so its time scales with memory
bandwidth (ms x bw_source / bw_target); prefill, teacher and student passes and the optimizer scale with peak dense
bf16 FLOP/s (s x flops_source / flops_target). Both are what the card's limits allow, not measurements of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Card:
    name: str
    bandwidth: float
    """Memory bandwidth, bytes/s."""
    flops: float
    """Peak dense bf16 FLOP/s."""


CARDS: dict[str, Card] = {
    "A100": Card("A100-80GB SXM", 2.039e12, 312e12),
    "H100": Card("H100 SXM", 3.35e12, 989e12),
    "H200": Card("H200", 4.8e12, 989e12),
}


def card_for(device_name: str) -> Card | None:
    """The spec of a device named like torch.cuda.get_device_name ("NVIDIA H200"), or None (CPU, unknown card)."""
    return next((c for key, c in CARDS.items() if key in device_name), None)


def mfu(lm_params: int, tokens_per_s: float, peak_flops: float) -> float:
    """Model FLOPs utilisation of a training pass: 6 x N_lm x tokens/s / peak (the anchors' convention)."""
    return 6 * lm_params * tokens_per_s / peak_flops


def weight_bytes(lm_params: int, bytes_per_param: int = 2) -> float:
    """Bytes one decode step reads: every language-model weight once (bf16: 2 bytes each)."""
    return float(lm_params * bytes_per_param)


def bandwidth_limit_ms(weights: float, bandwidth: float) -> float:
    """The fastest possible decode step: the weights read once at the card's bandwidth."""
    return 1000.0 * weights / bandwidth


def bandwidth_ratio(weights: float, ms_per_step: float, bandwidth: float) -> float:
    """Fraction of the bandwidth limit a decode step reaches (1.0: the weights read at full bandwidth)."""
    return bandwidth_limit_ms(weights, bandwidth) / ms_per_step


# ------------------------------------------------------------------------------------------- completion lengths


@dataclass(frozen=True)
class LengthDist:
    """Completion lengths: log-normal with `median` and `sigma` (of the log), cut at `cap` (the max new tokens)."""

    median: float = 450.0
    sigma: float = 0.7
    cap: int = 4096

    def __post_init__(self) -> None:
        if self.median <= 0 or self.sigma <= 0 or self.cap < 1:
            raise ValueError(f"need median > 0, sigma > 0, cap >= 1; got {self}")

    def cdf(self, x: float) -> float:
        """P(length <= x) of the uncapped log-normal."""
        if x <= 0:
            return 0.0
        return 0.5 * (1.0 + math.erf((math.log(x) - math.log(self.median)) / (self.sigma * math.sqrt(2.0))))

    def quantile(self, p: float) -> float:
        return min(self.cap, self.median * math.exp(self.sigma * math.sqrt(2.0) * _erfinv(2.0 * p - 1.0)))

    def mean(self) -> float:
        """E[min(X, cap)] in closed form: E[X; X < c] + c P(X >= c)."""
        mu, s, c = math.log(self.median), self.sigma, self.cap
        below = math.exp(mu + s * s / 2) * _phi((math.log(c) - mu - s * s) / s)
        return below + c * (1.0 - self.cdf(c))

    def expected_max(self, n: int, points: int = 4096) -> float:
        """E[max of n independent capped draws] = integral over [0, cap] of 1 - F(x)^n (Simpson's rule)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        points += points % 2
        h = self.cap / points
        total = 0.0
        for i in range(points + 1):
            f = 1.0 - self.cdf(i * h) ** n
            total += f * (1 if i in (0, points) else 4 if i % 2 else 2)
        return total * h / 3.0

    def capped_fraction(self) -> float:
        return 1.0 - self.cdf(self.cap)


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _erfinv(y: float) -> float:
    """Inverse error function by Newton steps (enough for quantiles in a printout)."""
    x = 0.0
    for _ in range(60):
        err = math.erf(x) - y
        x -= err / (2.0 / math.sqrt(math.pi) * math.exp(-x * x))
    return x


# ---------------------------------------------------------------------------------------------- phase times


@dataclass
class Phases:
    """Per-phase times on one card (what `train_step.py --phases` measures, or what an older JSON allows)."""

    card: Card | None
    lm_params: int
    decode_ms: dict[int, float]
    """Batch size -> ms per decode step (one new token for each of the batch's rows)."""
    prefill_ms_per_token: dict[int, float] | None
    """Batch size -> prefill ms per prompt token of the batch; None: prefill included in `decode_ms`."""
    teacher_tps: float
    """Teacher forward (adapter off, no grad), tokens/s of its sequences (context + completion)."""
    student_tps: float
    """Student forward + clipped KL + backward, tokens/s of its sequences (prompt + completion)."""
    optimizer_s: float
    """Clip + optimizer step, seconds per optimizer step."""
    notes: list[str] = field(default_factory=list)

    def decode_at(self, batch: int) -> float:
        """ms per decode step at `batch`: linear between measured batch sizes, the nearest one outside them."""
        return _interpolate(self.decode_ms, batch)

    def prefill_s(self, batch: int, prompt_tokens: float) -> float:
        """Seconds to prefill `batch` prompts of `prompt_tokens` each (0 when included in the decode steps)."""
        if not self.prefill_ms_per_token:
            return 0.0
        return _interpolate(self.prefill_ms_per_token, batch) * prompt_tokens * batch / 1000.0

    def scaled_to(self, target: Card) -> Phases:
        """These phases on `target`: decode by memory bandwidth, everything else by peak FLOP/s."""
        if self.card is None:
            raise ValueError("the measured card is not in the spec table: name it (--source-card) to scale")
        bw, fl = self.card.bandwidth / target.bandwidth, self.card.flops / target.flops
        return replace(
            self, card=target,
            decode_ms={b: ms * bw for b, ms in self.decode_ms.items()},
            prefill_ms_per_token=None if self.prefill_ms_per_token is None
            else {b: ms * fl for b, ms in self.prefill_ms_per_token.items()},
            teacher_tps=self.teacher_tps / fl, student_tps=self.student_tps / fl, optimizer_s=self.optimizer_s * fl,
        )


def _interpolate(table: dict[int, float], x: int) -> float:
    keys = sorted(table)
    if x <= keys[0]:
        return table[keys[0]]
    if x >= keys[-1]:
        return table[keys[-1]]
    hi = next(k for k in keys if k >= x)
    lo = max(k for k in keys if k <= x)
    if hi == lo:
        return table[lo]
    return table[lo] + (table[hi] - table[lo]) * (x - lo) / (hi - lo)


def phases_from_json(data: dict[str, Any], steps_batch: int | None = None, card: Card | None = None) -> Phases:
    """Phases from a train_step.py JSON: its `phases` section (`--phases`), or else, for an older file, what its
    optimizer steps and fwd_bwd parts allow (each approximation named in `notes`).

    `steps_batch`: rollouts per step of the older file's optimizer steps (it did not record them).
    `card`: the measured card when its name is not in the spec table."""
    card = card or card_for(data.get("device", ""))
    if "phases" in data:
        p = data["phases"]
        if any(d["ms_per_step"] <= 0 for d in p["decode"]):
            raise ValueError("a decode step measured <= 0 ms (the long call was not slower than the 1-token one: a "
                             "noisy machine); measure again with a larger --decode-tokens")
        return Phases(
            card, int(p["lm_params"]),
            decode_ms={int(d["batch"]): d["ms_per_step"] for d in p["decode"]},
            prefill_ms_per_token={int(d["batch"]): d["prefill_ms_per_token"] for d in p["decode"]},
            teacher_tps=p["teacher"]["tokens_per_s"], student_tps=p["student"]["tokens_per_s"],
            optimizer_s=p["optimizer"]["seconds"],
        )
    steps, fb = data.get("optimizer_steps", {}).get("steps"), data.get("fwd_bwd")
    if not steps or not fb:
        raise ValueError("the JSON has neither `phases` (train_step.py --phases) nor optimizer_steps + fwd_bwd")
    batch = data.get("args", {}).get("prompts", steps_batch)
    if not batch:
        raise ValueError("this JSON does not record its rollouts per step: pass --steps-batch (the run's --prompts)")
    last = steps[-1]  # the first step includes the decode compile
    new_tokens = last["completion_tokens"] / batch
    share_t = last["time_teachers"] / (last["time_teachers"] + last["time_student"])
    combined = fb["ours"]["tokens_per_s"]
    return Phases(
        card, int(fb["lm_params"]),
        decode_ms={int(batch): 1000.0 * last["time_rollout"] / new_tokens},
        prefill_ms_per_token=None,
        teacher_tps=combined / share_t, student_tps=combined / (1.0 - share_t),
        optimizer_s=last["time_optimizer"],
        notes=[
            f"decode: ONE batch size measured ({batch}): {1000 * last['time_rollout'] / new_tokens:.1f} ms per step "
            f"= the rollout call's {last['time_rollout']:.2f} s / {new_tokens:.0f} tokens per row, prefill "
            "included; used for every batch size",
            f"teacher / student: fwd_bwd's {combined:,.0f} tokens/s (teacher forward + student fwd/bwd on one "
            f"{fb['tokens']}-token sequence) split {share_t:.1%} / {1 - share_t:.1%} as in the optimizer step's "
            "teacher and student times",
            f"optimizer: the last optimizer step's {last['time_optimizer'] * 1000:.0f} ms",
        ],
    )


# -------------------------------------------------------------------------------------------------- projection


@dataclass(frozen=True)
class TrainRun:
    steps: int = 1490
    rollouts: int = 32
    """Rollouts per optimizer step, over all GPUs (`train.global_batch_size`)."""
    gpus: int = 8
    prompt_tokens: float = 400.0
    valid_fraction: float = 1.0
    """Rollouts in the right format: two teacher forwards (perception, reasoning) over context + their segment,
    instead of the reference teacher's one over context + completion."""


def project_training(ph: Phases, run: TrainRun, lengths: LengthDist) -> dict[str, float]:
    """Seconds per phase of the whole run (wall clock; every GPU busy throughout).

    Each GPU samples its rollouts in one batched call (batch = rollouts / gpus) and every step waits for the
    longest of all `rollouts` (expected maximum of that many draws). The micro-steps (one rollout per GPU each)
    end in an all-reduce, so each waits for the longest of `gpus` rollouts; teacher and student times grow
    linearly with their tokens."""
    if run.rollouts % run.gpus:
        raise ValueError(f"{run.rollouts} rollouts do not split evenly over {run.gpus} GPUs")
    per_gpu = run.rollouts // run.gpus
    longest_step = lengths.expected_max(run.rollouts)
    longest_micro = lengths.expected_max(run.gpus)
    teacher_tokens = longest_micro + (1.0 + run.valid_fraction) * run.prompt_tokens
    student_tokens = longest_micro + run.prompt_tokens
    return {
        "rollout": run.steps * (ph.prefill_s(per_gpu, run.prompt_tokens)
                                + longest_step * ph.decode_at(per_gpu) / 1000.0),
        "teachers": run.steps * per_gpu * teacher_tokens / ph.teacher_tps,
        "student": run.steps * per_gpu * student_tokens / ph.student_tps,
        "optimizer": run.steps * ph.optimizer_s,
    }


def eval_sequences(benchmarks: dict[str, tuple[int, int]]) -> int:
    """Sequences of one evaluation: sum of questions x samples, from {name: (questions, samples)}."""
    return sum(q * s for q, s in benchmarks.values())


def project_eval(ph: Phases, sequences: int, gpus: int, batch: int, prompt_tokens: float,
                 lengths: LengthDist) -> dict[str, float]:
    """Seconds of one evaluation with the engine backend, data-parallel: each GPU generates its share in calls of
    `batch` sequences, each call as long as its longest (capped at the eval's max new tokens)."""
    calls = math.ceil(math.ceil(sequences / gpus) / batch)
    return {"generate": calls * (ph.prefill_s(batch, prompt_tokens)
                                 + lengths.expected_max(batch) * ph.decode_at(batch) / 1000.0)}
