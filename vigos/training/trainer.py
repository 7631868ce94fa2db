"""The ViGOS trainer: on-policy rollouts, segment-wise frozen teachers, clipped KL, DeepSpeed ZeRO-2 LoRA.

A loop on `deepspeed.initialize`, not an HF `Trainer` subclass, because one optimizer step here is: sample every
rollout of the step from the current weights in ONE batched generation call, then run the micro-steps over them.
The HF Trainer owns the micro-step loop (a rollout per `training_step` would break "all rollouts of a step come
from the same weights" and batch generation badly), and its checkpoints hold no data position. Here a checkpoint
is adapter + optimizer + scheduler (DeepSpeed) + every rank's RNG + the step (which fixes the data position) + the
metric history, committed by a marker (`checkpoint.py`), and a restarted run resumes from the newest complete one.

Data layout: an epoch is ceil(N / G) optimizer steps over a seeded per-epoch permutation of the N rows, G =
`train.global_batch_size` = micro-batch x accumulation x world size. Step `s` is step k = s mod ceil(N/G) of its
epoch and takes that epoch's positions `[k*G, min((k+1)*G, N))`: every row once per epoch, the last step short
when G does not divide N. Rank r's micro-step m takes the step's positions `(m*world + r)*micro` onwards, and row
seeds depend on the global position only. So 1 process with micro-batch 2 and 2 processes with micro-batch 1 see
the same rows, sample the same rollouts and, with token counts all-reduced, compute the same loss.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from vigos.config import ConfigError, TrainConfig, VigosConfig
from vigos.errors import VigosError, disk_error, disk_writes
from vigos.progress import duration
from vigos.training import checkpoint
from vigos.training import teachers as T
from vigos.training.distributed import DistInfo, all_reduce_sum, barrier, init_distributed
from vigos.training.objective import SEGMENTS, combine, segment_kl_terms
from vigos.training.segments import ParsedCompletion, parse_completion

CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"


class MetricsLogger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None: ...

    def log_params(self, params: dict[str, Any]) -> None: ...


class NullLogger:
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        pass

    def log_params(self, params: dict[str, Any]) -> None:
        pass


@dataclass
class Example:
    position: int  # global position in the run's data order (fixes the rollout seed)
    row: int  # row in the dataset
    problem: str
    answer: str
    image: Any
    options: list[str] | None = None  # multiple-choice option texts, when the row has them (for grading)


@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0


def deepspeed_config(cfg: VigosConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config for `world_size` ranks, generated from the typed config (no "auto" values:
    `train_batch_size: auto` breaks multi-rank CPU runs, and every number should come from one place). The
    accumulation is derived from `train.global_batch_size` (ConfigError when the numbers cannot make it)."""
    t = cfg.train
    return {
        "train_micro_batch_size_per_gpu": t.per_device_train_batch_size,
        "gradient_accumulation_steps": t.accumulation_steps(world_size),
        "gradient_clipping": t.max_grad_norm,
        "bf16": {"enabled": t.bf16},
        "zero_optimization": {
            "stage": t.zero_stage,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_bucket_size": 200_000_000,
            "allgather_bucket_size": 200_000_000,
        },
        "zero_allow_untested_optimizer": True,  # the client optimizer is torch's (fused) AdamW
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def check_train_config(cfg: VigosConfig, world_size: int) -> int:
    """The run's gradient accumulation; ConfigError (naming the field and the fix) for settings that cannot run
    on `world_size` ranks. Cheap: called before any model or data is loaded."""
    t = cfg.train
    if t.save_total_limit < 1:
        raise ConfigError(f"train.save_total_limit is {t.save_total_limit}; it must be >= 1 (the newest checkpoint "
                          "is what a preempted run resumes from)")
    return t.accumulation_steps(world_size)


def steps_per_epoch(num_rows: int, global_batch: int) -> int:
    """Optimizer steps that see each of `num_rows` rows once (the last one short when `global_batch` does not
    divide `num_rows`)."""
    return max(1, math.ceil(num_rows / global_batch))


def total_steps(t: TrainConfig, num_rows: int) -> int:
    """Optimizer steps of the run: `max_steps` when > 0, else ceil(num_train_epochs x steps per epoch)."""
    if t.max_steps > 0:
        return t.max_steps
    # the epsilon keeps float noise (0.1 * 30 = 3.0000000000000004) from adding a step
    return max(1, math.ceil(t.num_train_epochs * steps_per_epoch(num_rows, t.global_batch_size) - 1e-9))


def step_positions(step: int, num_rows: int, global_batch: int) -> range:
    """Global data positions (epoch * num_rows + offset, see `TrainData.row_at`) of optimizer step `step`. They
    stop at the end of the step's epoch, so no step mixes two epochs' permutations and no row repeats in an epoch."""
    epoch, k = divmod(step, steps_per_epoch(num_rows, global_batch))
    first = epoch * num_rows
    return range(first + k * global_batch, first + min((k + 1) * global_batch, num_rows))


def micro_batch_positions(
    step: int, num_rows: int, *, micro: int, accumulation: int, rank: int, world: int
) -> list[list[int]]:
    """Rank `rank`'s positions for each of the `accumulation` micro-steps of `step`: the step's slots
    `(m*world + rank)*micro` onwards. Slots are global, so the split does not depend on how micro x world is
    factored; on a short step the trailing micro-batches (even a whole rank's) are empty."""
    positions = step_positions(step, num_rows, micro * accumulation * world)
    return [list(positions[(m * world + rank) * micro:][:micro]) for m in range(accumulation)]


class TrainData:
    """The prepared dataset (data prep's `save_to_disk` output) in the run's deterministic order."""

    def __init__(self, dataset_dir: str | Path, seed: int):
        import datasets

        self.ds = datasets.load_from_disk(str(dataset_dir))
        if len(self.ds) == 0:
            raise VigosError(f"{dataset_dir}: the prepared dataset is empty")
        missing = [c for c in ("problem", "images", "answer") if c not in self.ds.column_names]
        if missing:
            raise VigosError(f"{dataset_dir}: not a prepared dataset (missing {missing}); run `vigos data prepare`")
        self.seed = seed
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.ds)

    def row_at(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.ds))
        if epoch not in self._orders:
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.ds))
        return int(self._orders[epoch][offset])

    def example(self, position: int) -> Example | None:
        """The example at `position`, or None when its image cannot be decoded (the caller counts it)."""
        row = self.row_at(position)
        try:
            record = self.ds[row]
            image = record["images"][0].convert("RGB")
        except Exception:  # noqa: BLE001 - any decode failure of one row must not stop a multi-hour run
            return None
        return Example(position, row, record["problem"], record["answer"], image, record.get("options") or None)


