"""Warm the tiny random Qwen2.5-VL up on well-formed ViGOS answers, so the CPU demo exercises every teacher.

A randomly initialised model never writes `</description>`, `<think>`, `</think>` and a `\\boxed{}` in that order,
so every demo rollout would be malformed and only the reference teacher would ever run. And the teachers are the
same model in other contexts: a model that only knows the student's context finds the student's tokens unlikely
in the perception and reasoning teachers' (nearly every perception token's KL above the 0.05 clip: no gradient
from that teacher), where a real instruct model follows each prompt. `warm_up_model(base, out)` fixes both with a
short supervised pass, done here with plain torch + transformers:

- Data: synthetic rows (`vigos.data.synthetic`, their own seed, not the demo's training rows), each with a
  completion `{description}</description>\\n<think>\\n{reasoning}\\n</think>\\n\\boxed{answer}<|im_end|>` (the
  description and reasoning are one line per question kind; about 30 tokens in all).
- Contexts: each row four times, in the student's context and in each teacher's, exactly as the trainer builds
  them (`teachers.context_text`: chat template, the release's texts, the row's image through the processor at the
  `tiny` preset's pixel budget), each answered as a prompt-following model would (`role_texts`): student and
  reference (`<description>` prefill): the full completion; perception (the image alone): the description and
  its closing tag; reasoning (image, problem, reference answer): `<think>\\n{reasoning}\\n</think>\\n\\boxed{answer}`,
  the same token ids as the trainer's context (ending in `<think`: `teachers.segment_tail`) followed by the
  student's tokens from `>\\n` on. The completion's tokens are appended as ids, as a rollout's would be; batches
  draw from the pooled 4 x 64 examples.
- Loss: cross-entropy on the completion tokens only (EOS included, so answers stop), with the softmax taken over
  the completions' own vocabulary (67 of the 152,064 lm_head rows) plus one column standing for all the others
  (they keep their random init, logits near 0: a column at log(their count) makes this the full-vocabulary
  cross-entropy within ~0.02 nats, so the trained tokens end up holding most of the full softmax's mass, as the
  trainer's full-vocabulary KL sees them). Over the full vocabulary the softmax is ~0.3 s of a ~0.45 s step on 2
  cores and the format needs 100+ steps (~45 s); restricted, and with only the embedding rows the examples use
  (254) and the lm_head rows of that vocabulary trained as small tables (the other rows never get a gradient;
  no dense [152,064 x 64] gradients to fill and update), a step takes ~0.05 s and the 110 steps 5-6 s (7 s in
  all in the demo; 10-15 s in a fresh process, which also imports the processor code). AdamW (fused), linear
  decay to 0, seeded, batches in a seeded order: the result is a pure function of (base, settings) on one
  machine.
- Few steps on purpose: the demo wants a model that writes the format *sometimes*, so both the perception and
  reasoning teachers (well-formed rollouts) and the reference teacher (malformed ones) get work. Sampled as
  training samples rollouts (T 1.1, top-p 0.95, top-k 20, 48 new tokens) on the demo's training rows, the default
  settings give 59% well-formed of 64 rollouts (warm-up seeds 1 and 2: 55% and 41%); 90 steps give 23%, 130
  give 89%. Scored by the teachers as in the demo's first train step (LoRA still zero: student = base), 64 such
  rollouts have 15% of the perception teacher's tokens clipped, 9% of the reasoning teacher's and under 1% of
  the reference teacher's (mean clipped KL per token 0.012, 0.007, 0.002); with the student-only warm-up of
  version 1: 98%, 79% and 47%.

The output folder holds the full model + the base's processor files (loaded like the tiny build, with
`AutoProcessor.from_pretrained` / `Qwen2_5_VLForConditionalGeneration.from_pretrained`), written atomically (temp
folder + rename) with a marker written last; it is reused when the marker's fingerprint (base build's fingerprint,
settings, `WARMUP_VERSION`) matches, so a second demo run skips the work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vigos.errors import VigosError
from vigos.modeling.tiny import MARKER_FILE as TINY_MARKER
from vigos.modeling.tiny import cached_folder, read_build_info

WARMUP_VERSION = 2  # bump when a change here changes the weights it writes (it is part of the cache key)
MARKER_FILE = "vigos_warmup.json"
"""Written last: its presence means the warm-up is complete; it holds the fingerprint, settings and final loss."""
DATA_SEED_OFFSET = 1000
"""Warm-up rows use synthetic seed `DATA_SEED_OFFSET + settings.seed`: other rows than the demo's (seed 0)."""


