"""Generation throughput: our batched engine vs one question per `generate` call (the public code's way).

    .venv/bin/python benchmarks/eval_throughput.py                          # tiny random model, CPU
    python benchmarks/eval_throughput.py --model qwen7b-shapes --json out.json   # GPU, Qwen2.5-VL-7B shapes
    python benchmarks/eval_throughput.py --backend vllm --concurrency 256 --json out.json   # GPU: vLLM vs engine

`--model tiny` (default): the tiny random Qwen2.5-VL (built into a temp dir), `--questions` prompts with an image,
`--samples` samples each (seeds 42+s). It times, on the same prompts: (1) one `generate` call per question and sample
(HF sampling; the model card's usage, how the public code evaluated), (2) one call per question with its samples as
`num_return_sequences` (a stronger baseline), (3) `HFEngine`, all samples batched `--batch-size` sequences per call.
Prints samples/s and tokens/s side by side with the ratios. Sampling defaults come from `vigos.config` (the eval
settings; the `tiny` preset's new-token budget).

`--model qwen7b-shapes`: a random-weight Qwen2.5-VL with the 7B shapes (LM: 28 layers, hidden 3584, MLP 18944,
28/4 heads, vocab 152,064; vision: depth `--vision-depth` (32 as in the 7B), hidden 1280) in bf16 on CUDA, with the
tiny model's tokenizer/processor (its special-token ids all exist in the 152k vocabulary) at the 7B pixel budget, so a
224x224 image is 64 tokens. 32 prompts of ~230 tokens, 128 new tokens (T 1.0, top-p 0.9, top-k 20). Times tokens/s
for (a) one question per call, dynamic cache (on `--baseline-questions` prompts only: it is slow), (b) all prompts in
one HF `generate` call, dynamic cache, (b2) our engine with the dynamic cache, (c) our engine with the static cache +
compiled decode: first call (compiles), second call, and a third call where half the prompts are longer (other
left padding): no recompile expected (the dynamo graph count is printed). Needs only torch, transformers and PIL.
First, the decode sweep (`--decode-batches 4,8,16,32`; `--decode-sweep-only` stops after it): at each batch size
(c2) the engine on `generate` vs (d) the engine's own decode loop (`decode="vigos"`, a CUDA-graph decode step), as
tokens/s, ms per decode step and the bandwidth ratio (weight bytes per step / (`--bandwidth-tbs` x ms per step)).
The tiny mode runs the own loop as one more row (and checks it returns the `generate` path's tokens).

`--backend openai --base-url URL --server-model NAME`: the same tiny-run prompts (`--questions` x `--samples`,
seeds 42+s) through `OpenAIEngine` (eval.backend=openai) against a running OpenAI-compatible server, `--concurrency`
requests in flight; the processor (prompt rendering, image sizing, the prefill probe) comes from `--processor`
(default: the tiny model). On CPU against `transformers serve` on the tiny model this is a plumbing number, not a
speed claim. For vLLM against the engine, use `--backend vllm` (one run, both sides).

`--backend vllm`: vLLM vs our engine in ONE run, on the same requests and sampling, on the same GPU(s). (a) The
random-weight 7B-shape model above (`--shrink`: tiny widths; `--model-dir`: a real checkpoint folder instead) is
written with its processor as a bf16 safetensors folder (`--work-dir`, default a temp folder; 16 GB at 7B) and freed.
(b) `vllm serve` on it, started, health-waited and stopped (whatever happens) by the evaluation's own launcher
(`vigos.generation.vllm_server`; `--data-parallel-size`, 0 = one replica per GPU; `--vllm-args "..."` appended);
`--questions` (1000) x `--samples` (5) requests (a 224x224 image each, 64 image tokens; seeds 42+s) go through
`OpenAIEngine` (eval.backend=vllm's path), `--concurrency` in flight, after a warm-up round of `--concurrency`
requests (the prefill probe). (c) `HFEngine` (static cache + compiled decode on CUDA, the evaluation's `engine`
backend; dynamic cache on CPU) loads the same folder and runs the same requests, `--batch-size` per call, after a
warm-up batch (the compile). (d) Tokens/s, tokens/s per GPU, the wall time of all samples (= Pass@k generation
time), start/load and warm-up seconds, errors, and the ratio, side by side; `--json` is written after each phase.
`--serve-with transformers` starts `transformers serve` through the same launcher instead of vLLM: the CPU smoke
test of the whole orchestration (plumbing, not speed):

    .venv/bin/python benchmarks/eval_throughput.py --backend vllm --serve-with transformers --shrink \
        --vision-depth 2 --questions 4 --samples 2 --max-new-tokens 8 --concurrency 4 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from vigos.config import EvalConfig, load_config  # noqa: E402
from vigos.data.prompts import build_messages, build_prompt_text  # noqa: E402
from vigos.generation.engine import HFEngine  # noqa: E402
from vigos.generation.types import GenerationRequest, SamplingParams  # noqa: E402
from vigos.modeling.tiny import build_tiny_model, random_qwen25vl_7b_shapes  # noqa: E402

QUESTIONS = (
    "What color is the square?",
    "How many cats are in the image?",
    "Is the dog to the left of the car? Answer yes or no.",
    "What is the value of x in the figure? The angle is 30 degrees and the side is 10 cm.",
    "Which of the following statements is true? Select the correct option. Choices: (A) 1 (B) 2 (C) 3 (D) 4",
    "The chart shows the sales of a company in 2019, 2020, 2021 and 2022. Which year had the largest sales?",
    "What is the area of the circle drawn inside the square of side 4?",
    "Which bar is the tallest?",
)
EXTRA = " Think about the colors, the positions and the sizes of every object in the image before you answer."


def _image(i: int, size: int) -> Image.Image:
    return Image.new("RGB", (size, size), ((37 * i) % 256, (91 * i) % 256, (151 * i) % 256))


def _prompts(processor: Any, n: int, image_size: int, longer: set[int] = frozenset()) -> list[tuple[str, list]]:
    out = []
    for i in range(n):
        question = QUESTIONS[i % len(QUESTIONS)] + (EXTRA if i in longer else "")
        images = [_image(i, image_size)]
        out.append((build_prompt_text(processor, build_messages(question, images)), images))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _count_completion_tokens(rows: torch.Tensor, eos: set[int]) -> int:
    total = 0
    for row in rows.tolist():
        cut = next((j for j, t in enumerate(row) if t in eos), None)
        total += len(row) if cut is None else cut + 1
    return total


def _hf_generate(
    model,
    processor,
    prompts,
    params: SamplingParams,
    eos: list[int],
    *,
    per_call: int,
    return_sequences: int = 1,
    seed: int = 42,
) -> dict[str, float]:
    """Stock HF sampling (dynamic cache), `per_call` prompts per `generate` call, `return_sequences` samples each."""
    device = model.device
    tokens = samples = 0
    _sync(device)
    started = time.perf_counter()
    for start in range(0, len(prompts), per_call):
        chunk = prompts[start : start + per_call]
        inputs = processor(
            text=[p for p, _ in chunk], images=[im for _, ims in chunk for im in ims], padding=True, return_tensors="pt"
        ).to(device)
        torch.manual_seed(seed + start)
        with torch.no_grad():
            out = model.generate(
                **inputs,
                do_sample=True,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                repetition_penalty=1.0,
                max_new_tokens=params.max_new_tokens,
                num_return_sequences=return_sequences,
                eos_token_id=eos,
                pad_token_id=eos[-1],
            )
        tokens += _count_completion_tokens(out[:, inputs["input_ids"].shape[1] :].cpu(), set(eos))
        samples += out.shape[0]
    _sync(device)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "samples": samples,
        "tokens": tokens,
        "samples_per_s": samples / seconds,
        "tokens_per_s": tokens / seconds,
    }


def _engine_run(engine: HFEngine, prompts, params: SamplingParams, samples: int = 1) -> dict[str, float]:
    row, results = _timed_engine(engine, prompts, params, samples)
    return {**row, "stop_rate": sum(r.finish_reason == "stop" for r in results) / len(results)}


def _dynamo_graphs() -> int | None:
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # noqa: BLE001 (a private counter: report None rather than fail)
        return None


# ---------------------------------------------------------------------------------------------------- tiny / CPU


def run_tiny(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory(prefix="vigos-bench-") as tmp:
        model_dir = build_tiny_model(Path(tmp) / "tiny", seed=0)
        processor = AutoProcessor.from_pretrained(model_dir)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir).eval()
    processor.tokenizer.padding_side = "left"  # for the HF baselines' batches
    eos = [int(e) for e in model.generation_config.eos_token_id]
    params = SamplingParams(args.temperature, args.top_p, args.top_k, args.max_new_tokens)
    prompts = _prompts(processor, args.questions, image_size=120)
    engine = HFEngine(model, processor, batch_size=args.batch_size, cache_implementation=None)

    # warm-up (allocator, tokenizer caches)
    _engine_run(engine, prompts[:2], SamplingParams(1.0, 1.0, 0, 4))
    _hf_generate(model, processor, prompts[:1], SamplingParams(1.0, 1.0, 0, 4), eos, per_call=1)

    rows: dict[str, dict[str, float]] = {}
    expanded = [pq for pq in prompts for _ in range(args.samples)]
    rows["per_call_one_sample"] = _hf_generate(model, processor, expanded, params, eos, per_call=1)
    rows["per_call_n_samples"] = _hf_generate(
        model, processor, prompts, params, eos, per_call=1, return_sequences=args.samples
    )
    rows["engine_batched"], reference = _timed_engine(engine, prompts, params, args.samples)
    rows["engine_vigos_loop"] = _vigos_tiny_row(model, processor, prompts, params, args,
                                                [r.token_ids for r in reference])
    base = rows["per_call_one_sample"]["samples_per_s"]
    print(
        f"tiny Qwen2.5-VL on cpu ({torch.get_num_threads()} threads): {args.questions} questions x {args.samples} "
        f"samples, {args.max_new_tokens} new tokens, T {params.temperature}, top-p {params.top_p}, top-k "
        f"{params.top_k}; engine batch {args.batch_size}"
    )
    print(f"{'mode':<52}{'samples/s':>10}{'tokens/s':>10}{'seconds':>9}{'ratio':>8}")
    labels = {
        "per_call_one_sample": "one question per call, 1 sample (model card's way)",
        "per_call_n_samples": f"one question per call, {args.samples} samples (num_return_seq.)",
        "engine_batched": f"HFEngine, {args.batch_size} sequences per call",
        "engine_vigos_loop": "same, own decode loop (decode=vigos)",
    }
    for key, row in rows.items():
        row["ratio_vs_one_per_call"] = row["samples_per_s"] / base
        print(
            f"{labels[key]:<52}{row['samples_per_s']:>10.1f}{row['tokens_per_s']:>10.0f}{row['seconds']:>9.2f}"
            f"{row['ratio_vs_one_per_call']:>7.1f}x"
        )
    print(f"own decode loop returns the generate path's tokens: {rows['engine_vigos_loop']['same_tokens_as_hf_path']}")
    ratio_n = rows["engine_batched"]["samples_per_s"] / rows["per_call_n_samples"]["samples_per_s"]
    print(
        f"HFEngine vs one question per call: {rows['engine_batched']['ratio_vs_one_per_call']:.1f}x "
        f"({ratio_n:.1f}x vs one call per question with all its samples)"
    )
    return {
        "model": "tiny",
        "device": "cpu",
        "params": params.to_dict(),
        "questions": args.questions,
        "samples": args.samples,
        "batch_size": args.batch_size,
        "modes": rows,
    }


# ---------------------------------------------------------------------------------------------------- 7B shapes / GPU


def run_qwen7b_shapes(args: argparse.Namespace) -> dict[str, Any]:
    import transformers

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    t0 = time.perf_counter()
    model, processor = random_qwen25vl_7b_shapes(device, dtype, vision_depth=args.vision_depth, shrink=args.shrink)
    processor.tokenizer.padding_side = "left"  # for the HF baselines' batches
    eos = list(model.generation_config.eos_token_id)
    n_params = sum(p.numel() for p in model.parameters())
    setup_s = time.perf_counter() - t0

    params = SamplingParams(args.temperature, args.top_p, args.top_k, args.max_new_tokens)
    prompts = _prompts(processor, args.prompts, image_size=224)
    lengths = [len(processor(text=[p], images=ims)["input_ids"][0]) for p, ims in prompts]
    longer = set(range(0, args.prompts, 2))
    prompts_padded = _prompts(processor, args.prompts, image_size=224, longer=longer)
    lengths_padded = [len(processor(text=[p], images=ims)["input_ids"][0]) for p, ims in prompts_padded]
    print(
        f"{n_params / 1e9:.2f} B parameters on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}),"
        f" setup {setup_s:.0f}s; prompt tokens {min(lengths)}-{max(lengths)} (padded call: "
        f"{min(lengths_padded)}-{max(lengths_padded)}); torch {torch.__version__}, transformers "
        f"{transformers.__version__}",
        flush=True,
    )

    rows: dict[str, dict[str, Any]] = {}
    warm = SamplingParams(1.0, 1.0, 0, 4)
    _hf_generate(model, processor, prompts[:2], warm, eos, per_call=2)  # CUDA context, cuBLAS handles
    sweep = decode_sweep(model, processor, prompts, params, args) if args.decode_batches else None
    if args.decode_sweep_only:
        return {"model": "qwen7b-shapes" + ("-shrunk" if args.shrink else ""), "parameters": n_params,
                "params": params.to_dict(), "decode_sweep": sweep}
    rows["a_per_question_dynamic"] = _hf_generate(
        model, processor, prompts[: args.baseline_questions], params, eos, per_call=1
    )
    print("a", rows["a_per_question_dynamic"], flush=True)
    rows["b_batched_dynamic_hf"] = _hf_generate(model, processor, prompts, params, eos, per_call=len(prompts))
    print("b", rows["b_batched_dynamic_hf"], flush=True)
    dynamic = HFEngine(model, processor, batch_size=len(prompts), cache_implementation=None)
    rows["b2_engine_dynamic"] = _engine_run(dynamic, prompts, params)
    print("b2", rows["b2_engine_dynamic"], flush=True)
    static = HFEngine(model, processor, batch_size=len(prompts), cache_implementation="static")
    graphs0 = _dynamo_graphs()
    rows["c1_engine_static_first_call"] = _engine_run(static, prompts, params)
    print("c1", rows["c1_engine_static_first_call"], flush=True)
    graphs1 = _dynamo_graphs()
    rows["c2_engine_static"] = _engine_run(static, prompts, params)
    print("c2", rows["c2_engine_static"], flush=True)
    graphs2 = _dynamo_graphs()
    rows["c3_engine_static_other_padding"] = _engine_run(static, prompts_padded, params)
    print("c3", rows["c3_engine_static_other_padding"], flush=True)
    graphs3 = _dynamo_graphs()
    rows["c1_engine_static_first_call"]["dynamo_graphs_added"] = _diff(graphs1, graphs0)
    rows["c2_engine_static"]["dynamo_graphs_added"] = _diff(graphs2, graphs1)
    rows["c3_engine_static_other_padding"]["dynamo_graphs_added"] = _diff(graphs3, graphs2)
    rows["c3_engine_static_other_padding"]["prompt_widths"] = static.last_stats["prompt_widths"]
    rows["c3_engine_static_other_padding"]["cache_len"] = static.last_stats["cache_len"]

    base = rows["a_per_question_dynamic"]["tokens_per_s"]
    batched = rows["b_batched_dynamic_hf"]["tokens_per_s"]
    print(
        f"\n{len(prompts)} prompts with a 224x224 image, {args.max_new_tokens} new tokens, T {params.temperature}, "
        f"top-p {params.top_p}, top-k {params.top_k}"
    )
    print(f"{'mode':<46}{'tokens/s':>10}{'seconds':>9}{'vs (a)':>8}{'vs (b)':>8}{'graphs+':>9}")
    for key, row in rows.items():
        row["speedup_vs_a"] = row["tokens_per_s"] / base
        row["speedup_vs_b"] = row["tokens_per_s"] / batched
        graphs = row.get("dynamo_graphs_added")
        print(
            f"{key:<46}{row['tokens_per_s']:>10.0f}{row['seconds']:>9.2f}{row['speedup_vs_a']:>7.1f}x"
            f"{row['speedup_vs_b']:>7.1f}x{'' if graphs is None else graphs:>9}"
        )
    return {
        "model": "qwen7b-shapes" + ("-shrunk" if args.shrink else ""),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "parameters": n_params,
        "vision_depth": args.vision_depth,
        "prompts": len(prompts),
        "prompt_tokens": [min(lengths), max(lengths)],
        "prompt_tokens_other_padding": [min(lengths_padded), max(lengths_padded)],
        "params": params.to_dict(),
        "setup_seconds": setup_s,
        "modes": rows,
        "decode_sweep": sweep,
    }


# ---------------------------------------------------------------------------------------------------- own decode loop


def _vigos_tiny_row(model, processor, prompts, params: SamplingParams, args: argparse.Namespace,
                    reference: list[list[int]]) -> dict[str, Any]:
    """Tiny/CPU: the engine with its own decode loop (dynamic cache, eager) on the same requests; plumbing, and a
    check that it returns the `generate` path's tokens."""
    engine = HFEngine(model, processor, batch_size=args.batch_size, cache_implementation=None, decode="vigos")
    _engine_run(engine, prompts[:2], SamplingParams(1.0, 1.0, 0, 4))  # warm-up
    row, results = _timed_engine(engine, prompts, params, args.samples)
    row["same_tokens_as_hf_path"] = [r.token_ids for r in results] == reference
    return row


