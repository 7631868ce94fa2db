"""Sampling/training mismatch: the student's log-probabilities of its own rollout tokens, as the generation engine
drew them vs as the trainer's forward scores them, side by side with and without the multimodal positions.

    .venv/bin/python benchmarks/rollout_fidelity.py                                  # tiny model, CPU, float32
    python benchmarks/rollout_fidelity.py --model qwen7b-shapes --json out.json      # GPU, 7B shapes, bf16
    python benchmarks/rollout_fidelity.py --model qwen7b-shapes --largest-image      # + peak memory, largest image

On-policy distillation assumes the trainer scores the very distribution that sampled: every mismatch is an
off-policy error. Rollouts come from `HFEngine` (LoRA on, eval mode) with `logprobs=True`; the trainer's forward is
`vigos.training.teachers.build_sequences` + `hidden_states` (eval mode, same dtype), log-softmax in float32.
"fixed" passes the processor's `mm_token_type_ids` (Qwen2.5-VL's mRoPE positions, as at sampling); "1-D positions"
drops them (the trainer before the fix). Prints mean / max |difference| and the ratio.

`--largest-image` (CUDA only): one rollout on an image at the processor's largest budget (`paper-7b`:
12,845,056 pixels = 16,384 visual tokens), then the trainer's teacher forward + student forward/backward with the
chunked KL, and the peak GPU memory of that step. Needs only torch, transformers, peft, PIL (+ pyyaml).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from train_step import Row, build  # noqa: E402

from vigos.generation.engine import HFEngine  # noqa: E402
from vigos.generation.types import GenerationRequest, SamplingParams  # noqa: E402
from vigos.training import teachers as T  # noqa: E402


def _student_logprobs(model, batch: T.SequenceBatch, results, positions: bool) -> list[torch.Tensor]:
    inputs = batch.model_inputs()
    if not positions:
        inputs.pop("mm_token_type_ids")
    weight = T.lm_parts(model)[1]
    with torch.no_grad():
        h = T.lm_parts(model)[0](**inputs, use_cache=False).last_hidden_state
        out = []
        for i, r in enumerate(results):
            pos = int(batch.offset[i]) + torch.arange(r.num_tokens, device=h.device)
            logp = torch.log_softmax(h[i, pos].float() @ weight.float().T, dim=-1)
            out.append(logp.gather(1, torch.tensor(r.token_ids, device=h.device)[:, None])[:, 0].cpu())
    return out


def mismatch(args, cfg, model, processor, device, dtype) -> dict[str, Any]:
    rows = [Row(i, args.image_size + 28 * (i % 3)) for i in range(args.prompts)]
    prompts = [T.context_text(processor, "student", r.problem, r.answer) for r in rows]
    model.eval()
    engine = HFEngine(model, processor, batch_size=args.prompts, decode=args.decode)
    params = SamplingParams.from_train(cfg.train)
    params = SamplingParams(params.temperature, params.top_p, params.top_k, args.new_tokens)
    t0 = time.perf_counter()
    results = engine.generate([GenerationRequest(p, [r.image], 17 + i) for i, (p, r) in enumerate(zip(prompts, rows,
                                                                                                       strict=True))],
                              params, logprobs=True)
    print(f"{len(results)} rollouts, {sum(r.num_tokens for r in results)} tokens in {time.perf_counter() - t0:.1f}s",
          flush=True)
    sampled = torch.cat([torch.tensor(r.logprobs) for r in results])
    out: dict[str, Any] = {"tokens": int(sampled.numel())}
    for label, positions in (("fixed", True), ("1-D positions", False)):
        batch = T.build_sequences(processor, prompts, [r.image for r in rows], [r.token_ids for r in results],
                                  [0] * len(rows), dtype=dtype).to(device)
        trained = torch.cat(_student_logprobs(model, batch, results, positions))
        diff = (trained - sampled).abs()
        out[label] = {"mean_abs": diff.mean().item(), "max_abs": diff.max().item()}
        print(f"{label:14s} |logprob(train) - logprob(sample)|: mean {diff.mean().item():.2e}, "
              f"max {diff.max().item():.2e}", flush=True)
    out["ratio_mean"] = out["1-D positions"]["mean_abs"] / max(out["fixed"]["mean_abs"], 1e-12)
    print(f"1-D positions / fixed, mean |difference|: {out['ratio_mean']:.1f}x", flush=True)
    return out


def largest_image(args, cfg, model, processor, device, dtype) -> dict[str, Any]:
    """Peak memory of one train micro-step on the largest image the processor makes."""
    from PIL import Image, ImageDraw

    from vigos.training.objective import segment_kl_terms
    from vigos.training.segments import parse_completion

    if device.type != "cuda":
        raise SystemExit("--largest-image measures GPU memory: run it on a CUDA device")
    side = math.isqrt(processor.image_processor.size["longest_edge"])
    image = Image.new("RGB", (side, side), (230, 230, 230))
    ImageDraw.Draw(image).ellipse((side // 4, side // 4, side // 2, side // 2), fill=(250, 30, 30))
    row = Row(0, 32)
    row.image = image
    prompt = T.context_text(processor, "student", row.problem, row.answer)
    n_visual = int((processor(text=[prompt], images=[image])["input_ids"][0] == processor.image_token_id).sum())
    model.eval()
    engine = HFEngine(model, processor, batch_size=1, cache_implementation=None)
    params = SamplingParams(cfg.train.rollout_temperature, cfg.train.rollout_top_p, cfg.train.rollout_top_k,
                            args.new_tokens)
    torch.cuda.reset_peak_memory_stats(device)
    results = engine.generate([GenerationRequest(prompt, [image], 3)], params)
    rollout_peak = torch.cuda.max_memory_allocated(device) / 2**30
    parsed = [parse_completion(processor, r.token_ids, eos_token_ids=engine.eos_token_ids) for r in results]
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    model.train()
    t0 = time.perf_counter()
    terms = segment_kl_terms(model, processor, cfg.train, [row], [prompt], parsed, device, dtype)
    sum(term.sum for term in terms.values()).backward()
    torch.cuda.synchronize(device)
    out = {"image_side": side, "visual_tokens": n_visual, "completion_tokens": parsed[0].num_tokens,
           "rollout_peak_gib": rollout_peak, "train_peak_gib": torch.cuda.max_memory_allocated(device) / 2**30,
           "train_seconds": time.perf_counter() - t0}
    print(f"largest image {side}x{side} ({n_visual} visual tokens): rollout peak {rollout_peak:.1f} GiB, "
          f"teacher + student fwd/bwd peak {out['train_peak_gib']:.1f} GiB in {out['train_seconds']:.1f}s",
          flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "qwen7b-shapes"), default="tiny")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=None, help="rollout length (default 48 tiny, 256 GPU)")
    parser.add_argument("--image-size", type=int, default=168, help="smallest image side (rows vary by 28 px)")
    parser.add_argument("--vision-depth", type=int, default=32)
    parser.add_argument("--shrink", action="store_true", help="qwen7b-shapes at tiny widths (CPU smoke test)")
    parser.add_argument("--largest-image", action="store_true", help="also: peak memory on the largest image")
    parser.add_argument("--device", default=None)
    parser.add_argument("--decode", choices=("hf", "vigos"), default="hf",
                        help="the engine's decode loop (model.decode_loop) that draws the rollouts")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.gradient_checkpointing = True  # the trainer's default (used by --largest-image's backward)
    gpu = args.model == "qwen7b-shapes" and not args.shrink
    args.new_tokens = args.new_tokens or (256 if gpu else 48)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg, model, processor = build(args, device, dtype)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for name, p in model.named_parameters():
            if "lora_B" in name:  # a trained-looking adapter: the student differs from the base model
                p.copy_((torch.randn(p.shape, generator=gen) * 0.02).to(p.device, p.dtype))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result: dict[str, Any] = {"model": args.model, "device": name, "dtype": str(dtype), "torch": torch.__version__}
    result["mismatch"] = mismatch(args, cfg, model, processor, device, dtype)
    if args.largest_image:
        result["largest_image"] = largest_image(args, cfg, model, processor, device, dtype)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
