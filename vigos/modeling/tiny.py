"""A tiny, randomly initialised Qwen2.5-VL checkpoint built offline: the CPU demo's and the tests' base model.

`build_tiny_model(dir)` writes a folder laid out like `Qwen/Qwen2.5-VL-7B-Instruct` (config.json,
model.safetensors, generation_config.json, tokenizer + chat template + image/video processor configs), so the
production code loads it with the very same calls: `AutoProcessor.from_pretrained(dir)`,
`Qwen2_5_VLForConditionalGeneration.from_pretrained(dir)`, `qwen_vl_utils.process_vision_info(messages)`.

- Model: the real architecture at toy width (text hidden 64, 2 layers, 4 query / 2 KV heads, head_dim 16 with
  M-RoPE sections summing to head_dim/2; vision hidden 32, depth 2, window + full attention, patch 14, merge 2),
  float32, about 0.26 M parameters (untied embeddings of 832 rows: the tokenizer size rounded up to 64, as the
  real 152064-row embedding exceeds its 151665-token tokenizer), seeded.
- Tokenizer: a byte-level BPE trained (with `tokenizers`, no download) on a small built-in corpus containing the
  ViGOS prompt and output format, using exactly the Qwen2 pre-tokenizer/normalizer/decoder, followed by Qwen2.5's
  22 added tokens in their usual order (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, ..., `<|video_pad|>`, ...).
  Model config token ids (image/video/vision start/end, bos/eos/pad) are read from that tokenizer.
- Processor: the Qwen2.5-VL-Instruct chat template (default system message "You are a helpful assistant.") and
  small pixel budgets (the `tiny` preset's min/max pixels) so an image becomes a handful of tokens.
- generation_config.json: Qwen2.5-VL-7B-Instruct's (eos = [<|im_end|>, <|endoftext|>], pad = <|endoftext|>, and its
  sampling defaults: temperature 0.1, top_p 0.001, top_k 1, repetition_penalty 1.05), so code that forgets to
  pass its own sampling settings behaves here as it would on the real model.

Building is deterministic in the seed, takes well under a second, is atomic (temp folder + rename) and
idempotent: a folder that already holds the same build (same seed and spec) is left alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vigos.errors import VigosError

FACTORY_VERSION = 1
MARKER_FILE = "vigos_tiny_build.json"
"""Written last: its presence means the build is complete; it holds the build's fingerprint and size."""

DEFAULT_SYSTEM_MESSAGE = "You are a helpful assistant."

# The chat template of Qwen/Qwen2.5-VL-7B-Instruct (chat_template.json), verbatim.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2.5's added tokens, in vocabulary order (ids 151643.. in the real tokenizer); (content, special).
QWEN2_5_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
SPECIAL_TOKENS = tuple(tok for tok, special in QWEN2_5_ADDED_TOKENS if special)


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny model. Defaults give about 0.26 M parameters."""

    vocab_size: int = 1024
    """Target size of the trained BPE vocabulary (before the 22 added tokens); the corpus may yield fewer."""
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    mrope_section: tuple[int, int, int] = (2, 3, 3)
    """Temporal/height/width rotary sections; must sum to head_dim/2 (head_dim = hidden/heads = 16)."""
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_depth: int = 2
    vision_num_heads: int = 2
    min_pixels: int | None = None
    """Image processor pixel budget; None: the `tiny` preset's `model.min_pixels` / `model.max_pixels`."""
    max_pixels: int | None = None


