"""ViGOS full-run projection: the paper's training run and its two evaluations, from per-phase times on one card.

    python benchmarks/full_run.py --measured benchmarks/results/phases_h200.json      # from train_step.py --phases
    python benchmarks/full_run.py --model qwen7b-shapes                              # measure here first (GPU)
    .venv/bin/python benchmarks/full_run.py --model qwen7b-shapes --shrink --decode-batches 1,4   # CPU smoke test

Inputs: per-phase times measured on the card at hand (`benchmarks/train_step.py --phases`: decode ms per step at
batch 1-32, prefill, teacher forward, student forward + backward, optimizer), or an older train_step.py JSON
(optimizer steps + fwd_bwd: one decode batch size, prefill inside it; `--steps-batch` gives its rollouts per step).
Arguments this script does not know go to train_step.py when it measures.

Model (benchmarks/projection.py): completion lengths are log-normal (median `--length-median`, sigma
`--length-sigma`, cut at the max new tokens); each optimizer step's rollouts wait for the longest of the step's
`--rollouts` (expected maximum, order statistics), decoding at batch rollouts / GPUs; each micro-step waits for the
longest of its `--gpus` rollouts; teacher and student times scale with their tokens; each evaluation (base and
trained model) generates questions x samples (the benchmark registry and `eval` config) in calls of
`eval.batch_size` sequences on the `engine` backend, each call as long as its longest sequence. Other cards: decode
scaled by memory bandwidth, everything else by peak dense bf16 FLOP/s. Prints hours and GPU-hours per phase, the
decode steps' share of the bandwidth limit and the student pass's MFU; `--json` writes it all.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import projection as P  # noqa: E402

from vigos.config import load_config  # noqa: E402
from vigos.evaluation.benchmarks import get_benchmark  # noqa: E402


def eval_plan(cfg) -> dict[str, tuple[int, int]]:
    """{benchmark: (questions, samples)} of the config's evaluation, from the benchmark registry."""
    plan = {}
    for name in cfg.eval.benchmarks:
        spec = get_benchmark(name)
        if spec.items is None:
            raise ValueError(f"benchmark {name!r} has no question count (`items`) in the registry")
        plan[name] = (spec.items, spec.n_samples(cfg.eval.n_samples))
    return plan


def measure(train_step_argv: list[str]) -> dict[str, Any]:
    """train_step.py --phases on this card (same process)."""
    import train_step

    return train_step.run(train_step.parse_args([*train_step_argv, "--phases"]))