def _timed_engine(engine: HFEngine, prompts, params: SamplingParams, samples: int = 1):
    requests = [GenerationRequest(p, ims, seed=42 + s) for p, ims in prompts for s in range(samples)]
    device = engine.model.device
    _sync(device)
    started = time.perf_counter()
    results = engine.generate(requests, params)
    _sync(device)
    seconds = time.perf_counter() - started
    tokens = sum(len(r.token_ids) for r in results)
    return {"seconds": seconds, "samples": len(results), "tokens": tokens, "samples_per_s": len(results) / seconds,
            "tokens_per_s": tokens / seconds}, results


def decode_weight_bytes(model) -> int:
    """Bytes of the weights one decode step reads: the language model and its head (not the vision tower, which
    only the prefill runs, nor the input embedding, of which a step gathers one row per sequence)."""
    embed = model.get_input_embeddings().weight
    skip = set() if embed is model.get_output_embeddings().weight else {id(embed)}  # tied: the head reads it
    visual = {id(p) for name, p in model.named_parameters() if ".visual." in f".{name}"}
    return sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in skip | visual)


def decode_sweep(model, processor, prompts, params: SamplingParams, args: argparse.Namespace) -> dict[str, Any]:
    """(c2) the engine on `generate` (static cache, transformers' compiled decode) vs (d) the engine's own loop
    (static cache, CUDA-graph decode step) at each batch size: tokens/s of a full call, and the time of one decode
    step from two calls that differ only in their number of new tokens (prefill, processor and compile cancel out;
    the random-weight model practically never samples EOS, checked by counting the steps), and the bandwidth
    ratio = weight bytes / (bandwidth x ms per step)."""
    from projection import card_for  # the one card table (benchmarks/projection.py)

    weight_bytes = decode_weight_bytes(model)
    if not args.bandwidth_tbs:
        card = card_for(torch.cuda.get_device_name(model.device)) if model.device.type == "cuda" else None
        args.bandwidth_tbs = card.bandwidth / 1e12 if card else 4.8
    bandwidth = args.bandwidth_tbs * 1e12
    short = SamplingParams(params.temperature, params.top_p, params.top_k, max(2, params.max_new_tokens // 8))
    out: dict[str, Any] = {"weight_bytes": weight_bytes, "bandwidth_tbs": args.bandwidth_tbs,
                           "limit_ms_per_step": 1e3 * weight_bytes / bandwidth, "batches": {}}
    print(f"\ndecode sweep: {weight_bytes / 1e9:.2f} GB of weights per step, limit "
          f"{out['limit_ms_per_step']:.2f} ms/step at {args.bandwidth_tbs} TB/s", flush=True)
    print(f"{'batch':>5} {'mode':<44}{'tokens/s':>10}{'ms/step':>9}{'bw ratio':>9}{'graphs+':>8}{'same':>6}")
    for batch in [int(b) for b in args.decode_batches.split(",") if b.strip()]:
        chunk = [prompts[i % len(prompts)] for i in range(batch)]
        rows: dict[str, Any] = {}
        reference = None
        for key, decode in (("c2_engine_static_hf_generate", "hf"), ("d_engine_static_vigos_loop", "vigos")):
            engine = HFEngine(model, processor, batch_size=batch, cache_implementation="static", decode=decode)
            _timed_engine(engine, chunk, params)  # compile / capture at this (batch, cache length)
            graphs = _dynamo_graphs()
            row, results = _timed_engine(engine, chunk, params)
            short_row, short_results = _timed_engine(engine, chunk, short)
            steps = max(len(r.token_ids) for r in results) - max(len(r.token_ids) for r in short_results)
            row["ms_per_step"] = 1e3 * (row["seconds"] - short_row["seconds"]) / max(1, steps)
            row["bandwidth_ratio"] = out["limit_ms_per_step"] / row["ms_per_step"]
            row["dynamo_graphs_added"] = _diff(_dynamo_graphs(), graphs)
            tokens = [r.token_ids for r in results]
            reference = reference or tokens
            row["same_tokens_as_c2"] = tokens == reference
            rows[key] = row
            print(f"{batch:>5} {key:<44}{row['tokens_per_s']:>10.0f}{row['ms_per_step']:>9.2f}"
                  f"{row['bandwidth_ratio']:>8.0%}{'' if row['dynamo_graphs_added'] is None else row['dynamo_graphs_added']:>8}"
                  f"{str(row['same_tokens_as_c2']):>6}", flush=True)
        rows["speedup_d_vs_c2"] = rows["d_engine_static_vigos_loop"]["tokens_per_s"] / rows[
            "c2_engine_static_hf_generate"]["tokens_per_s"]
        out["batches"][batch] = rows
    return out


def run_server(args: argparse.Namespace) -> dict[str, Any]:
    """The tiny-run prompts through `OpenAIEngine` against the server at `--base-url`."""
    from transformers import AutoProcessor

    from vigos.generation.openai import OpenAIEngine

    folder = args.processor or str(build_tiny_model(Path(tempfile.mkdtemp()) / "tiny", seed=0))
    processor = AutoProcessor.from_pretrained(folder)
    params = SamplingParams(args.temperature, args.top_p, args.top_k, args.max_new_tokens)
    requests = _chat_requests(processor, args.questions, args.samples, image_size=64)
    engine = OpenAIEngine(args.base_url, args.server_model or folder, processor, concurrency=args.concurrency)
    engine.generate(requests[:1], params)  # the prefill probe and a warm-up, outside the timing
    started = time.perf_counter()
    results = engine.generate(requests, params)
    seconds = time.perf_counter() - started
    tokens = sum(r.num_tokens for r in results)
    return {"backend": "openai", "base_url": args.base_url, "route": engine.route.name, "seconds": seconds,
            "samples": len(results), "tokens": tokens, "samples_per_s": len(results) / seconds,
            "tokens_per_s": tokens / seconds, "errors": sum(r.finish_reason == "error" for r in results),
            "concurrency": args.concurrency}


def _chat_requests(processor, questions: int, samples: int, image_size: int) -> list[GenerationRequest]:
    """`questions` x `samples` requests (seeds 42+s), each with its chat messages: the engine reads the prompt text
    and images, a server the messages (the same prompt, see vigos.generation.openai)."""
    from vigos.data.prompts import with_prefill

    requests = []
    for i in range(questions):
        images = [_image(i, image_size)]
        messages = build_messages(QUESTIONS[i % len(QUESTIONS)], images)
        prompt = build_prompt_text(processor, messages)
        requests += [GenerationRequest(prompt, images, seed=42 + s, messages=with_prefill(messages))
                     for s in range(samples)]
    return requests


def _timed_generate(engine, requests, params: SamplingParams, device: torch.device) -> dict[str, Any]:
    _sync(device)
    started = time.perf_counter()
    results = engine.generate(requests, params)
    _sync(device)
    seconds = time.perf_counter() - started
    tokens = sum(r.num_tokens for r in results)
    return {"seconds": seconds, "samples": len(results), "tokens": tokens, "samples_per_s": len(results) / seconds,
            "tokens_per_s": tokens / seconds, "errors": sum(r.finish_reason == "error" for r in results),
            "stop_rate": sum(r.finish_reason == "stop" for r in results) / len(results)}


# ---------------------------------------------------------------------------------------------------- vLLM vs engine


def _save_7b_shapes(folder: Path, args: argparse.Namespace, device: torch.device) -> int:
    """The random-weight 7B-shape model (`--shrink`: tiny widths) and its processor as a bf16 safetensors folder,
    what `vllm serve` loads; the model is freed before any server starts (both backends get the whole GPU).
    Returns its parameter count."""
    import gc

    model, processor = random_qwen25vl_7b_shapes(device, torch.bfloat16, vision_depth=args.vision_depth,
                                                 shrink=args.shrink)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)  # safetensors
    processor.save_pretrained(folder)
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return n_params


def _server_row(folder: Path, processor, requests, params: SamplingParams, args: argparse.Namespace,
                device: torch.device, log_path: Path) -> dict[str, Any]:
    """(b) `vllm serve` on `folder` through the evaluation's own launcher (vigos.generation.vllm_server: start,
    health wait, stop on every exit path), the requests through `OpenAIEngine`. `--serve-with transformers`:
    `transformers serve` through the same launcher (the CPU smoke test)."""
    from vigos.generation import vllm_server as launcher
    from vigos.generation.openai import OpenAIEngine

    if args.serve_with == "vllm":
        command, model_name = None, launcher.SERVED_MODEL_NAME
        replicas = args.data_parallel_size or launcher.visible_gpus()
    else:
        exe = Path(sys.executable).with_name("transformers")

        def command(port: int) -> list[str]:
            return [str(exe), "serve", str(folder), "--host", "127.0.0.1", "--port", str(port), "--device",
                    device.type, "--log-level", "warning"]

        model_name, replicas = str(folder), 1
    started = time.perf_counter()
    with launcher.vllm_server(str(folder), data_parallel_size=replicas, log_path=log_path,
                              timeout_s=args.start_timeout, extra_args=shlex.split(args.vllm_args),
                              command=command) as base_url:
        start_s = time.perf_counter() - started
        print(f"{args.serve_with} serve healthy after {start_s:.0f}s", flush=True)
        engine = OpenAIEngine(base_url, model_name, processor, concurrency=args.concurrency)
        # the prefill probe and one round of `concurrency` requests, outside the timing (the engine's twin: its
        # first batch, which compiles)
        warm = _timed_generate(engine, requests[: args.concurrency], params, torch.device("cpu"))
        row = _timed_generate(engine, requests, params, torch.device("cpu"))
    row.update(server=args.serve_with, replicas=replicas, concurrency=args.concurrency, route=engine.route.name,
               start_seconds=start_s, warmup_seconds=warm["seconds"],
               tokens_per_s_per_gpu=row["tokens_per_s"] / replicas)
    return row


def _engine_row(folder: Path, requests, params: SamplingParams, args: argparse.Namespace,
                device: torch.device) -> dict[str, Any]:
    """(c) HFEngine on the same folder, requests and sampling (static cache + compiled decode on CUDA, the
    evaluation's `engine` backend; dynamic cache on CPU)."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    started = time.perf_counter()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch.bfloat16, attn_implementation="sdpa",
                                                               device_map=str(device)).eval()
    engine = HFEngine(model, AutoProcessor.from_pretrained(folder), batch_size=args.batch_size)
    load_s = time.perf_counter() - started
    warm = _timed_generate(engine, requests[: args.batch_size], params, device)  # compiles on CUDA
    row = _timed_generate(engine, requests, params, device)
    row.update(cache=engine.cache_implementation or "dynamic", batch_size=args.batch_size, load_seconds=load_s,
               warmup_seconds=warm["seconds"], tokens_per_s_per_gpu=row["tokens_per_s"])
    del engine, model
    return row


def run_vllm_vs_engine(args: argparse.Namespace) -> dict[str, Any]:
    """`--backend vllm`: (a) the model folder, (b) the server on it, (c) the engine on it, (d) side by side."""
    import transformers
    from transformers import AutoProcessor

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    params = SamplingParams(args.temperature, args.top_p, args.top_k, args.max_new_tokens)
    result: dict[str, Any] = {"model": args.model_dir or ("qwen7b-shapes" + ("-shrunk" if args.shrink else "")),
                              "device": gpu, "torch": torch.__version__, "transformers": transformers.__version__,
                              "questions": args.questions, "samples": args.samples, "params": params.to_dict()}

    def save() -> None:  # after each phase: a run cut short keeps what it measured
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="vigos-vllm-bench-", dir=args.work_dir) as tmp:
        started = time.perf_counter()
        if args.model_dir:
            folder = Path(args.model_dir)
        else:
            folder = Path(tmp) / "model"
            result["parameters"] = _save_7b_shapes(folder, args, device)
        result["setup_seconds"] = time.perf_counter() - started
        processor = AutoProcessor.from_pretrained(folder)
        requests = _chat_requests(processor, args.questions, args.samples, image_size=224)
        lengths = [len(processor(text=[r.prompt], images=r.images)["input_ids"][0])
                   for r in requests[: len(QUESTIONS) * args.samples : args.samples]]
        result["prompt_tokens"] = [min(lengths), max(lengths)]
        print(f"{result['model']} on {gpu} (setup {result['setup_seconds']:.0f}s): {args.questions} questions x "
              f"{args.samples} samples = {len(requests)} requests, a 224x224 image each, prompt tokens "
              f"{min(lengths)}-{max(lengths)}, {params.max_new_tokens} new tokens, T {params.temperature}, top-p "
              f"{params.top_p}, top-k {params.top_k}", flush=True)
        result["server"] = _server_row(folder, processor, requests, params, args, device, Path(tmp) / "server.log")
        print("server", result["server"], flush=True)
        save()
        result["engine"] = _engine_row(folder, requests, params, args, device)
        print("engine", result["engine"], flush=True)
    server, engine = result["server"], result["engine"]
    result["ratio_tokens_per_s_per_gpu"] = server["tokens_per_s_per_gpu"] / engine["tokens_per_s_per_gpu"]
    save()
    print(f"\n{'backend':<48}{'tokens/s':>10}{'per GPU':>9}{'wall s':>9}{'start s':>9}{'warm s':>8}{'errors':>7}")
    for label, row, start in (
        (f"{args.serve_with} serve, {server['replicas']} replica(s), {args.concurrency} in flight", server,
         server["start_seconds"]),
        (f"HFEngine, {engine['cache']} cache, batch {engine['batch_size']}", engine, engine["load_seconds"]),
    ):
        print(f"{label:<48}{row['tokens_per_s']:>10.0f}{row['tokens_per_s_per_gpu']:>9.0f}{row['seconds']:>9.1f}"
              f"{start:>9.1f}{row['warmup_seconds']:>8.1f}{row['errors']:>7}")
    print(f"server / engine, tokens/s per GPU: {result['ratio_tokens_per_s_per_gpu']:.2f}x (goal >= 2x); server "
          f"{server['tokens_per_s_per_gpu']:.0f} tokens/s per GPU (goal >= 3,000 on an H200); wall time of the "
          f"{len(requests)} samples: {server['seconds']:.1f}s vs {engine['seconds']:.1f}s")
    return result


def _diff(after: int | None, before: int | None) -> int | None:
    return None if after is None or before is None else after - before


def main() -> None:
    ev = EvalConfig()
    tiny_new_tokens = load_config("tiny").eval.max_new_tokens
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "qwen7b-shapes"), default="tiny")
    parser.add_argument("--questions", type=int, default=None, help="tiny / openai: questions (16); vllm: 1000.")
    parser.add_argument("--samples", type=int, default=ev.n_samples, help="tiny: samples per question (seeds 42+s).")
    parser.add_argument("--batch-size", type=int, default=ev.batch_size, help="tiny: engine sequences per call.")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help=f"Default: {tiny_new_tokens} (tiny preset), 128 (qwen7b-shapes, vllm).",
    )
    parser.add_argument("--temperature", type=float, default=ev.temperature)
    parser.add_argument("--top-p", type=float, default=ev.top_p)
    parser.add_argument("--top-k", type=int, default=ev.top_k)
    parser.add_argument("--prompts", type=int, default=32, help="qwen7b-shapes: prompts (= the engine batch).")
    parser.add_argument(
        "--baseline-questions",
        type=int,
        default=2,
        help="qwen7b-shapes: prompts for the slow one-per-call baseline (tokens/s is per token).",
    )
    parser.add_argument("--vision-depth", type=int, default=32, help="qwen7b-shapes: vision blocks (7B: 32).")
    parser.add_argument("--device", default=None, help="qwen7b-shapes: default cuda if available.")
    parser.add_argument("--shrink", action="store_true", help="qwen7b-shapes, vllm: tiny widths (a CPU smoke test).")
    parser.add_argument("--decode-batches", default="4,8,16,32",
                        help="qwen7b-shapes: batch sizes of the decode sweep, (c2) vs the own loop (empty: none).")
    parser.add_argument("--decode-sweep-only", action="store_true", help="qwen7b-shapes: only the decode sweep.")
    parser.add_argument("--bandwidth-tbs", type=float, default=None,
                        help="qwen7b-shapes: memory bandwidth for the sweep's limit, TB/s (default: the card's, from "
                             "benchmarks/projection.py; else the H200's 4.8).")
    parser.add_argument("--backend", choices=("engine", "openai", "vllm"), default="engine")
    parser.add_argument("--base-url", default="", help="openai: the server's API root (http://HOST:PORT/v1).")
    parser.add_argument("--server-model", default="", help="openai: the model name requests carry.")
    parser.add_argument("--processor", default="", help="openai: model folder for the processor (default: tiny).")
    parser.add_argument("--concurrency", type=int, default=ev.concurrency, help="openai, vllm: requests in flight.")
    parser.add_argument("--model-dir", default="", help="vllm: a model folder (default: random 7B shapes).")
    parser.add_argument("--serve-with", choices=("vllm", "transformers"), default="vllm",
                        help="vllm: the server the launcher starts (transformers: `transformers serve`, CPU smoke).")
    parser.add_argument("--data-parallel-size", type=int, default=0, help="vllm: replicas (0: one per GPU).")
    parser.add_argument("--vllm-args", default="", help="vllm: extra `vllm serve` arguments, one string.")
    parser.add_argument("--start-timeout", type=float, default=ev.vllm_start_timeout_s,
                        help="vllm: seconds the server may take to get healthy.")
    parser.add_argument("--work-dir", default=None, help="vllm: where the model folder is written (default: tmp).")
    parser.add_argument("--json", type=Path, default=None, help="Write the results here.")
    args = parser.parse_args()
    if args.backend == "vllm":
        args.questions = args.questions or 1000
        args.max_new_tokens = args.max_new_tokens or 128
        result = run_vllm_vs_engine(args)  # writes --json itself, after each phase
        if args.json:
            print(f"wrote {args.json}")
        return
    args.questions = args.questions or 16
    if args.backend == "openai":
        args.max_new_tokens = args.max_new_tokens or tiny_new_tokens
        result = run_server(args)
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return
    if args.max_new_tokens is None:
        args.max_new_tokens = tiny_new_tokens if args.model == "tiny" else 128
    result = run_tiny(args) if args.model == "tiny" else run_qwen7b_shapes(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