@dataclass(frozen=True)
class WarmupSettings:
    """How long and how hard to warm up (tuned for the `tiny` preset's rollout sampling, see the module docstring
    for the share of well-formed rollouts it gives)."""

    steps: int = 110
    batch_size: int = 8
    learning_rate: float = 4e-3
    """Peak rate of AdamW, decayed linearly to 0 over `steps`."""
    rows: int = 64
    """Distinct synthetic rows, each in the student's and the three teachers' contexts (`ROLES`): the examples
    are cycled through in a seeded order."""
    seed: int = 0


def completion_text(row: dict[str, Any]) -> str:
    """The well-formed completion (what follows the `<description>` prefill, EOS not included) for a synthetic row."""
    from vigos.data.answers import normalize_answer
    from vigos.data.synthetic import REASONING_STEPS, SCENE_DESCRIPTIONS, row_kind
    from vigos.training.segments import BOX_OPEN, DESCRIPTION_CLOSE, THINK_CLOSE, THINK_OPEN

    kind = row_kind(row)
    answer = normalize_answer(row["answer"])
    return (f"{SCENE_DESCRIPTIONS[kind]}{DESCRIPTION_CLOSE}\n{THINK_OPEN}\n{REASONING_STEPS[kind]}\n{THINK_CLOSE}\n"
            f"{BOX_OPEN}{answer}}}")


def role_texts(processor: Any, row: dict[str, Any], role: str) -> tuple[str, str]:
    """(context, completion) texts of `row` in `role`'s context: what a prompt-following model answers there (EOS
    not included). Each context is the trainer's own (`teachers.context_text`), so the warmed model has seen every
    context a teacher reads, the way a real instruct model has seen prompts like them.

    - student / reference: their `<description>` prefill, then the full well-formed completion;
    - perception (the image alone, no prefill): the description and its closing tag, then it stops. The teacher
      scores the description tokens only, but the last of them carries the `</` of `</description>` (Qwen's BPE
      reads `.</`), so the description ends as the student's does; without the problem there is nothing to
      reason about, so nothing follows;
    - reasoning (no prefill here): `<think>\\n{reasoning}\\n</think>\\n\\boxed{answer}`, as the prompt asks.
      Tokenised on its own that reads `<th` `ink` `>\\n` ..., the same ids as the trainer's context, which ends in
      `<think` (`segment_tail` gives up the `>` that the student's first reasoning token `>\\n` brings back),
      followed by the student's tokens from `>\\n` on (checked by tests/modeling/test_warmup.py).
    """
    from vigos.training.segments import DESCRIPTION_CLOSE, THINK_OPEN
    from vigos.training.teachers import ROLES, context_text

    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {ROLES}")
    full = completion_text(row)
    if role in ("student", "reference"):
        return context_text(processor, role, row["problem"], row["answer"]), full
    context = context_text(processor, role, row["problem"], row["answer"], prefill="")
    if role == "perception":
        return context, full[: full.index(DESCRIPTION_CLOSE) + len(DESCRIPTION_CLOSE)]
    return context, full[full.index(THINK_OPEN):]