def project(ph: P.Phases, args, cfg, device: str = "this device") -> dict[str, Any]:
    run = P.TrainRun(args.steps, args.rollouts, args.gpus, args.prompt_tokens, args.valid_fraction)
    train_len = P.LengthDist(args.length_median, args.length_sigma, args.length_cap)
    eval_len = P.LengthDist(args.length_median, args.length_sigma, cfg.eval.max_new_tokens)
    plan = eval_plan(cfg)
    sequences = P.eval_sequences(plan)
    targets = [("measured", ph.card)] if ph.card else [("measured", None)]
    targets += [(key, card) for key, card in (("A100", P.CARDS["A100"]), ("H100", P.CARDS["H100"]))
                if ph.card is not None]
    out: dict[str, Any] = {
        "lengths": {"median": train_len.median, "sigma": train_len.sigma, "cap": train_len.cap,
                    "mean": train_len.mean(), "p95": train_len.quantile(0.95),
                    "capped_fraction": train_len.capped_fraction(),
                    "longest_of_step": train_len.expected_max(run.rollouts),
                    "longest_of_micro_step": train_len.expected_max(run.gpus),
                    "eval_cap": eval_len.cap, "eval_longest_of_call": eval_len.expected_max(cfg.eval.batch_size)},
        "run": vars(run), "eval": {"benchmarks": plan, "sequences": sequences, "batch_size": cfg.eval.batch_size,
                                   "max_new_tokens": cfg.eval.max_new_tokens},
        "cards": {},
    }
    for key, card in targets:
        on = ph if key == "measured" or card is None else ph.scaled_to(card)
        seconds = P.project_training(on, run, train_len)
        ev = P.project_eval(on, sequences, run.gpus, cfg.eval.batch_size, args.prompt_tokens, eval_len)["generate"]
        seconds |= {"training": sum(seconds.values()), "eval_base": ev, "eval_trained": ev}
        seconds["total"] = seconds["training"] + 2 * ev
        label = f"{run.gpus}x{card.name if card else device}" + (" (measured card)" if key == "measured" else "")
        out["cards"][label] = {"hours": {k: v / 3600 for k, v in seconds.items()},
                               "gpu_hours": {k: v / 3600 * run.gpus for k, v in seconds.items()},
                               "decode_ms": {"training": on.decode_at(run.rollouts // run.gpus),
                                             "eval": on.decode_at(cfg.eval.batch_size)}}
    return out


def bandwidth_table(ph: P.Phases) -> list[dict[str, float | None]]:
    weights = P.weight_bytes(ph.lm_params)
    rows = []
    for b, ms in sorted(ph.decode_ms.items()):
        limit = P.bandwidth_limit_ms(weights, ph.card.bandwidth) if ph.card else None
        rows.append({"batch": b, "ms_per_step": ms, "limit_ms": limit, "ratio": limit / ms if limit else None,
                     "tokens_per_s": 1000 * b / ms})
    return rows


def report(src: str, data: dict[str, Any], ph: P.Phases, proj: dict[str, Any], bw: list, mfu: dict) -> None:
    card = ph.card
    print(f"\nFull-run projection from {src} ({data.get('device')}, {data.get('model')}, torch {data.get('torch')}, "
          f"gradient checkpointing {data.get('gradient_checkpointing', 'not recorded')})")
    print("Scaling rule: decode ms x (bandwidth of the measured card / target's); prefill, teacher, student, "
          "optimizer seconds x (peak bf16 FLOP/s measured / target's). Specs used:")
    for c in P.CARDS.values():
        print(f"  {c.name}: {c.bandwidth / 1e12:.3f} TB/s, {c.flops / 1e12:.0f} TFLOP/s dense bf16"
              + ("  <- measured card" if c is card else ""))
    if card is None:
        print("  the measured device is not in this table: only its own projection (name it with --source-card)")
    for note in ph.notes:
        print(f"  note: {note}")
    L = proj["lengths"]
    run = proj["run"]
    print(f"Completion lengths: log-normal, median {L['median']:.0f}, sigma {L['sigma']}, cap {L['cap']}: mean "
          f"{L['mean']:.0f}, p95 {L['p95']:.0f}, {100 * L['capped_fraction']:.2f}% capped; expected longest of "
          f"{run['rollouts']} (a step): {L['longest_of_step']:.0f}, of {run['gpus']} (a micro-step): "
          f"{L['longest_of_micro_step']:.0f}; eval (cap {L['eval_cap']}) longest of {proj['eval']['batch_size']} "
          f"(a call): {L['eval_longest_of_call']:.0f}")
    weights = P.weight_bytes(ph.lm_params)
    print(f"\nDecode vs the bandwidth limit (weights {weights / 1e9:.2f} GB = {ph.lm_params / 1e9:.2f} B LM "
          f"parameters x 2 bytes, read once per step):")
    print("| batch | ms per step | limit ms | share of limit | tokens/s |\n|---:|---:|---:|---:|---:|")
    for r in bw:
        lim = f"{r['limit_ms']:.2f}" if r["limit_ms"] else "n/a"
        share = f"{100 * r['ratio']:.1f}%" if r["ratio"] else "n/a"
        print(f"| {r['batch']} | {r['ms_per_step']:.2f} | {lim} | {share} | {r['tokens_per_s']:,.0f} |")
    print(f"Student pass MFU: {mfu['text']}")
    ev = proj["eval"]
    print(f"\nPaper run: {run['steps']:,} steps x {run['rollouts']} rollouts ({run['rollouts'] // run['gpus']} per "
          f"GPU on {run['gpus']}), prompts {run['prompt_tokens']:.0f} tokens, {100 * run['valid_fraction']:.0f}% "
          f"valid; each evaluation: {sum(q for q, _ in ev['benchmarks'].values()):,} questions, "
          f"{ev['sequences']:,} sequences, {ev['max_new_tokens']} max new tokens, engine backend, "
          f"{ev['batch_size']} per call")
    labels = list(proj["cards"])
    print("\n| phase | " + " | ".join(f"{lab}: h | GPU-h" for lab in labels) + " |")
    print("|---|" + "---:|---:|" * len(labels))
    for phase in ("rollout", "teachers", "student", "optimizer", "training", "eval_base", "eval_trained", "total"):
        cells = " | ".join(f"{proj['cards'][lab]['hours'][phase]:,.1f} | {proj['cards'][lab]['gpu_hours'][phase]:,.0f}"
                           for lab in labels)
        name = {"training": "**training run**", "total": "**total (training + 2 evaluations)**"}.get(phase, phase)
        print(f"| {name} | {cells} |")
    print("| decode ms per step (training batch, eval batch) | " + " | ".join(
        f"{proj['cards'][lab]['decode_ms']['training']:.1f}, {proj['cards'][lab]['decode_ms']['eval']:.1f} | "
        for lab in labels) + "|")


def main() -> None:
    cfg = load_config("paper-7b")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measured", type=Path, default=None,
                        help="a train_step.py JSON (--phases, or an older optimizer-steps + fwd_bwd one); without "
                             "it, measure here (other arguments go to train_step.py)")
    parser.add_argument("--steps-batch", type=int, default=None,
                        help="rollouts per step of an older JSON's optimizer steps (its --prompts)")
    parser.add_argument("--source-card", choices=sorted(P.CARDS), default=None,
                        help="the measured card, when its device name is not in the spec table")
    parser.add_argument("--steps", type=int, default=1490, help="optimizer steps of the paper's run")
    parser.add_argument("--rollouts", type=int, default=cfg.train.global_batch_size, help="rollouts per step")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=float, default=400.0,
                        help="prompt tokens per rollout and per eval question (image + text; assumed, not measured)")
    parser.add_argument("--valid-fraction", type=float, default=1.0,
                        help="rollouts in the right format (two teacher contexts instead of one)")
    parser.add_argument("--length-median", type=float, default=450.0)
    parser.add_argument("--length-sigma", type=float, default=0.7,
                        help="sigma of log(length): 0.7 puts the 95th percentile at 3.2x the median")
    parser.add_argument("--length-cap", type=int, default=cfg.train.max_completion_length)
    parser.add_argument("--json", type=Path, default=None)
    args, rest = parser.parse_known_args()
    if args.measured:
        if rest:
            parser.error(f"unknown arguments with --measured: {' '.join(rest)}")
        data, src = json.loads(args.measured.read_text()), str(args.measured)
    else:
        data, src = measure(rest), "this run's measurements"
    card = P.CARDS[args.source_card] if args.source_card else None
    ph = P.phases_from_json(data, steps_batch=args.steps_batch, card=card)
    proj = project(ph, args, cfg, device=data.get("device", "this device"))
    bw = bandwidth_table(ph)
    mfu = student_mfu(data, ph)
    report(src, data, ph, proj, bw, mfu)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"source": src, "measured": data, "notes": ph.notes, "bandwidth": bw,
                                         "student_mfu": mfu, **proj}, indent=2))


def student_mfu(data: dict[str, Any], ph: P.Phases) -> dict[str, Any]:
    """The student pass's MFU (6 N tokens/s / peak): measured by --phases, or an older JSON's fwd_bwd figure."""
    if ph.card is None:
        return {"value": None, "text": "n/a (no peak FLOP/s for this device)"}
    if "phases" in data:
        value = P.mfu(ph.lm_params, ph.student_tps, ph.card.flops)
        return {"value": value, "text": f"{100 * value:.1f}% (student forward + KL + backward, micro-batch 1)"}
    value = data["fwd_bwd"]["ours"]["mfu"]
    return {"value": value, "text": f"{100 * value:.1f}% as recorded by fwd_bwd (teacher forward + student fwd/bwd "
                                    f"on one {data['fwd_bwd']['tokens']}-token sequence; the student alone, split as "
                                    f"above: {100 * P.mfu(ph.lm_params, ph.student_tps, ph.card.flops):.1f}%)"}


if __name__ == "__main__":
    main()