def rollout_correct(completion: str, reference: str, options: Sequence[str] | None = None) -> bool:
    """The logged verifier (never in the loss): the completion's LAST boxed answer anywhere, graded against the
    reference exactly as evaluation grades (score.py's extraction, answer type and rule grader), so training
    accuracy and benchmark accuracy agree (`0.5` answers `1/2`). `reference` is data prep's normalised answer."""
    from vigos.data.answers import answer_type
    from vigos.evaluation.extract import extract_answer
    from vigos.evaluation.grade import grade

    return grade(extract_answer(completion), reference, answer_type(reference, options), options)


def prune_checkpoints(output_dir: Path) -> int:
    """Delete a finished training's checkpoints (the final adapter stays); returns the bytes freed. For after the
    adapter is merged: a 7B run's ZeRO-2 checkpoints are tens of GB each on the shared volume."""
    import shutil

    folder = Path(output_dir) / CHECKPOINTS
    if not folder.is_dir():
        return 0
    freed = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    shutil.rmtree(folder)
    return freed


class ViGOSTrainer:
    def __init__(
        self,
        cfg: VigosConfig,
        dataset_dir: str | Path,
        output_dir: str | Path,
        *,
        logger: MetricsLogger | None = None,
        interrupt_after_step: int | None = None,
        progress: bool = True,
        engine: Any | None = None,
    ):
        self.cfg = cfg
        self.t = cfg.train
        self.output_dir = Path(output_dir)
        self.logger = logger or NullLogger()
        self.interrupt_after_step = interrupt_after_step  # tests: simulate a preemption after this checkpoint
        self.progress = progress
        self._engine_override = engine  # a generation Engine (tests: fixed rollouts); default HFEngine
        self.dist: DistInfo = init_distributed()
        # config checks first: a batch that cannot be made, or a bad checkpoint limit, fails before any loading
        self.accumulation = check_train_config(cfg, self.dist.world_size)
        self.global_batch = self.t.global_batch_size  # == micro-batch x accumulation x world size, checked above
        self.data = TrainData(dataset_dir, self.t.seed)
        self.total_steps = total_steps(self.t, len(self.data))
        self._build()

    # ---------------------------------------------------------------------------------------------- setup

    def _build(self) -> None:
        import deepspeed
        from transformers import get_scheduler

        from vigos.generation import HFEngine
        from vigos.modeling.kernels import use_fused_kernels
        from vigos.modeling.load import load_model, load_processor
        from vigos.modeling.lora import apply_lora
        from vigos.training.memory import CheckpointSwitch, resolve_checkpointing

        _seed_everything(self.t.seed)  # same LoRA init on every rank
        self.processor = load_processor(self.cfg.model, padding_side="left")
        kernels, kernels_line = use_fused_kernels(self.t.fused_kernels, self.dist.device.type)  # before loading
        model = load_model(self.cfg.model, device=self.dist.device)
        model = apply_lora(model, self.cfg.lora)
        # decided on the LoRA model before DeepSpeed (whose gradient hooks a probe backward would feed); applied per
        # micro-step from its student forward's length (`_checkpoint_for`)
        self.checkpointing = resolve_checkpointing(self.cfg, model, self.dist.device)
        self._switch = CheckpointSwitch(model) if self.checkpointing.may_checkpoint else None
        if self.dist.is_main:
            print(kernels_line, flush=True)
            print(self.checkpointing.log_line(), flush=True)
            self.logger.log_params({"train.fused_kernels_used": kernels, **self.checkpointing.params()})
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=self.t.learning_rate, weight_decay=self.t.weight_decay,
            fused=self.dist.device.type == "cuda",
        )
        scheduler = get_scheduler(self.t.lr_scheduler_type, optimizer, num_warmup_steps=self.t.warmup_steps,
                                  num_training_steps=self.total_steps)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler,
            config=deepspeed_config(self.cfg, self.dist.world_size),
        )
        checkpoint.install(self.engine)  # fsynced files, weights-only loads
        self.model = self.engine.module  # the PEFT model (ZeRO-2 keeps parameters whole on every rank)
        self.dtype = next(self.model.parameters()).dtype
        self.generator = self._engine_override or HFEngine(
            self.model, self.processor, batch_size=max(1, min(32, self._rows_per_rank())),
            decode=self.cfg.model.decode_loop,
        )
        from vigos.generation import SamplingParams

        self.sampling = SamplingParams.from_train(self.t)
        self.eos_ids = getattr(self.generator, "eos_token_ids", None) or _eos_ids(self.model)

    def _rows_per_rank(self) -> int:
        return self.t.per_device_train_batch_size * self.accumulation

    # ---------------------------------------------------------------------------------------------- loop

    def train(self) -> TrainResult:
        start_step, history = self._resume()  # the history of the steps before start_step, from the checkpoint
        bar = None
        if self.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=start_step, desc="train", unit="step")
        # plain lines every train.logging_steps where no terminal shows the bar (a pod log, a file, the demo)
        lines = self.dist.is_main and (bar is None or not sys.stderr.isatty())
        started = time.monotonic()
        for step in range(start_step, self.total_steps):
            metrics = self._optimizer_step(step)
            history.append(metrics)
            if self.dist.is_main:
                self.logger.log_metrics(metrics, step + 1)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.3g}", valid=f"{metrics['format_valid_rate']:.2f}")
            done = step + 1
            if lines and (done % self.t.logging_steps == 0 or done == self.total_steps):
                per_step = (time.monotonic() - started) / (done - start_step)
                print(f"[vigos] train step {done}/{self.total_steps}: loss {metrics['loss']:.4g}, format-valid "
                      f"{metrics['format_valid_rate']:.2f}, {per_step:.1f} s/step, about "
                      f"{duration(per_step * (self.total_steps - done))} left", flush=True)
            if done % self.t.save_steps == 0 or done == self.total_steps:
                self._save_checkpoint(done, history)
            if self.interrupt_after_step is not None and done == self.interrupt_after_step:
                raise KeyboardInterrupt(f"interrupted after step {done} (test preemption)")
        if bar is not None:
            bar.close()
        if self.dist.is_main:  # saving and shutting DeepSpeed down take a while: say so, not a silent minute
            print(f"[vigos] training done ({self.total_steps} steps); writing the final adapter to "
                  f"{self.output_dir / ADAPTER}", flush=True)
        adapter_dir = self._save_final()
        if self.dist.is_main:
            state = {"steps": self.total_steps, "resumed_from": start_step, "history": history}
            checkpoint.write_durable(self.output_dir / "trainer_state.json", json.dumps(state, indent=1))
        return TrainResult(adapter_dir, self.total_steps, history, resumed_from=start_step)

    def _examples(self, step: int) -> list[list[Example | None]]:
        """This rank's micro-batches of optimizer step `step` (None where an image failed to decode)."""
        micro = micro_batch_positions(step, len(self.data), micro=self.t.per_device_train_batch_size,
                                      accumulation=self.accumulation, rank=self.dist.rank, world=self.dist.world_size)
        return [[self.data.example(p) for p in mb] for mb in micro]

    def _active_micro_steps(self, step: int) -> int:
        """Micro-steps of `step` that hold a row on some rank (all of them except on an epoch's short last step)."""
        rows = len(step_positions(step, len(self.data), self.global_batch))
        return max(1, math.ceil(rows / (self.t.per_device_train_batch_size * self.dist.world_size)))

    def _row_seed(self, position: int) -> int:
        return self.t.seed * 1_000_003 + position

    def _optimizer_step(self, step: int) -> dict[str, float]:
        from vigos.generation import GenerationRequest

        timings: dict[str, float] = defaultdict(float)
        micro = self._examples(step)
        active = self._active_micro_steps(step)
        skipped = sum(ex is None for mb in micro for ex in mb)  # decode failures only: a short step has no Nones
        micro = [[ex for ex in mb if ex is not None] for mb in micro]
        flat = [ex for mb in micro for ex in mb]

        # 1. rollouts: every rollout of this step, one batched call, current weights (LoRA on, eval mode)
        t0 = time.perf_counter()
        prompts = [T.context_text(self.processor, "student", ex.problem, ex.answer,
                                  student_prompt=self.cfg.prompt.student) for ex in flat]
        requests = [GenerationRequest(p, [ex.image], self._row_seed(ex.position)) for p, ex in zip(prompts, flat, strict=False)]
        results = self.generator.generate(requests, self.sampling)
        parsed = [parse_completion(self.processor, r.token_ids, eos_token_ids=self.eos_ids) for r in results]
        timings["rollout"] += time.perf_counter() - t0

        # 2-4. micro-steps: teachers, clipped KL, backward (DeepSpeed accumulates and steps at the boundary)
        sums: dict[str, float] = defaultdict(float)
        i = 0
        for mb in micro:
            mb_parsed, mb_prompts = parsed[i : i + len(mb)], prompts[i : i + len(mb)]
            i += len(mb)
            stats = self._micro_step(mb, mb_prompts, mb_parsed, timings, active)
            for k, v in stats.items():
                sums[k] += v
        grad_norm = self.engine.get_global_grad_norm()
        lr = self.scheduler.get_last_lr()[0] if hasattr(self.scheduler, "get_last_lr") else self.t.learning_rate

        # metrics: rollout statistics summed over ranks
        correct_rows = [rollout_correct(p.text, ex.answer, ex.options) for p, ex in zip(parsed, flat, strict=True)]
        local = torch.tensor([
            len(parsed), sum(p.valid for p in parsed), sum(p.truncated for p in parsed), sum(correct_rows),
            sum(p.num_tokens for p in parsed),
            sum(p.description_tokens[1] - p.description_tokens[0] for p in parsed if p.valid),
            sum(p.reasoning_tokens[1] - p.reasoning_tokens[0] for p in parsed if p.valid),
            skipped,
        ], dtype=torch.float64)
        n, valid, truncated, correct, comp_tok, desc_tok, reas_tok, skipped_all = all_reduce_sum(local).tolist()
        step_time = sum(timings.values())
        metrics = {  # micro-step means over the micro-steps that held rows (`active` >= 1)
            "loss": sums["loss"] / active,
            **{f"loss_{k}": sums[f"loss_{k}"] / active for k in SEGMENTS},
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "learning_rate": float(lr),
            "format_valid_rate": valid / max(n, 1),
            "answer_accuracy": correct / max(n, 1),
            "truncated_rate": truncated / max(n, 1),
            "completion_length": comp_tok / max(n, 1),
            "description_length": desc_tok / max(valid, 1),
            "reasoning_length": reas_tok / max(valid, 1),
            "skipped_rows": skipped_all,
            **{f"clipped_token_fraction_{k}": sums[f"clipped_{k}"] / max(sums[f"tokens_{k}"], 1) for k in SEGMENTS},
            **{f"{k}_seconds": v for k, v in timings.items()},
            "tokens_per_second": comp_tok / max(step_time, 1e-9) / self.dist.world_size,
            # student forwards (over ranks and micro-steps) that recomputed their activations in the backward
            "checkpointed_micro_step_fraction": sums["checkpointed"] / max(sums["student_forwards"], 1),
        }
        if self.dist.is_main and self.t.sample_log_steps > 0 and (step + 1) % self.t.sample_log_steps == 0:
            self._log_samples(step + 1, flat, parsed, correct_rows)
        return metrics

    def _micro_step(
        self, examples: Sequence[Example], prompts: Sequence[str], parsed: Sequence[ParsedCompletion],
        timings: dict[str, float], active: int,
    ) -> dict[str, float]:
        t = self.t
        self.engine.train()
        checkpointed: list[bool] = []  # one entry if this rank ran a student forward
        terms = segment_kl_terms(self.model, self.processor, t, examples, prompts, parsed, self.dist.device,
                                 self.dtype, timings, lambda n: checkpointed.append(self._checkpoint_for(n)))
        t0 = time.perf_counter()

        # token means over the whole data-parallel micro-step: counts summed over ranks
        counts = all_reduce_sum(torch.tensor([float(terms[k].count) if k in terms else 0.0 for k in SEGMENTS]))
        anchor = sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0  # keeps a graph when empty
        loss, parts = combine(terms, counts.tolist(), t, anchor)
        # DeepSpeed averages gradients over ranks and divides by the accumulation steps: scale by the world size
        # so the gradient is that of the global token mean, and by accumulation / active micro-steps so an epoch's
        # short last step (empty trailing micro-steps) averages over the micro-steps it has, like any other step.
        self.engine.backward(loss * (self.dist.world_size * self.accumulation / active))
        timings["student"] += time.perf_counter() - t0

        t0 = time.perf_counter()
        self.engine.step()  # steps the optimizer and scheduler only at the accumulation boundary
        timings["optimizer"] += time.perf_counter() - t0

        local = torch.tensor(
            [loss.item(), *[parts[k].item() for k in SEGMENTS],
             *[float(terms[k].num_clipped) if k in terms else 0.0 for k in SEGMENTS],
             float(sum(checkpointed)), float(len(checkpointed))], dtype=torch.float64
        )
        g = all_reduce_sum(local).tolist()
        # OPSD routes its one teacher through the "reference" slot with forward KL; report it as loss_reference
        out = {"loss": g[0], "loss_perception": g[1], "loss_reasoning": g[2], "loss_reference": g[3]}
        for i, k in enumerate(SEGMENTS):
            out[f"clipped_{k}"] = g[4 + i]
            out[f"tokens_{k}"] = counts[i].item()
        out["checkpointed"], out["student_forwards"] = g[7], g[8]
        return out

    def _checkpoint_for(self, tokens: int) -> bool:
        """Gradient checkpointing on or off for a student forward of `tokens` positions; returns which."""
        on = self.checkpointing.checkpoint(tokens)
        if self._switch is not None:
            self._switch.set(on)
        return on

    # ---------------------------------------------------------------------------------------------- I/O

    def _log_samples(self, step: int, examples: Sequence[Example], parsed: Sequence[ParsedCompletion],
                     correct: Sequence[bool]) -> None:
        folder = self.output_dir / "rollouts"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step-{step:06d}.jsonl"
        with open(path, "w") as f:
            for ex, p, ok in zip(examples, parsed, correct, strict=True):
                seg = p.segments
                f.write(json.dumps({
                    "step": step, "row": ex.row, "problem": ex.problem, "reference": ex.answer,
                    "completion": p.text, "valid": seg.valid, "invalid_reason": seg.reason,
                    "description": p.text[slice(*seg.description)] if seg.description else None,
                    "reasoning": p.text[slice(*seg.reasoning)] if seg.reasoning else None,
                    "answer": seg.answer, "correct": ok,
                    "truncated": p.truncated, "num_tokens": p.num_tokens,
                }) + "\n")
        self.logger.log_artifact(str(path), "rollouts")

    def _save_checkpoint(self, step: int, history: list[dict[str, float]]) -> None:
        """Write checkpoint `step-<step>` (DeepSpeed files, every rank's RNG state, the adapter, the metric history),
        then commit it (`checkpoint.commit`). Until the marker is written the checkpoint does not count, so a kill
        or a full disk anywhere in here leaves the previous one to resume from."""
        folder = self.output_dir / CHECKPOINTS
        ckpt = folder / f"step-{step}"
        try:
            if self.dist.is_main:
                checkpoint.discard(ckpt)  # an interrupted save of this step, or a torn one a resume skipped
            barrier()
            checkpoint.fault_point("begin")
            self.engine.save_checkpoint(str(folder), tag=ckpt.name, client_state={"step": step},
                                        exclude_frozen_parameters=True, save_latest=False)
            checkpoint.save_torch(_rng_state(), ckpt / checkpoint.rng_file(self.dist.rank))
            if self.dist.is_main:
                self.model.save_pretrained(str(ckpt / ADAPTER))
                checkpoint.fault_point(ADAPTER)
                checkpoint.write_durable(ckpt / checkpoint.HISTORY, json.dumps(history))
                checkpoint.fault_point(checkpoint.HISTORY)
            barrier()  # every rank's files are written
            if self.dist.is_main:
                checkpoint.commit(ckpt, step, self.dist.world_size)
                self._rotate_checkpoints(folder, step)
                checkpoint.fault_point("rotated")
        except OSError as e:  # a full or read-only disk: the folder, its free space (`disk_error`)
            why = disk_error(e, folder) or e
            raise VigosError(f"could not write checkpoint {ckpt} ({why}); it does not count, a rerun resumes from the "
                             f"previous complete one in {folder} (free space first if the disk is full)") from e
        barrier()

    def _rotate_checkpoints(self, folder: Path, newest: int) -> None:
        """Delete what `checkpoint.to_delete` names: interrupted saves, torn checkpoints past `newest`, and the
        committed ones beyond the newest `train.save_total_limit` (main rank, right after committing `newest`).

        Rotation runs only here, right after this run committed a checkpoint newer than the one it resumed from,
        so the resumed checkpoint is never deleted before a newer one exists."""
        for old in checkpoint.to_delete(folder, self.t.save_total_limit, newest):
            try:
                checkpoint.discard(old)
            except OSError as e:  # a full-disk warning beats losing a multi-hour run to a cleanup failure
                print(f"[vigos] warning: could not delete old checkpoint {old}: {e}", flush=True)

    def _resume(self) -> tuple[int, list[dict[str, float]]]:
        """(step, metric history) of the newest complete checkpoint, loaded into the engine and the RNGs; (0, [])
        when there is none. Torn or interrupted newer ones are skipped with a warning (rank 0)."""
        folder = self.output_dir / CHECKPOINTS
        warn = (lambda m: print(f"[vigos] warning: {m}", flush=True)) if self.dist.is_main else (lambda m: None)
        found = checkpoint.newest_complete(folder, warn)
        if found is None:
            if checkpoint.step_folders(folder):
                warn(f"no complete checkpoint in {folder}; training starts from step 0")
            return 0, []
        ckpt, marker = found
        if marker["world_size"] != self.dist.world_size:  # each rank resumes its own RNG stream: not skippable
            raise VigosError(f"checkpoint {ckpt} was saved by {marker['world_size']} process(es), this run has "
                             f"{self.dist.world_size}; rerun with {marker['world_size']}, or delete {folder} to start over")
        fix = f"delete {ckpt} to resume from the checkpoint before it, or {folder} to start over"
        try:  # verified against its marker, so a failure here is not a torn file but a checkpoint we cannot read
            load_path, client = self.engine.load_checkpoint(
                str(folder), tag=ckpt.name, load_module_strict=False, load_optimizer_states=True,
                load_lr_scheduler_states=True)
            rng = checkpoint.load_torch(ckpt / checkpoint.rng_file(self.dist.rank))
            _set_rng_state(rng)
            history = json.loads((ckpt / checkpoint.HISTORY).read_text())
        except Exception as e:  # noqa: BLE001 - one line naming the checkpoint, not DeepSpeed's bare assert
            raise VigosError(f"could not load checkpoint {ckpt} ({type(e).__name__}: {e}); {fix}") from e
        if load_path is None:
            raise VigosError(f"could not load checkpoint {ckpt}; {fix}")
        step = int(client["step"])
        if step != marker["step"] or len(history) != step:
            raise VigosError(f"checkpoint {ckpt} holds step {step} and {len(history)} steps of history, its "
                             f"{checkpoint.MARKER} says step {marker['step']}; {fix}")
        if self.dist.is_main:
            print(f"[vigos] resumed from {ckpt} (step {step} of {self.total_steps})", flush=True)
        return step, history

    def _save_final(self) -> Path:
        out = self.output_dir / ADAPTER
        if self.dist.is_main:
            tmp = self.output_dir / f".{ADAPTER}.tmp"
            with disk_writes(self.output_dir):
                self.model.save_pretrained(str(tmp))
                self.processor.save_pretrained(str(tmp))
            (tmp / "vigos_train_config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
            device = torch.cuda.get_device_name(self.dist.device) if self.dist.device.type == "cuda" else "cpu"
            info = {"world_size": self.dist.world_size, "device": device, "steps": self.total_steps}
            (tmp / "vigos_train_info.json").write_text(json.dumps(info, indent=2))
            if out.exists():
                import shutil

                shutil.rmtree(out)
            os.replace(tmp, out)
        barrier()
        return out


def _eos_ids(model: Any) -> tuple[int, ...]:
    eos = model.generation_config.eos_token_id
    return tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """Every RNG of this process in a form `torch.load(weights_only=True)` reads back: tensors, ints, floats, lists
    (numpy's key as an int64 tensor, not a pickled array)."""
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": [version, list(mt), gauss],
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)), "pos": np_state["state"]["pos"],
                  "has_gauss": np_state["has_gauss"], "gauss": np_state["gauss"]},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "state": {"key": n["key"].numpy().astype(np.uint32),
                                                                "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
