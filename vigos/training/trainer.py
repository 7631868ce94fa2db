"""The ViGOS trainer: on-policy rollouts, segment-wise frozen teachers, clipped KL, DeepSpeed ZeRO-2 LoRA.

A loop on `deepspeed.initialize`, not an HF `Trainer` subclass, because one optimizer step here is: sample every
rollout of the step from the current weights in ONE batched generation call, then run the micro-steps over them.
The HF Trainer owns the micro-step loop (a rollout per `training_step` would break "all rollouts of a step come
from the same weights" and batch generation badly), and its checkpoints hold no data position. Here a checkpoint
is adapter + optimizer + scheduler (DeepSpeed) + every rank's RNG + the step (which fixes the data position), and
a restarted run resumes from the latest one automatically.

Data layout: the rows of optimizer step `s` are positions `[s*G, (s+1)*G)` of a seeded per-epoch permutation,
G = micro-batch x accumulation x world size; rank r's micro-step m takes positions `(m*world + r)*micro` onwards,
and row seeds depend on the global position only. So 1 process with micro-batch 2 and 2 processes with
micro-batch 1 see the same rows, sample the same rollouts and, with token counts all-reduced, compute the same loss.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from vigos.config import VigosConfig
from vigos.errors import VigosError
from vigos.training import teachers as T
from vigos.training.distributed import DistInfo, all_reduce_sum, barrier, init_distributed
from vigos.training.objective import SEGMENTS, combine, segment_kl_terms
from vigos.training.segments import ParsedCompletion, parse_completion

CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"


class MetricsLogger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None: ...


class NullLogger:
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        pass


@dataclass
class Example:
    position: int  # global position in the run's data order (fixes the rollout seed)
    row: int  # row in the dataset
    problem: str
    answer: str
    image: Any


@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0


def deepspeed_config(cfg: VigosConfig) -> dict[str, Any]:
    """The DeepSpeed config, generated from the typed config (no "auto" values: `train_batch_size: auto` breaks
    multi-rank CPU runs, and every number should come from one place)."""
    t = cfg.train
    return {
        "train_micro_batch_size_per_gpu": t.per_device_train_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
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
        return Example(position, row, record["problem"], record["answer"], image)


def answers_match(predicted: str | None, reference: str) -> bool:
    """Verifier for logging only (never in the loss): case/space-insensitive match, numbers within 1e-6."""
    if predicted is None:
        return False
    from vigos.data.answers import normalize_answer

    a, b = (re.sub(r"\s+", " ", normalize_answer(x)).strip().casefold() for x in (predicted, reference))
    if a == b:
        return True
    try:
        return math.isclose(float(a.replace(",", "")), float(b.replace(",", "")), rel_tol=1e-6, abs_tol=1e-9)
    except ValueError:
        return False


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
        self.data = TrainData(dataset_dir, self.t.seed)
        self.global_batch = self.t.per_device_train_batch_size * self.t.gradient_accumulation_steps * self.dist.world_size
        if self.t.max_steps > 0:
            self.total_steps = self.t.max_steps
        else:
            self.total_steps = max(1, math.ceil(self.t.num_train_epochs * len(self.data) / self.global_batch))
        self._build()

    # ---------------------------------------------------------------------------------------------- setup

    def _build(self) -> None:
        import deepspeed
        from transformers import get_scheduler

        from vigos.generation import HFEngine
        from vigos.modeling.load import load_model, load_processor
        from vigos.modeling.lora import apply_lora

        _seed_everything(self.t.seed)  # same LoRA init on every rank
        self.processor = load_processor(self.cfg.model, padding_side="left")
        model = load_model(self.cfg.model, device=self.dist.device)
        if self.t.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = apply_lora(model, self.cfg.lora)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=self.t.learning_rate, weight_decay=self.t.weight_decay,
            fused=self.dist.device.type == "cuda",
        )
        scheduler = get_scheduler(self.t.lr_scheduler_type, optimizer, num_warmup_steps=self.t.warmup_steps,
                                  num_training_steps=self.total_steps)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(self.cfg)
        )
        self.model = self.engine.module  # the PEFT model (ZeRO-2 keeps parameters whole on every rank)
        self.dtype = next(self.model.parameters()).dtype
        self.generator = self._engine_override or HFEngine(
            self.model, self.processor, batch_size=max(1, min(32, self._rows_per_rank()))
        )
        from vigos.generation import SamplingParams

        self.sampling = SamplingParams.from_train(self.t)
        self.eos_ids = getattr(self.generator, "eos_token_ids", None) or _eos_ids(self.model)

    def _rows_per_rank(self) -> int:
        return self.t.per_device_train_batch_size * self.t.gradient_accumulation_steps

    # ---------------------------------------------------------------------------------------------- loop

    def train(self) -> TrainResult:
        start_step = self._resume()
        history: list[dict[str, float]] = []
        bar = None
        if self.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=start_step, desc="train", unit="step")
        for step in range(start_step, self.total_steps):
            metrics = self._optimizer_step(step)
            history.append(metrics)
            if self.dist.is_main:
                self.logger.log_metrics(metrics, step + 1)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.3g}", valid=f"{metrics['format_valid_rate']:.2f}")
            done = step + 1
            if done % self.t.save_steps == 0 or done == self.total_steps:
                self._save_checkpoint(done)
            if self.interrupt_after_step is not None and done == self.interrupt_after_step:
                raise KeyboardInterrupt(f"interrupted after step {done} (test preemption)")
        if bar is not None:
            bar.close()
        adapter_dir = self._save_final()
        if self.dist.is_main:
            state = {"steps": self.total_steps, "resumed_from": start_step, "history": history}
            _atomic_write(self.output_dir / "trainer_state.json", json.dumps(state, indent=1))
        return TrainResult(adapter_dir, self.total_steps, history, resumed_from=start_step)

    def _examples(self, step: int) -> list[list[Example | None]]:
        """This rank's micro-batches of optimizer step `step` (None where an image failed to decode)."""
        pd, world = self.t.per_device_train_batch_size, self.dist.world_size
        base = step * self.global_batch
        micro = []
        for m in range(self.t.gradient_accumulation_steps):
            first = base + (m * world + self.dist.rank) * pd
            micro.append([self.data.example(first + k) for k in range(pd)])
        return micro

    def _row_seed(self, position: int) -> int:
        return self.t.seed * 1_000_003 + position

    def _optimizer_step(self, step: int) -> dict[str, float]:
        from vigos.generation import GenerationRequest

        timings: dict[str, float] = defaultdict(float)
        micro = self._examples(step)
        skipped = sum(ex is None for mb in micro for ex in mb)
        micro = [[ex for ex in mb if ex is not None] for mb in micro]
        flat = [ex for mb in micro for ex in mb]

        # 1. rollouts: every rollout of this step, one batched call, current weights (LoRA on, eval mode)
        t0 = time.perf_counter()
        prompts = [T.context_text(self.processor, "student", ex.problem, ex.answer) for ex in flat]
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
            stats = self._micro_step(mb, mb_prompts, mb_parsed, timings)
            for k, v in stats.items():
                sums[k] += v
        grad_norm = self.engine.get_global_grad_norm()
        lr = self.scheduler.get_last_lr()[0] if hasattr(self.scheduler, "get_last_lr") else self.t.learning_rate

        # metrics: rollout statistics summed over ranks
        local = torch.tensor([
            len(parsed), sum(p.valid for p in parsed), sum(p.truncated for p in parsed),
            sum(answers_match(p.segments.answer, ex.answer) for p, ex in zip(parsed, flat, strict=False)),
            sum(p.num_tokens for p in parsed),
            sum(p.description_tokens[1] - p.description_tokens[0] for p in parsed if p.valid),
            sum(p.reasoning_tokens[1] - p.reasoning_tokens[0] for p in parsed if p.valid),
            skipped,
        ], dtype=torch.float64)
        n, valid, truncated, correct, comp_tok, desc_tok, reas_tok, skipped_all = all_reduce_sum(local).tolist()
        accum = self.t.gradient_accumulation_steps
        step_time = sum(timings.values())
        metrics = {
            "loss": sums["loss"] / accum,
            **{f"loss_{k}": sums[f"loss_{k}"] / accum for k in ("perception", "reasoning", "ref")},
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
            **{f"time_{k}": v for k, v in timings.items()},
            "tokens_per_second": comp_tok / max(step_time, 1e-9) / self.dist.world_size,
        }
        if self.dist.is_main and self.t.sample_log_steps > 0 and (step + 1) % self.t.sample_log_steps == 0:
            self._log_samples(step + 1, flat, parsed)
        return metrics

    def _micro_step(
        self, examples: Sequence[Example], prompts: Sequence[str], parsed: Sequence[ParsedCompletion],
        timings: dict[str, float],
    ) -> dict[str, float]:
        t = self.t
        self.engine.train()
        terms = segment_kl_terms(self.model, self.processor, t, examples, prompts, parsed, self.dist.device,
                                 self.dtype, timings)
        t0 = time.perf_counter()

        # token means over the whole data-parallel micro-step: counts summed over ranks
        counts = all_reduce_sum(torch.tensor([float(terms[k].count) if k in terms else 0.0 for k in SEGMENTS]))
        anchor = sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0  # keeps a graph when empty
        loss, parts = combine(terms, counts.tolist(), t, anchor)
        # DeepSpeed averages gradients over ranks and divides by the accumulation steps: scale by the world size
        # so the gradient is that of the global token mean.
        self.engine.backward(loss * self.dist.world_size)
        timings["student"] += time.perf_counter() - t0

        t0 = time.perf_counter()
        self.engine.step()  # steps the optimizer and scheduler only at the accumulation boundary
        timings["optimizer"] += time.perf_counter() - t0

        local = torch.tensor(
            [loss.item(), *[parts[k].item() for k in SEGMENTS],
             *[float(terms[k].num_clipped) if k in terms else 0.0 for k in SEGMENTS]], dtype=torch.float64
        )
        g = all_reduce_sum(local).tolist()
        # OPSD routes its one teacher through the "reference" slot with forward KL; report it as loss_ref
        out = {"loss": g[0], "loss_perception": g[1], "loss_reasoning": g[2], "loss_ref": g[3]}
        for i, k in enumerate(SEGMENTS):
            out[f"clipped_{k}"] = g[4 + i]
            out[f"tokens_{k}"] = counts[i].item()
        return out

    # ---------------------------------------------------------------------------------------------- I/O

    def _log_samples(self, step: int, examples: Sequence[Example], parsed: Sequence[ParsedCompletion]) -> None:
        folder = self.output_dir / "rollouts"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step-{step:06d}.jsonl"
        with open(path, "w") as f:
            for ex, p in zip(examples, parsed, strict=False):
                seg = p.segments
                f.write(json.dumps({
                    "step": step, "row": ex.row, "problem": ex.problem, "reference": ex.answer,
                    "completion": p.text, "valid": seg.valid, "invalid_reason": seg.reason,
                    "description": p.text[slice(*seg.description)] if seg.description else None,
                    "reasoning": p.text[slice(*seg.reasoning)] if seg.reasoning else None,
                    "answer": seg.answer, "correct": answers_match(seg.answer, ex.answer),
                    "truncated": p.truncated, "num_tokens": p.num_tokens,
                }) + "\n")
        self.logger.log_artifact(str(path), "rollouts")

    def _save_checkpoint(self, step: int) -> None:
        folder = self.output_dir / CHECKPOINTS
        tag = f"step-{step}"
        self.engine.save_checkpoint(str(folder), tag=tag, client_state={"step": step},
                                    exclude_frozen_parameters=True)
        torch.save(_rng_state(), folder / tag / f"rng_rank{self.dist.rank}.pt")
        if self.dist.is_main:
            self.model.save_pretrained(str(folder / tag / ADAPTER))
        barrier()

    def _resume(self) -> int:
        folder = self.output_dir / CHECKPOINTS
        latest = folder / "latest"
        if not latest.exists():
            return 0
        tag = latest.read_text().strip()
        load_path, client = self.engine.load_checkpoint(
            str(folder), tag=tag, load_module_strict=False, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if load_path is None:
            raise VigosError(f"could not load checkpoint {folder / tag}; delete {folder} to start over")
        rng = folder / tag / f"rng_rank{self.dist.rank}.pt"
        if rng.exists():
            _set_rng_state(torch.load(rng, weights_only=False))
        step = int(client["step"])
        if self.dist.is_main:
            print(f"[vigos] resumed from {folder / tag} (step {step} of {self.total_steps})", flush=True)
        return step

    def _save_final(self) -> Path:
        out = self.output_dir / ADAPTER
        if self.dist.is_main:
            tmp = self.output_dir / f".{ADAPTER}.tmp"
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


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