def warm_up_model(
    base_dir: str | Path,
    output_dir: str | Path,
    settings: WarmupSettings | None = None,
    *,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Write the warmed-up copy of the tiny build `base_dir` to `output_dir` and return its path.

    Skips the work when `output_dir` already holds this warm-up of this base build (unless `force`). Refuses a
    base without a tiny-build marker, and a non-empty `output_dir` that is not a warm-up output.
    """
    base = Path(base_dir).expanduser().absolute()
    settings = settings or WarmupSettings()

    def write(tmp: Path) -> dict[str, Any]:
        info = _train(base, tmp, settings, progress)
        info.update(base=str(base), base_fingerprint=read_build_info(base)["fingerprint"], version=WARMUP_VERSION,
                    settings=dataclasses.asdict(settings))
        return info

    return cached_folder(output_dir, MARKER_FILE, warmup_fingerprint(base, settings), write,
                         what="a warm-up output", force=force)


def read_warmup_info(model_dir: str | Path) -> dict[str, Any]:
    """The marker of a complete warm-up (fingerprint, settings, final loss, ...), or {} if there is none."""
    try:
        return json.loads((Path(model_dir) / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return {}


def warmup_fingerprint(base_dir: str | Path, settings: WarmupSettings) -> str:
    """Identity of a warm-up: the base build's fingerprint (its `vigos_tiny_build.json`), settings, version."""
    base_fp = read_build_info(base_dir).get("fingerprint")
    if not base_fp:
        raise VigosError(f"{base_dir} is not a complete tiny-model build (no fingerprint in its marker); build it "
                         "first: vigos model tiny --output DIR")
    payload = {"version": WARMUP_VERSION, "base": base_fp, "settings": dataclasses.asdict(settings)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def valid_share(model_dir: str | Path, rows: int = 16, seed: int = 0, preset: str = "tiny") -> float:
    """Share of well-formed completions when `model_dir` answers `rows` synthetic prompts sampled as training
    samples rollouts (`HFEngine`, `SamplingParams.from_train`, the preset's completion budget). The rows are the
    demo's training rows (synthetic seed `seed`), which the warm-up never saw."""
    import io

    from PIL import Image

    from vigos.config import load_config
    from vigos.data.synthetic import synthetic_rows
    from vigos.generation import GenerationRequest, HFEngine, SamplingParams
    from vigos.modeling.load import load_model, load_processor
    from vigos.training.segments import parse_completion
    from vigos.training.teachers import context_text

    cfg = load_config(preset, values={"model.name_or_path": str(model_dir)})
    processor = load_processor(cfg.model, padding_side="left")
    model = load_model(cfg.model)
    engine = HFEngine(model, processor, batch_size=rows, decode=cfg.model.decode_loop)
    requests = [
        GenerationRequest(context_text(processor, "student", r["problem"], r["answer"]),
                          [Image.open(io.BytesIO(r["images"][0]["bytes"])).convert("RGB")], seed=seed * 1_000_003 + i)
        for i, r in enumerate(synthetic_rows(rows, seed))
    ]
    results = engine.generate(requests, SamplingParams.from_train(cfg.train))
    parsed = [parse_completion(processor.tokenizer, r.token_ids, eos_token_ids=engine.eos_token_ids) for r in results]
    return sum(p.valid for p in parsed) / len(parsed)


# --------------------------------------------------------------------------------------------------------------
# Internals


def _train(base: Path, out: Path, settings: WarmupSettings, progress: bool) -> dict[str, Any]:
    import torch
    from tqdm.auto import tqdm

    from vigos.config import load_config
    from vigos.modeling.load import load_model, load_processor

    # The processor and model exactly as training loads them (the tiny preset's pixel budget, float32).
    cfg = load_config("tiny", values={"model.name_or_path": str(base)})
    processor = load_processor(cfg.model, padding_side="right")
    examples = _examples(processor, settings)
    pad_id = processor.tokenizer.pad_token_id
    # sorted token ids (searchsorted maps them to table rows): every token the completions use (the softmax's
    # vocabulary, see the module docstring) and every token any input holds
    vocab = torch.tensor(sorted({t for ex in examples for t in ex["completion_ids"]}))
    seen = torch.tensor(sorted({t for ex in examples for t in ex["context_ids"] + ex["completion_ids"]} | {pad_id}))

    with torch.random.fork_rng(devices=[]):  # seeded without disturbing the caller's RNG
        torch.manual_seed(settings.seed)
        model = load_model(cfg.model).train()
        # Only the embedding rows of `seen` and the lm_head rows of `vocab` can ever get a gradient: train those
        # rows as two small tables, written back below. Same AdamW math (no weight decay: a row whose gradient is
        # always 0 never moves), without a dense [152,064 x 64] gradient per matrix to fill, clip, update and
        # free every step (about half of a step's time on 2 cores).
        embed, head = model.get_input_embeddings().weight, model.lm_head.weight
        embed.requires_grad_(False)
        head.requires_grad_(False)
        tables = (torch.nn.Parameter(embed[seen].clone()), torch.nn.Parameter(head[vocab].clone()))
        params = [p for p in model.parameters() if p.requires_grad] + list(tables)
        # fused: one kernel over all the weights (the for-each version is several times slower on 2 cores)
        optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0, fused=True)
        # linear decay to 0: the last steps settle the weights instead of leaving them mid-oscillation (with a
        # constant rate the share of well-formed rollouts jumps around from one step count to the next)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0 - i / settings.steps)
        order = random.Random(f"vigos-warmup:{settings.seed}")
        queue: list[int] = []
        losses: list[float] = []
        bar = tqdm(range(settings.steps), desc="warm-up", unit="step", disable=not progress)
        for _ in bar:
            batch = []
            while len(batch) < settings.batch_size:  # cycle through the rows, reshuffled each pass
                if not queue:
                    queue = order.sample(range(len(examples)), len(examples))
                batch.append(examples[queue.pop()])
            loss = _completion_loss(model, batch, pad_id, (seen, tables[0]), (vocab, tables[1]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3g}", refresh=False)  # shown with the next update
        with torch.no_grad():
            embed[seen], head[vocab] = tables
        model.eval()

    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar for one small file
    try:
        model.save_pretrained(out)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    # The base's processor files, byte for byte (tokenizer, chat template, pixel budget): not re-saved from the
    # loaded processor, whose padding side and pixel settings were set for this pass.
    for f in base.iterdir():
        skip = f.suffix == ".safetensors" or f.name == TINY_MARKER  # the weights are ours; this is no tiny build
        if f.is_file() and not skip and not (out / f.name).exists():
            shutil.copy2(f, out / f.name)
    return {"first_loss": round(losses[0], 4), "final_loss": round(losses[-1], 4), "examples": len(examples)}


def _examples(processor: Any, settings: WarmupSettings) -> list[dict[str, Any]]:
    """Each row in each role's context (`ROLES`): the context (processor outputs with the row's image) and the
    completion's token ids (EOS last), rows major."""
    import io

    from PIL import Image

    from vigos.data.synthetic import synthetic_rows
    from vigos.training.teachers import ROLES

    tok = processor.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    examples = []
    for row in synthetic_rows(settings.rows, DATA_SEED_OFFSET + settings.seed):
        image = Image.open(io.BytesIO(row["images"][0]["bytes"])).convert("RGB")
        for role in ROLES:
            context, completion = role_texts(processor, row, role)
            enc = processor(text=[context], images=[image], return_tensors="pt", return_mm_token_type_ids=True)
            examples.append({
                "role": role,
                "context_ids": enc["input_ids"][0].tolist(),
                "mm_token_type_ids": enc["mm_token_type_ids"][0].tolist(),
                "pixel_values": enc["pixel_values"],
                "image_grid_thw": enc["image_grid_thw"],
                "completion_ids": tok(completion, add_special_tokens=False)["input_ids"] + [eos],
            })
    return examples


def _completion_loss(model: Any, batch: list[dict[str, Any]], pad_id: int, embed, head):
    """Mean cross-entropy of the completion tokens given their contexts (right-padded batch). `embed` and `head`
    are (sorted token ids, their trained rows) of the input embedding and of the lm_head; the softmax is over
    `head`'s tokens (every token the completions use; see the module docstring)."""
    import torch

    rows = [ex["context_ids"] + ex["completion_ids"] for ex in batch]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    mm_types = torch.zeros_like(input_ids)
    target = torch.zeros_like(input_ids, dtype=torch.bool)  # completion tokens
    for i, (ex, r) in enumerate(zip(batch, rows, strict=True)):
        n_ctx = len(ex["context_ids"])
        input_ids[i, : len(r)] = torch.tensor(r)
        attention_mask[i, : len(r)] = 1
        mm_types[i, :n_ctx] = torch.tensor(ex["mm_token_type_ids"])
        target[i, n_ctx : len(r)] = True
    seen, embed_rows = embed
    vocab, head_rows = head
    # F.embedding, not embed_rows[...]: its backward sums repeated tokens in a fixed order (indexing's accumulate
    # does not, and the weights would differ from run to run)
    embeds = torch.nn.functional.embedding(torch.searchsorted(seen, input_ids), embed_rows)
    # input_ids still go in: they place the image features and (with mm_token_type_ids) give the model the same
    # multimodal rotary positions as when sampling
    hidden = model.model(
        input_ids=input_ids, inputs_embeds=embeds, attention_mask=attention_mask, mm_token_type_ids=mm_types,
        pixel_values=torch.cat([ex["pixel_values"] for ex in batch]),
        image_grid_thw=torch.cat([ex["image_grid_thw"] for ex in batch]),
    ).last_hidden_state
    # position p predicts token p + 1: only the positions that predict a completion token, only `vocab`'s rows
    logits = hidden[:, :-1][target[:, 1:]] @ head_rows.T
    # The other lm_head rows keep their random init: logits near 0. One column at log(their count) stands for all
    # of them, so this is (nearly) the full-vocabulary cross-entropy: the trained tokens must outweigh ~150,000
    # untrained ones, as they do when the trainer's teachers and student score them over the full vocabulary.
    rest = math.log(model.lm_head.weight.shape[0] - len(vocab))
    logits = torch.cat([logits, logits.new_full((len(logits), 1), rest)], dim=1)
    labels = torch.searchsorted(vocab, input_ids[:, 1:][target[:, 1:]])
    return torch.nn.functional.cross_entropy(logits.float(), labels)
