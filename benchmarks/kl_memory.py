#!/usr/bin/env python
"""Peak memory and time of the full-vocabulary clipped token KL with backward (the KL anchors in benchmarks/RESULTS.md).

Three ways to compute ``mean_t min(KL(p_teacher || p_student), clip)`` and its gradient w.r.t. the student's
final hidden states, for one sequence of N completion tokens (the teacher's hidden states come from a no_grad
forward; the lm_head weight is frozen, as with LoRA on the language model, unless ``--weight-grad``):

* naive:  full ``[N, V]`` logits of teacher and student, float32 log-softmax, KL, backward;
* simple: the naive graph per 512-token chunk under ``torch.utils.checkpoint`` (logits recomputed in backward);
* ours:   ``vigos.training.losses.chunked_clipped_token_kl`` (chunked, gradients formed in-chunk).

Peak memory is what a case allocates on top of its inputs (hidden states and weight): on CUDA
``torch.cuda.max_memory_allocated`` after a reset; on CPU the process's peak RSS (VmHWM, reset through
/proc/self/clear_refs) with glibc's mmap threshold pinned low so freed buffers go back to the OS. Each case
runs once to warm up, then ``--repeats`` times (median time, max peak). Values and gradients are checked
against the naive case.

    python benchmarks/kl_memory.py                                     # CUDA: V=152,064, H=3,584, N=1k/2k/4k
    python benchmarks/kl_memory.py --device cpu --vocab 8192 --hidden 256 --tokens 256 512 1024 --chunk-size 64
    python benchmarks/kl_memory.py --json kl.json

Needs only torch (the loss module is loaded from its file, not through the package).

Measured on one NVIDIA H200 (torch 2.11, bf16, V=152,064, H=3,584, no clip, frozen weight), peak GiB / ms:

    tokens   naive          simple-512     ours-288 (auto)   ours-128
    1024     3.48 / 11.1    1.75 / 17.7    0.52 / 12.4       0.25 / 14.8
    2048     6.96 / 21.4    1.75 / 34.5    0.55 / 23.9       0.27 / 28.0
    4096    13.92 / 42.6    1.75 / 68.3    0.60 / 45.6       0.33 / 55.3

With ``--weight-grad`` ours takes 3.1 GiB / 173 ms at 4096 (a float32 [V, H] accumulator and float32 matmuls).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

_LOSSES = Path(__file__).resolve().parents[1] / "vigos" / "training" / "losses.py"


def _load_losses():
    spec = importlib.util.spec_from_file_location("vigos_training_losses", _LOSSES)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


losses = _load_losses()

# ---------------------------------------------------------------------------------------------------------------
# The three implementations: each returns the loss (graph attached); the caller runs backward.


def _kl_terms(teacher_logits, student_logits, clip, temperature, direction):
    """Per-token min(KL, clip) from logits, written out (float32)."""
    lt = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    ls = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    src, tgt = (lt, ls) if direction == "teacher-student" else (ls, lt)
    kl = (src.exp() * (src - tgt)).sum(-1)
    if clip is not None:
        kl = torch.where(kl >= clip, torch.full_like(kl, clip), kl)
    return kl


def naive_loss(student_h, teacher_h, weight, args):
    with torch.no_grad():
        teacher_logits = F.linear(teacher_h, weight)
    student_logits = F.linear(student_h, weight)
    return _kl_terms(teacher_logits, student_logits, args.clip, args.temperature, args.direction).mean()


def simple_chunked_loss(student_h, teacher_h, weight, args):
    def chunk_sum(s, t):
        with torch.no_grad():
            teacher_logits = F.linear(t, weight)
        return _kl_terms(teacher_logits, F.linear(s, weight), args.clip, args.temperature, args.direction).sum()

    n = student_h.shape[0]
    total = student_h.new_zeros((), dtype=torch.float32)
    for a in range(0, n, args.simple_chunk):
        total = total + checkpoint(chunk_sum, student_h[a: a + args.simple_chunk],
                                   teacher_h[a: a + args.simple_chunk], use_reentrant=False)
    return total / n


def ours_loss(student_h, teacher_h, weight, args, chunk_size):
    mask = torch.ones(student_h.shape[0], dtype=torch.bool, device=student_h.device)
    if args.direction == "teacher-student":  # perception / reasoning: the student is the target
        source, target = teacher_h, student_h
    else:  # reference: KL(student || teacher)
        source, target = student_h, teacher_h
    terms = losses.chunked_clipped_token_kl(source, target, weight, mask, temperature=args.temperature,
                                            clip=args.clip, chunk_size=chunk_size)
    return terms.mean()


# ---------------------------------------------------------------------------------------------------------------
# Measurement


class _CpuPeak:
    """Peak RSS above the start of a case (Linux): VmHWM after writing 5 to /proc/self/clear_refs."""

    def __init__(self):
        self.ok = False
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD = 64 KiB: big buffers are mmapped and returned on free
            self._reset()
            self._read("VmHWM:")
            self.ok = True
        except (OSError, AttributeError, ValueError, TypeError):
            pass

    @staticmethod
    def _read(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        raise ValueError(key)

    @staticmethod
    def _reset():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def start(self):
        if self.ok:
            self._reset()
            self.base = self._read("VmRSS:")

    def peak(self):
        return self._read("VmHWM:") - self.base if self.ok else None


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(fn, student_h, device, cpu_peak, weight):
    """One forward + backward; returns (seconds, peak bytes or None, loss, student grad)."""
    student_h.grad = None
    weight.grad = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        cpu_peak.start()
    _sync(device)
    t0 = time.perf_counter()
    loss = fn()
    loss.backward()
    _sync(device)
    seconds = time.perf_counter() - t0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = cpu_peak.peak()
    grad = student_h.grad
    student_h.grad = None
    weight.grad = None
    return seconds, peak, float(loss.detach()), grad


def measure(name, fn, student_h, weight, device, args, cpu_peak, reference):
    try:
        run_case(fn, student_h, device, cpu_peak, weight)  # warm-up (kernels, cuBLAS workspace)
        times, peaks = [], []
        for _ in range(args.repeats):
            seconds, peak, loss, grad = run_case(fn, student_h, device, cpu_peak, weight)
            times.append(seconds)
            peaks.append(peak)
    except torch.cuda.OutOfMemoryError:
        student_h.grad = None
        weight.grad = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {"method": name, "oom": True}, None
    row = {
        "method": name,
        "oom": False,
        "time_ms": statistics.median(times) * 1e3,
        "peak_bytes": None if peaks[0] is None else max(peaks),
        "loss": loss,
    }
    if reference is not None:
        ref_loss, ref_grad = reference
        row["loss_abs_diff"] = abs(loss - ref_loss)
        scale = ref_grad.float().abs().max().item() or 1.0
        row["grad_max_rel_diff"] = (grad.float() - ref_grad.float()).abs().max().item() / scale
    return row, (loss, grad.detach().clone())


def bench_tokens(n, weight, g, dtype, device, chunk_sizes, args, cpu_peak):
    """All cases for one sequence of n tokens; the first (naive) is the reference for values and ratios."""
    student_h = torch.randn(n, args.hidden, generator=g).to(device=device, dtype=dtype).requires_grad_()
    teacher_h = (student_h.detach().float() + 0.5 * torch.randn(n, args.hidden, generator=g).to(device)).to(dtype)
    cases = []
    if not args.skip_naive:
        cases.append(("naive", lambda: naive_loss(student_h, teacher_h, weight, args)))
    cases.append((f"simple-{args.simple_chunk}", lambda: simple_chunked_loss(student_h, teacher_h, weight, args)))
    for c in chunk_sizes:
        size = c or losses.default_chunk_size(args.vocab)
        label = f"ours-{size}" + ("(auto)" if c is None else "")
        cases.append((label, lambda size=size: ours_loss(student_h, teacher_h, weight, args, size)))
    reference = None
    rows = []
    for name, fn in cases:
        row, out = measure(name, fn, student_h, weight, device, args, cpu_peak, reference)
        if name == "naive" and out is not None:
            reference = out
        row["tokens"] = n
        rows.append(row)
    naive = rows[0] if rows[0]["method"] == "naive" and not rows[0]["oom"] else None
    for row in rows:
        if naive is not None and not row["oom"]:
            row["time_ratio_naive_over"] = naive["time_ms"] / row["time_ms"]
            if row["peak_bytes"] and naive["peak_bytes"]:
                row["peak_ratio_naive_over"] = naive["peak_bytes"] / row["peak_bytes"]
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:N or cpu")
    p.add_argument("--vocab", type=int, default=None, help="default 152064 (CUDA) / 8192 (CPU)")
    p.add_argument("--hidden", type=int, default=None, help="default 3584 (CUDA) / 256 (CPU)")
    p.add_argument("--tokens", type=int, nargs="+", default=None, help="default 1024 2048 4096 (CUDA) / 256 512 1024")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--chunk-size", nargs="+", default=["auto"],
                   help="ours: tokens per chunk, one or more ints or 'auto' (default: auto)")
    p.add_argument("--simple-chunk", type=int, default=512, help="the simple baseline's tokens per chunk")
    p.add_argument("--clip", type=float, default=None,
                   help="token KL clip (default none: every token gets a gradient, the worst case for ours)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--direction", default="teacher-student", choices=["teacher-student", "student-teacher"],
                   help="KL(teacher||student) (perception/reasoning) or KL(student||teacher) (reference)")
    p.add_argument("--weight-grad", action="store_true", help="make the lm_head weight trainable too")
    p.add_argument("--skip-naive", action="store_true", help="skip the naive case (then nothing is checked)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    gpu = device.type == "cuda"
    args.vocab = args.vocab or (152_064 if gpu else 8192)
    args.hidden = args.hidden or (3584 if gpu else 256)
    args.tokens = args.tokens or ([1024, 2048, 4096] if gpu else [256, 512, 1024])
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    chunk_sizes = [None if c == "auto" else int(c) for c in args.chunk_size]
    cpu_peak = None if gpu else _CpuPeak()

    g = torch.Generator(device="cpu").manual_seed(args.seed)
    weight = (torch.randn(args.vocab, args.hidden, generator=g) / args.hidden**0.5).to(device=device, dtype=dtype)
    weight.requires_grad_(args.weight_grad)

    env = {
        "device": torch.cuda.get_device_name(device) if gpu else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "dtype": args.dtype,
        "vocab": args.vocab,
        "hidden": args.hidden,
        "clip": args.clip,
        "direction": args.direction,
        "weight_grad": args.weight_grad,
        "memory": "cuda max_memory_allocated above inputs" if gpu else (
            "peak RSS above start (VmHWM)" if cpu_peak.ok else "unavailable"),
    }
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    results = []
    for n in args.tokens:
        results.extend(bench_tokens(n, weight, g, dtype, device, chunk_sizes, args, cpu_peak))
        gc.collect()

    _print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"env": env, "results": results}, indent=2) + "\n")
        print(f"wrote {args.json}")


def _print_table(rows):
    head = f"{'tokens':>6} {'method':<16} {'peak GiB':>9} {'time ms':>9} {'naive/x mem':>11} {'naive/x time':>12} " \
           f"{'|dloss|':>9} {'grad rel':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        if r["oom"]:
            print(f"{r['tokens']:>6} {r['method']:<16} {'OOM':>9}")
            continue
        peak = "n/a" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**30:.3f}"
        mem = f"{r['peak_ratio_naive_over']:.1f}x" if "peak_ratio_naive_over" in r else "-"
        tim = f"{r['time_ratio_naive_over']:.2f}x" if "time_ratio_naive_over" in r else "-"
        dl = f"{r['loss_abs_diff']:.1e}" if "loss_abs_diff" in r else "-"
        dg = f"{r['grad_max_rel_diff']:.1e}" if "grad_max_rel_diff" in r else "-"
        print(f"{r['tokens']:>6} {r['method']:<16} {peak:>9} {r['time_ms']:>9.1f} {mem:>11} {tim:>12} {dl:>9} {dg:>9}")


if __name__ == "__main__":
    main()