def build_tiny_model(
    output_dir: str | Path,
    seed: int = 0,
    spec: TinySpec | None = None,
    *,
    force: bool = False,
) -> Path:
    """Write a tiny random Qwen2.5-VL checkpoint + processor to `output_dir` and return its path.

    Skips the work when `output_dir` already holds a complete build with the same seed and spec (unless
    `force`). Refuses to overwrite a non-empty folder that is not a tiny build.
    """
    out = Path(output_dir).expanduser().absolute()
    spec = _resolve_spec(spec or TinySpec())
    fingerprint = _fingerprint(seed, spec)
    if not force and read_build_info(out).get("fingerprint") == fingerprint:
        return out
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER_FILE).exists())):
        raise VigosError(f"{out} exists and is not a tiny-model build; choose another --output or remove it first")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        started = time.perf_counter()
        info = _write_build(tmp, seed, spec)
        info.update(fingerprint=fingerprint, build_seconds=round(time.perf_counter() - started, 3))
        (tmp / MARKER_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        _swap_into_place(tmp, out, fingerprint)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_build_info(model_dir: str | Path) -> dict[str, Any]:
    """The marker of a complete tiny build (seed, spec, parameter count, ...), or {} if there is none."""
    marker = Path(model_dir) / MARKER_FILE
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return {}


def count_parameters(model_dir: str | Path) -> int:
    """Number of parameters stored in a checkpoint folder's safetensors files (no model is instantiated)."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise VigosError(f"{model_dir}: no *.safetensors files; is this a model folder?")
    total = 0
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():  # noqa: SIM118 (safe_open is not a dict)
                n = 1
                for d in st.get_slice(key).get_shape():
                    n *= d
                total += n
    return total


# --------------------------------------------------------------------------------------------------------------
# Internals


def _resolve_spec(spec: TinySpec) -> TinySpec:
    if spec.min_pixels is None or spec.max_pixels is None:
        from vigos.config import load_config

        model_cfg = load_config("tiny").model
        spec = dataclasses.replace(
            spec,
            min_pixels=spec.min_pixels if spec.min_pixels is not None else model_cfg.min_pixels,
            max_pixels=spec.max_pixels if spec.max_pixels is not None else model_cfg.max_pixels,
        )
    head_dim = spec.hidden_size // spec.num_attention_heads
    if spec.hidden_size % spec.num_attention_heads or sum(spec.mrope_section) * 2 != head_dim:
        raise VigosError(
            f"tiny spec: hidden_size {spec.hidden_size} / {spec.num_attention_heads} heads must give a head_dim equal"
            f" to 2 * sum(mrope_section) = {2 * sum(spec.mrope_section)}"
        )
    return spec


def _fingerprint(seed: int, spec: TinySpec) -> str:
    payload = json.dumps({"version": FACTORY_VERSION, "seed": seed, "spec": dataclasses.asdict(spec)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _swap_into_place(tmp: Path, out: Path, fingerprint: str) -> None:
    """Rename the finished build onto `out`; an older build (or an empty folder) there is moved aside first."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        try:
            out.rename(old)
        except FileNotFoundError:  # another process moved it meanwhile
            old = None
    try:
        tmp.rename(out)
    except OSError:
        # Another process finished the same build first: fine if it is ours.
        if read_build_info(out).get("fingerprint") != fingerprint:
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _write_build(out: Path, seed: int, spec: TinySpec) -> dict[str, Any]:
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = _build_tokenizer(spec.vocab_size)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok, _ in QWEN2_5_ADDED_TOKENS}
    # Like the real model, the embedding matrix is a little larger than the tokenizer (151665 -> 152064).
    vocab_size = _round_up(len(tokenizer), 64)

    head_dim = spec.hidden_size // spec.num_attention_heads
    config = qwen25vl_config(
        text={"vocab_size": vocab_size, "hidden_size": spec.hidden_size, "intermediate_size": spec.intermediate_size,
              "num_hidden_layers": spec.num_hidden_layers, "num_attention_heads": spec.num_attention_heads,
              "num_key_value_heads": spec.num_key_value_heads, "max_position_embeddings": 32768,
              "mrope_section": list(spec.mrope_section), "dtype": "float32"},
        vision={"depth": spec.vision_depth, "hidden_size": spec.vision_hidden_size,
                "intermediate_size": spec.vision_intermediate_size, "num_heads": spec.vision_num_heads,
                "fullatt_block_indexes": [spec.vision_depth - 1]},
        token_ids=ids,
    )
    assert head_dim // 2 == sum(config.text_config.rope_parameters["mrope_section"])

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    n_params = sum(p.numel() for p in model.parameters())

    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        do_sample=True,
        temperature=0.1,
        top_p=0.001,
        top_k=1,
        repetition_penalty=1.05,
    )
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar for a 1 MB file
    try:
        model.save_pretrained(out)
    finally:
        if bars:
            hf_logging.enable_progress_bar()

    pixels = {"min_pixels": spec.min_pixels, "max_pixels": spec.max_pixels}
    image_processor = Qwen2VLImageProcessor(patch_size=14, temporal_patch_size=2, merge_size=2, **pixels)
    video_processor = Qwen2VLVideoProcessor(patch_size=14, temporal_patch_size=2, merge_size=2, **pixels)
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    return {
        "factory_version": FACTORY_VERSION,
        "seed": seed,
        "spec": dataclasses.asdict(spec),
        "parameters": n_params,
        "tokenizer_size": len(tokenizer),
        "token_ids": {tok: ids[tok] for tok in SPECIAL_TOKENS},
    }


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _build_tokenizer(target_vocab_size: int):
    """Train a byte-level BPE with Qwen2's exact pipeline, then append Qwen2.5's added tokens in order."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    # Qwen2Tokenizer rebuilds its pipeline from vocab + merges when it loads tokenizer.json, so train with the
    # very same normalizer / pre-tokenizer / decoder or the merges would not apply the same way after a reload.
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=target_vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    model_json = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = dict(model_json["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model_json["merges"]]

    base = len(vocab)
    for i, (tok, _) in enumerate(QWEN2_5_ADDED_TOKENS):
        vocab[tok] = base + i

    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        errors="replace",
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    tokenizer.add_tokens([AddedToken(tok, special=special, normalized=False) for tok, special in QWEN2_5_ADDED_TOKENS])
    tokenizer.add_special_tokens({"extra_special_tokens": [t for t in SPECIAL_TOKENS if t not in ("<|endoftext|>",)]})
    for i, (tok, _) in enumerate(QWEN2_5_ADDED_TOKENS):
        got = tokenizer.convert_tokens_to_ids(tok)
        if got != base + i:
            raise AssertionError(f"tiny tokenizer: {tok} got id {got}, expected {base + i}")
    return tokenizer


_CORPUS_LINES = (
    "You are a helpful assistant.",
    "system\nuser\nassistant\n",
    "Picture 1: Picture 2: Video 1:",
    "<description> image description here </description><think> reasoning process here </think> \\boxed{FINAL ANSWER here}.",
    (
        "<description>The image shows a red square on a white background.</description>"
        "<think>The question asks for the color of the square. The square is red.</think> \\boxed{red}"
    ),
    (
        "<description>A bar chart with four bars labeled A, B, C and D. Bar B is the tallest, at 42.</description>"
        "<think>Comparing the heights, B is the largest value, so the answer is B.</think> \\boxed{B}"
    ),
    (
        "<description>A right triangle with legs 3 and 4.</description>"
        "<think>By the Pythagorean theorem the hypotenuse is sqrt(3^2 + 4^2) = 5.</think> \\boxed{5}"
    ),
    (
        "<description>Two cats sit on a sofa next to a blue lamp.</description>"
        "<think>Counting the cats in the description gives 2.</think> \\boxed{2}"
    ),
    (
        "<description>A circle of radius 2 is drawn inside a square of side 4.</description>"
        "<think>The area of the circle is pi * 2^2 = 4 pi, about 12.57.</think> \\boxed{12.57}"
    ),
    (
        "<description>A street sign reads STOP in white letters on a red octagon.</description>"
        "<think>The sign is a stop sign.</think> \\boxed{yes}"
    ),
    "Question: What color is the square? Options: A. red B. green C. blue D. yellow",
    "Question: How many objects are in the image? Answer with a number.",
    "Question: Is the dog to the left of the car? Answer yes or no.",
    "Choices: (A) 1 (B) 2 (C) 3 (D) 4 (E) 5",
    "What is the value of x in the figure? The angle is 30 degrees and the side is 10 cm.",
    "Which of the following statements is true? Select the correct option.",
    "The chart shows the sales of a company in 2019, 2020, 2021 and 2022.",
    "left right top bottom above below near far small large red green blue yellow black white",
    "one two three four five six seven eight nine ten hundred thousand percent",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 20 25 30 45 50 60 90 100 180 360",
    "+ - * / = < > ( ) [ ] { } , . : ; ? ! ' \" \\frac \\sqrt \\pi \\times \\cdot ^ _",
)


def _corpus() -> list[str]:
    from vigos.data.prompts import format_student_prompt

    questions = ("What is the answer to the visual question?", "How many cats are there?", "What color is the car?")
    texts = [format_student_prompt(q) for q in questions]
    return texts + list(_CORPUS_LINES) * 3 + ["\n".join(_CORPUS_LINES)]


# --- Qwen2.5-VL-7B shapes with random weights (GPU benchmarks: real compute, no download) -----------------------


def _qwen7b_shapes_config(token_ids: dict[str, int], vision_depth: int, shrink: bool) -> Any:
    if shrink:  # a CPU smoke test of this code path
        text = {
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "mrope_section": [4, 6, 6],
        }
        vision = {"hidden_size": 64, "intermediate_size": 128, "num_heads": 2}
    else:
        text = {
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "mrope_section": [16, 24, 24],
        }
        vision = {"hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16}
    fullatt = [i for i in (7, 15, 23, 31) if i < vision_depth] or [vision_depth - 1]
    return qwen25vl_config(
        text={**text, "vocab_size": 152064, "max_position_embeddings": 128000},
        vision={**vision, "depth": vision_depth, "fullatt_block_indexes": fullatt},
        token_ids=token_ids,
    )


def qwen25vl_config(text: dict[str, Any], vision: dict[str, Any], token_ids: dict[str, int]) -> Any:
    """A Qwen2.5-VL config of the given sizes, with the fixed parts of the architecture (patching, windows,
    RoPE) and special-token ids taken from the tokenizer: one builder for the tiny model and the 7B shapes."""
    from transformers import Qwen2_5_VLConfig

    text = dict(text)
    mrope = text.pop("mrope_section")
    ids = token_ids
    return Qwen2_5_VLConfig(
        text_config={
            **text,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope},
            "use_sliding_window": False,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            **vision,
            "out_hidden_size": text["hidden_size"],
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "tokens_per_second": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )


def random_qwen25vl_7b_shapes(device, dtype, *, vision_depth: int = 32, shrink: bool = False, seed: int = 0):
    """A randomly initialised Qwen2.5-VL with the 7B's shapes (28 layers, hidden 3584, vocab 152,064) on `device`,
    and the tiny model's offline processor set to the 7B's pixel budget (a 224x224 image = 64 tokens).
    `shrink=True` keeps the code path but tiny widths (a CPU smoke test). Needs only torch + transformers."""
    import tempfile

    import torch
    from transformers import AutoProcessor, GenerationConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.image_utils import SizeDict

    with tempfile.TemporaryDirectory(prefix="vigos-shapes-") as tmp:
        processor = AutoProcessor.from_pretrained(build_tiny_model(Path(tmp) / "tiny", seed=0))
    processor.image_processor.size = SizeDict(shortest_edge=3136, longest_edge=1003520)
    tok = processor.tokenizer
    names = ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    token_ids = {name: tok.convert_tokens_to_ids(name) for name in names}
    config = _qwen7b_shapes_config(token_ids, vision_depth, shrink=shrink)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.eval()
    eos = [token_ids["<|im_end|>"], token_ids["<|endoftext|>"]]
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=eos[-1], bos_token_id=eos[-1])
    return model, processor
