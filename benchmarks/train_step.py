"""ViGOS train-step benchmark: per-phase times, tokens/s and MFU, with the trainer's own objective code.

    .venv/bin/python benchmarks/train_step.py                                   # tiny random model, CPU
    python benchmarks/train_step.py --model qwen7b-shapes --json out.json       # GPU, Qwen2.5-VL-7B shapes

Part 1, optimizer steps (what one step of `vigos train` does, without DeepSpeed, which the GPU benchmark machine
lacks): rollouts of `--prompts` prompts in one batched engine call (static cache + compiled decode on CUDA), segment
parsing, teacher forwards (LoRA off) and student forward/backward with the chunked clipped KL
(`vigos.training.objective`, the trainer's code), then a fused AdamW step. Random weights rarely produce a valid
format, so most rollouts go to the reference teacher (one teacher forward instead of two).

Part 2, the student forward + backward on one `--seq-len`-token sequence, side by side: (naive) the HF model's full
logits and a full-vocabulary KL against teacher logits, vs (ours) final hidden states and the chunked KL. LoRA r64 on
the language model, gradient checkpointing, bf16 on CUDA. MFU = 6 * N_lm * tokens/s / peak (the anchors'
convention; peak 989 TFLOP/s bf16 dense for H100/H200, 312 for A100: `projection.CARDS`).

`--phases` (instead of parts 1 and 2): the per-phase times `benchmarks/full_run.py` projects the paper's run from,
each on the trainer's code path: decode ms per step at `--decode-batches` (HFEngine as the trainer builds it;
steady state: time to first token subtracted, compile excluded), prefill ms per prompt token, teacher forward and
student forward + backward tokens/s of one micro-step (`segment_kl_terms` + backward; student MFU), optimizer
seconds. `--model qwen7b-shapes --shrink --phases --decode-batches 1,4` is its CPU smoke test.
Needs only torch, transformers, peft and PIL (+ pyyaml).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from vigos.config import load_config  # noqa: E402
from vigos.generation.engine import HFEngine  # noqa: E402
from vigos.generation.types import GenerationRequest, SamplingParams  # noqa: E402
from vigos.modeling.lora import apply_lora  # noqa: E402
from vigos.training import teachers as T  # noqa: E402
from vigos.training.memory import CheckpointSwitch, choose_checkpointing, resolve_checkpointing  # noqa: E402
from vigos.training.objective import SEGMENTS, combine, segment_kl_terms  # noqa: E402
from vigos.training.segments import parse_completion  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from projection import card_for, mfu  # noqa: E402


class Row:
    def __init__(self, i: int, size: int):
        self.image = Image.new("RGB", (size, size), (40 * (i % 6), 90, 160))
        ImageDraw.Draw(self.image).ellipse((10, 10, size // 2, size // 2), fill=(250, 30, 30))
        self.problem = f"How many red circles are in the image? (question {i})"
        self.answer = "1"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    card = card_for(torch.cuda.get_device_name(device))
    return card.flops if card else None


def _lm_params(model) -> int:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return sum(p.numel() for n, p in base.named_parameters() if "visual" not in n and "lora_" not in n)


def build(args, device, dtype):
    cfg = load_config("paper-7b" if args.model == "qwen7b-shapes" else "tiny")
    if args.model == "qwen7b-shapes":
        from vigos.modeling.tiny import random_qwen25vl_7b_shapes

        model, processor = random_qwen25vl_7b_shapes(device, dtype, vision_depth=args.vision_depth, shrink=args.shrink)
    else:
        import tempfile

        from transformers import Qwen2_5_VLForConditionalGeneration

        from vigos.modeling.load import load_processor
        from vigos.modeling.tiny import build_tiny_model

        path = build_tiny_model(Path(tempfile.mkdtemp(prefix="vigos-bench-")) / "tiny")
        cfg.model.name_or_path = str(path)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device)
        processor = load_processor(cfg.model)
    model = apply_lora(model, cfg.lora)
    if args.gradient_checkpointing in (True, "true"):  # "auto" is resolved by the lever comparison (`levers`)
        CheckpointSwitch(model)
    return cfg, model, processor


def _backward_and_step(model, optim, terms, t, device, times: dict[str, float]) -> float:
    """The trainer's loss over `terms`, its backward (added to times["student"]) and the optimizer step
    (times["optimizer"]): clip, fused AdamW, zero grads. Returns the loss."""
    t0 = time.perf_counter()
    anchor = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
    loss, _ = combine(terms, [terms[k].count if k in terms else 0 for k in SEGMENTS], t, anchor)
    loss.backward()
    _sync(device)
    times["student"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], t.max_grad_norm)
    optim.step()
    optim.zero_grad(set_to_none=True)
    _sync(device)
    times["optimizer"] = time.perf_counter() - t0
    return loss.item()


def optimizer_steps(args, cfg, model, processor, device, dtype) -> dict[str, Any]:
    t = cfg.train
    t.max_completion_length = args.new_tokens
    params = SamplingParams.from_train(t)
    engine = HFEngine(model, processor, batch_size=args.prompts)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t.learning_rate,
                              fused=device.type == "cuda")
    rows = [Row(i, args.image_size) for i in range(args.prompts)]
    prompts = [T.context_text(processor, "student", r.problem, r.answer) for r in rows]
    eos = engine.eos_token_ids
    steps = []
    for step in range(args.steps):
        times: dict[str, float] = {}
        _sync(device)
        t0 = time.perf_counter()
        results = engine.generate([GenerationRequest(p, [r.image], 1000 * step + i)
                                   for i, (p, r) in enumerate(zip(prompts, rows, strict=True))], params)
        _sync(device)
        times["rollout"] = time.perf_counter() - t0
        parsed = [parse_completion(processor, r.token_ids, eos_token_ids=eos) for r in results]
        model.train()
        terms = segment_kl_terms(model, processor, t, rows, prompts, parsed, device, dtype, times)
        loss = _backward_and_step(model, optim, terms, t, device, times)
        tokens = sum(p.num_tokens for p in parsed)
        total = sum(times.values())
        steps.append({**{f"time_{k}": v for k, v in times.items()}, "completion_tokens": tokens,
                      "tokens_per_s": tokens / total, "valid": sum(p.valid for p in parsed), "loss": loss})
        print(f"step {step}: " + ", ".join(f"{k} {v:.2f}s" for k, v in times.items())
              + f"; {tokens} completion tokens, {tokens / total:.0f} tok/s, loss {loss:.4g}", flush=True)
    return {"steps": steps}


def _teacher_student_kl(model, batch, weight, mask, cfg) -> torch.Tensor:
    """The trainer's pass on `batch`: the teacher forward (adapter off, no grad), the student forward and the chunked
    clipped KL over the `mask` positions (mean)."""
    from vigos.training.losses import chunked_clipped_token_kl

    h_t = T.teacher_hidden_states(model, batch)
    h_s = T.hidden_states(model, batch)
    return chunked_clipped_token_kl(h_t, h_s, weight, mask, clip=cfg.train.kl_token_clip,
                                    chunk_size=cfg.train.kl_chunk_size).mean()


def _timed_passes(model, device, runs: int, loss_fn) -> tuple[float, float]:
    """`runs` calls of `loss_fn()` + its backward, each after a fresh peak-memory count; (seconds, loss) of the last
    (the earlier ones warm up)."""
    for _ in range(runs):
        model.train()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        t0 = time.perf_counter()
        loss = loss_fn()
        loss.backward()
        model.zero_grad(set_to_none=True)
        _sync(device)
        seconds = time.perf_counter() - t0
    return seconds, loss.item()


def fwd_bwd(args, cfg, model, processor, device, dtype) -> dict[str, Any]:
    """One long sequence: naive full-logit KL vs our hidden-state chunked KL (same student, same teacher)."""
    row = Row(0, args.image_size)
    context = T.context_text(processor, "student", row.problem, row.answer)
    vocab = T.lm_parts(model)[1].shape[0]
    n_prompt = len(processor(text=[context], images=[row.image])["input_ids"][0])
    completion = torch.randint(0, min(vocab, 150000), (max(1, args.seq_len - n_prompt),)).tolist()
    batch = T.build_sequences(processor, [context], [row.image], [completion], [0], dtype=dtype).to(device)
    mask = torch.zeros(batch.input_ids.shape, dtype=torch.bool, device=device)
    mask[0, n_prompt - 1 : n_prompt - 1 + len(completion)] = True
    weight = T.lm_parts(model)[1]
    n_tokens = batch.num_tokens
    lm_n = _lm_params(model)
    peak = _peak(device)
    out = {"tokens": n_tokens, "lm_params": lm_n}

    def naive() -> torch.Tensor:
        with torch.no_grad(), model.disable_adapter():
            h_t = T.hidden_states(model, batch)
        logits = model(**batch.model_inputs(), use_cache=False).logits[mask].float()
        with torch.no_grad():
            t_logits = (h_t[mask] @ weight.T).float()
        return F.kl_div(F.log_softmax(logits, -1), F.log_softmax(t_logits, -1), log_target=True,
                        reduction="none").sum(-1).clamp(max=cfg.train.kl_token_clip).mean()

    for mode in ("naive", "ours"):
        ours = lambda: _teacher_student_kl(model, batch, weight, mask, cfg)  # noqa: E731
        seconds, loss = _timed_passes(model, device, 2, naive if mode == "naive" else ours)
        tps = n_tokens / seconds
        row_out = {"seconds": seconds, "tokens_per_s": tps, "loss": loss,
                   "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
                   "mfu": mfu(lm_n, tps, peak) if peak else None}
        out[mode] = row_out
        print(f"{mode:6s} {n_tokens} tokens: {seconds * 1000:.0f} ms, {tps:,.0f} tok/s, "
              f"peak {row_out['peak_gib'] or 0:.1f} GiB, MFU {100 * (row_out['mfu'] or 0):.1f}% "
              f"(teacher fwd + student fwd/bwd)", flush=True)
    out["speedup"] = out["ours"]["tokens_per_s"] / out["naive"]["tokens_per_s"]
    return out

# ------------------------------------------------------------------------------------- MFU levers (--levers)

LEVERS = {  # name: (pack, gradient checkpointing, fused kernels); "today" is the trainer's path before the levers
    "today (padded, checkpointing, no fused kernels)": (False, "true", "none"),
    "packed": (True, "true", "none"),
    "checkpointing auto": (False, "auto", "none"),
    "liger kernels": (False, "true", "liger"),
    "all levers": (True, "auto", "auto"),  # liger where it can run (CUDA + installed), else without it
}


def _lever_rows(args, processor, vocab: int) -> tuple[list[str], list[Any], list[list[int]]]:
    """`--lever-rows` student rows (context + image + random completion ids) whose completions' lengths spread
    evenly over `--lever-lengths MIN,MAX`: rows of different lengths, so padding costs what it does in a real
    micro-batch."""
    lo, hi = (int(x) for x in args.lever_lengths.split(","))
    n = args.lever_rows
    contexts, images, tails = [], [], []
    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        row = Row(i, args.image_size + 28 * (i % 3))
        length = lo + (hi - lo) * i // max(1, n - 1)
        tails.append(torch.randint(0, min(vocab, 150000), (length,), generator=gen).tolist())
        contexts.append(T.context_text(processor, "student", row.problem, row.answer))
        images.append(row.image)
    return contexts, images, tails


def levers(args, cfg, model, processor, device, dtype) -> dict[str, Any]:
    """Today's path, each lever alone and all together, side by side on the same rows: the teacher forward (adapter
    off, no grad) + the student forward/backward with the chunked KL over every completion token. tokens/s counts
    real tokens only (padding is the waste packing removes); MFU = 6 N_lm tokens/s / peak."""
    from vigos.modeling.kernels import apply_liger, resolve_fused_kernels

    weight = T.lm_parts(model)[1]
    contexts, images, tails = _lever_rows(args, processor, weight.shape[0])
    width = max(len(t) for t in tails)
    completion = torch.tensor([[j < len(t) for j in range(width)] for t in tails], device=device)
    lm_n, peak = _lm_params(model), _peak(device)
    can_liger = resolve_fused_kernels("auto", device.type)[0] == "liger"
    # `auto` as the trainer decides it: probed once (the run's longest sequence and half of it), then per forward
    auto_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, gradient_checkpointing="auto"))
    auto = resolve_checkpointing(auto_cfg, model, device)
    switch = CheckpointSwitch(model)
    print(auto.log_line(), flush=True)
    out: dict[str, Any] = {"rows": [len(t) for t in tails], "lm_params": lm_n, "checkpointing_auto": auto.params()}
    order = sorted(LEVERS, key=lambda k: LEVERS[k][2] != "none")  # liger patches the model for good: last
    for name in order:
        pack, checkpointing, kernels = LEVERS[name]
        if kernels == "auto":
            kernels = "liger" if can_liger else "none"
        if kernels == "liger" and not can_liger:
            out[name] = {"skipped": resolve_fused_kernels("auto", device.type)[1]}
            print(f"{name:48s} skipped: {out[name]['skipped']}", flush=True)
            continue
        if kernels == "liger" and not out.get("liger_applied"):
            apply_liger(model.get_base_model())
            out["liger_applied"] = True
        batch = T.build_sequences(processor, contexts, images, tails, [0] * len(tails), dtype=dtype,
                                  pack=pack).to(device)
        n_tokens = batch.num_tokens
        choice = auto if checkpointing == "auto" else choose_checkpointing(checkpointing == "true", device.type)
        on = choice.checkpoint(int(batch.input_ids.numel()))  # the student forward's positions, as in the trainer
        switch.set(on)
        mask = batch.positions(completion)
        seconds, loss = _timed_passes(model, device, 1 + args.lever_repeats,
                                      lambda batch=batch, mask=mask: _teacher_student_kl(model, batch, weight, mask, cfg))
        tps = n_tokens / seconds
        out[name] = {"pack": pack, "gradient_checkpointing": on, "checkpointing_why": choice.why,
                     "fused_kernels": kernels, "tokens": n_tokens, "forward_positions": int(batch.input_ids.numel()),
                     "seconds": seconds, "tokens_per_s": tps, "loss": loss,
                     "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
                     "mfu": 6 * lm_n * tps / peak if peak else None}
    base = out[next(iter(LEVERS))]["tokens_per_s"]
    print(f"{'':48s} {'tokens/s':>9s} {'vs today':>8s} {'peak GiB':>8s} {'MFU':>6s}  checkpointing", flush=True)
    for name in LEVERS:
        r = out[name]
        if "skipped" in r:
            continue
        r["ratio_vs_today"] = r["tokens_per_s"] / base
        print(f"{name:48s} {r['tokens_per_s']:9,.0f} {r['ratio_vs_today']:7.2f}x {r['peak_gib'] or 0:8.1f} "
              f"{100 * (r['mfu'] or 0):5.1f}%  {'on' if r['gradient_checkpointing'] else 'off'}", flush=True)
    # values: a fresh adapter (lora_B = 0) makes the student equal the teacher here; packed == padded is a test
    print(f"{len(tails)} rows of {out['rows']} completion tokens", flush=True)
    return out


# ----------------------------------------------------------------------------------------------------------
# --phases: the per-phase times benchmarks/full_run.py projects from (each phase on the trainer's own code path)


def phase_decode(args, cfg, model, processor, device) -> list[dict[str, Any]]:
    """Per batch size: ms per decode step and prefill ms per prompt token, with HFEngine as the trainer builds it
    (`batch_size` = rollouts per rank; static cache + compiled decode on CUDA).

    Calls on the same prompts: a warm-up of `--decode-tokens` (compiles the decode step for this batch shape),
    then `--phase-repeats` calls of 1 new token (time to first token = processor + prefill) and as many of
    `--decode-tokens`; the decode step is the difference of the fastest of each over the extra decode steps (a
    batch runs until its longest row ends)."""
    rows = [Row(i, args.image_size) for i in range(max(args.decode_batches))]
    prompts = [T.context_text(processor, "student", r.problem, r.answer) for r in rows]
    base = SamplingParams.from_train(cfg.train)
    out = []
    for b in args.decode_batches:
        engine = HFEngine(model, processor, batch_size=b)
        requests = [GenerationRequest(p, [r.image], 7 * i) for i, (p, r) in enumerate(zip(prompts, rows, strict=True))]

        def timed(n: int, engine=engine, requests=requests[:b]) -> tuple[float, int, float]:
            _sync(device)
            t0 = time.perf_counter()
            results = engine.generate(requests, dataclasses.replace(base, max_new_tokens=n))
            _sync(device)
            return (time.perf_counter() - t0, max(r.num_tokens for r in results),
                    sum(r.prompt_tokens for r in results) / len(results))

        first_call, _, _ = timed(args.decode_tokens)
        short = [timed(1) for _ in range(args.phase_repeats)]
        long = [timed(args.decode_tokens) for _ in range(args.phase_repeats)]
        ttft, prompt_tokens = min(x[0] for x in short), short[0][2]
        total, steps = min(x[0] for x in long), long[0][1]
        ms = 1000 * (total - ttft) / max(steps - 1, 1)
        row = {"batch": b, "ms_per_step": ms, "tokens_per_s": 1000 * b / ms, "decode_steps": steps,
               "prefill_ms": 1000 * ttft, "prompt_tokens": prompt_tokens,
               "prefill_ms_per_token": 1000 * ttft / (b * prompt_tokens), "first_call_s": first_call}
        out.append(row)
        print(f"decode batch {b:2d}: {ms:6.2f} ms/step ({row['tokens_per_s']:,.0f} tok/s), prefill "
              f"{row['prefill_ms']:.0f} ms for {b} x {prompt_tokens:.0f} prompt tokens, first call "
              f"{first_call:.1f}s", flush=True)
    return out


def phase_passes(args, cfg, model, processor, device, dtype) -> dict[str, Any]:
    """Teacher forward, student forward + backward and optimizer step of one micro-step, as the trainer runs them
    (micro-batch 1: `train.per_device_train_batch_size`): `segment_kl_terms` times its teacher forwards and the
    student forward + KL, the backward is added to the student, then clip + AdamW. A random `--phase-tokens`-token
    completion has no valid format, so it takes the reference teacher (one teacher forward over context +
    completion). The last of `--phase-repeats` runs counts (the first warms up)."""
    from vigos.training.objective import teacher_batches
    from vigos.training.segments import build_segment_masks

    t = cfg.train
    row = Row(0, args.image_size)
    prompt = T.context_text(processor, "student", row.problem, row.answer)
    vocab = T.lm_parts(model)[1].shape[0]
    gen = torch.Generator().manual_seed(0)
    completion = torch.randint(0, min(vocab, 150000), (args.phase_tokens,), generator=gen).tolist()
    engine_eos = HFEngine(model, processor, batch_size=1).eos_token_ids
    parsed = [parse_completion(processor, completion, eos_token_ids=engine_eos)]
    masks = build_segment_masks(parsed, device=device)
    teacher_tokens = sum(batch.num_tokens for batch, _, _ in
                         teacher_batches(processor, t, [row], parsed, masks).values())
    student_tokens = len(processor(text=[prompt], images=[row.image])["input_ids"][0]) + len(completion)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t.learning_rate,
                              fused=device.type == "cuda")
    for _ in range(args.phase_repeats):
        times: dict[str, float] = {}
        model.train()
        _sync(device)
        terms = segment_kl_terms(model, processor, t, [row], [prompt], parsed, device, dtype, times)
        _sync(device)
        _backward_and_step(model, optim, terms, t, device, times)
    lm_n, peak = _lm_params(model), _peak(device)
    student_tps = student_tokens / times["student"]
    out = {
        "completion_tokens": len(completion), "valid": parsed[0].valid,
        "teacher": {"tokens": teacher_tokens, "seconds": times["teachers"],
                    "tokens_per_s": teacher_tokens / times["teachers"]},
        "student": {"tokens": student_tokens, "seconds": times["student"], "tokens_per_s": student_tps,
                    "mfu": mfu(lm_n, student_tps, peak) if peak else None},
        "optimizer": {"seconds": times["optimizer"]},
    }
    print(f"teacher forward: {teacher_tokens} tokens in {times['teachers'] * 1000:.0f} ms "
          f"({out['teacher']['tokens_per_s']:,.0f} tok/s); student fwd+bwd: {student_tokens} tokens in "
          f"{times['student'] * 1000:.0f} ms ({student_tps:,.0f} tok/s, MFU "
          + (f"{100 * out['student']['mfu']:.1f}%" if out["student"]["mfu"] else "n/a (no GPU peak)")
          + f"); optimizer {times['optimizer'] * 1000:.1f} ms", flush=True)
    return out


def phases(args, cfg, model, processor, device, dtype) -> dict[str, Any]:
    """Everything benchmarks/full_run.py needs, measured on this card."""
    return {"lm_params": _lm_params(model), "decode": phase_decode(args, cfg, model, processor, device),
            **phase_passes(args, cfg, model, processor, device, dtype)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "qwen7b-shapes"), default="tiny")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8, help="rollouts per optimizer step")
    parser.add_argument("--new-tokens", type=int, default=None, help="rollout length (default 48 tiny, 256 GPU)")
    parser.add_argument("--seq-len", type=int, default=None, help="part 2 sequence (default 512 tiny, 4096 GPU)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--vision-depth", type=int, default=32)
    parser.add_argument("--shrink", action="store_true", help="qwen7b-shapes at tiny widths (CPU smoke test)")
    parser.add_argument("--skip-steps", action="store_true", help="only part 2")
    parser.add_argument("--gradient-checkpointing", choices=("true", "false"), default="true",
                        help="parts 1-2: recompute activations in backward (--levers compares true and auto itself)")
    parser.add_argument("--levers", action="store_true",
                        help="only the MFU levers side by side: today's path, packing, checkpointing auto, liger "
                             "kernels, all together (teacher fwd + student fwd/bwd)")
    parser.add_argument("--lever-rows", type=int, default=4, help="--levers: student rows")
    parser.add_argument("--lever-lengths", default=None,
                        help="--levers: MIN,MAX completion tokens per row, spread evenly (default 1000,4096 GPU; "
                             "16,64 CPU)")
    parser.add_argument("--lever-repeats", type=int, default=1, help="--levers: timed runs after the warm-up")
    parser.add_argument("--phases", action="store_true",
                        help="only the per-phase times benchmarks/full_run.py projects from (decode per batch "
                             "size, prefill, teacher, student, optimizer)")
    parser.add_argument("--decode-batches", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 2, 4, 8, 16, 32], help="--phases: decode batch sizes (comma-separated)")
    parser.add_argument("--decode-tokens", type=int, default=None,
                        help="--phases: new tokens of the timed decode calls (default 8 CPU, 128 GPU)")
    parser.add_argument("--phase-tokens", type=int, default=None,
                        help="--phases: completion tokens of the timed micro-step (default 64 CPU, 1024 GPU)")
    parser.add_argument("--phase-repeats", type=int, default=2,
                        help="--phases: timed runs of each decode call (fastest counts) and of the micro-step "
                             "(the last counts, the first warms up)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    gpu = args.model == "qwen7b-shapes" and not args.shrink
    args.new_tokens = args.new_tokens or (256 if gpu else 48)
    args.seq_len = args.seq_len or (4096 if gpu else 512)
    args.decode_tokens = args.decode_tokens or (128 if gpu else 8)
    args.phase_tokens = args.phase_tokens or (1024 if gpu else 64)
    args.lever_lengths = args.lever_lengths or ("1000,4096" if gpu else "16,64")
    if args.levers:
        args.gradient_checkpointing = "false"  # levers() sets it per path
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark as `args` asks (benchmarks/full_run.py calls it with --phases); writes `args.json` if set."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    t0 = time.perf_counter()
    cfg, model, processor = build(args, device, dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.model} on {name}: {_lm_params(model) / 1e9:.2f} B LM parameters, LoRA r{cfg.lora.r}, "
          f"setup {time.perf_counter() - t0:.0f}s", flush=True)
    result: dict[str, Any] = {"model": args.model, "device": name, "torch": torch.__version__,
                              "gradient_checkpointing": args.gradient_checkpointing,
                              "args": {k: v for k, v in vars(args).items() if k != "json"}}
    if args.levers:
        result["levers"] = levers(args, cfg, model, processor, device, dtype)
    elif args.phases:
        result["phases"] = phases(args, cfg, model, processor, device, dtype)
    elif not args.skip_steps:
        result["optimizer_steps"] = optimizer_steps(args, cfg, model, processor, device, dtype)
    if not (args.phases or args.levers):
        result["fwd_bwd"] = fwd_bwd(args, cfg, model, processor, device, dtype)
        print(f"student fwd+bwd, ours vs naive: {result['fwd_bwd']['speedup']:.2f}x tokens/s", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    run(parse_args())
