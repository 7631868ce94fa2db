"""Typed configuration: the one home of every default.

A config is a tree of dataclasses. The defaults ARE the `paper-7b` preset (the ViGOS-7B model card); other
presets are sparse overrides on top of it. Values can be overridden from a YAML file (nested mapping) and from
`section.key=value` strings (the CLI and the pipeline's `config_overrides` parameter). Unknown keys and values of
the wrong type are errors that name the key and list what is valid.

This module imports nothing heavy (no torch): the KFP components and the pipeline compiler import it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from vigos.errors import VigosError
from vigos.redact import has_password, redact


class ConfigError(VigosError, ValueError):
    """A bad key or value in a config file, preset or override."""


@dataclass
class DataConfig:
    """Data prep: where the training set comes from and how it is filtered."""

    source: str = "LMMs-Lab-Turtle/Vision-SR1-47K"
    """HF dataset id, or a local path: a `save_to_disk` folder, a parquet file or folder, or a JSONL file."""
    split: str = "train"
    max_samples: int | None = None
    """Keep at most this many rows after filtering (seeded shuffle first); None keeps all."""
    min_image_size: int = 3
    """Rows whose first image is smaller than this many pixels on either side are dropped."""
    max_image_pixels: int = 50_000_000
    """Rows whose first image has more pixels (width x height, read from its header, never decoded) are dropped as
    `huge_image`: a 60 KB PNG can decode to gigabytes. 50 M is about 7000 x 7000, four times what the processor's
    default `model.max_pixels` keeps; at most 178,956,970 (beyond it PIL itself refuses to open an image)."""
    seed: int = 42
    num_proc: int = 1
    """Worker processes for decoding/validating rows."""


@dataclass
class ModelConfig:
    """The base model and how it is loaded."""

    name_or_path: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    attn_implementation: str = "sdpa"
    min_pixels: int = 3136
    """Image processor pixel budget per image. The defaults are the stock Qwen2.5-VL processor's (56*56 ..
    14*14*4*16384 = 12,845,056 pixels, up to 16,384 visual tokens), which the released model was trained and
    evaluated with; lower `max_pixels` to bound memory on large images (the `tiny` preset does)."""
    max_pixels: int = 12845056
    decode_loop: Literal["hf", "vigos"] = "hf"
    """How the in-process engine (training rollouts, `eval.backend=engine`) decodes: `hf`, transformers `generate`
    with the seeded sampler as a logits processor; `vigos`, the engine's own loop (vigos/generation/decode.py:
    one decode step = forward + sampling on device tensors, a CUDA graph on a GPU, a host check every 16 steps).
    Both give the same tokens, finish reasons and log-probabilities for the same seeds (tested on CPU). `hf` stays
    the default until `vigos` is measured on a GPU (benchmarks/RESULTS.md, "Generation engine")."""


@dataclass
class PromptConfig:
    """Which texts the model is prompted with (vigos/data/prompts.py holds them all)."""

    student: Literal["release", "model-card"] = "release"
    """The student's text, in training rollouts and in evaluation (base and trained model alike): `release`, the
    text ViGOS-7B was trained and scored with, or `model-card`, the card's user-facing paraphrase. The teachers'
    texts are always the release's."""


@dataclass
class LoraConfig:
    r: int = 64
    alpha: int = 128
    dropout: float = 0.05
    target_modules: str = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    """A regex, not a list: the vision tower's MLPs share the names gate/up/down_proj."""


@dataclass
class TrainConfig:
    """ViGOS training (docs/training.md explains every number)."""

    method: Literal["vigos", "opsd"] = "vigos"
    num_train_epochs: float = 1.0
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: run the epochs)."""
    global_batch_size: int = 32
    """Prompts per optimizer step over all ranks (the model card's 32). The gradient accumulation is derived from
    it: global_batch_size / (per_device_train_batch_size x world size)."""
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int | None = None
    """None: derived from `global_batch_size` (7B on 8 GPUs: 32 / (1 x 8) = 4). When set, the three numbers must
    multiply to `global_batch_size` on the run's world size, or the run stops before loading anything."""
    learning_rate: float = 5e-6
    lr_scheduler_type: str = "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 0.1
    bf16: bool = True
    zero_stage: int = 2
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    """Recompute activations in the backward: true, false, or `auto`: on CUDA, per micro-step, on only when its
    student forward is longer than the most tokens that fit the card's memory with a margin, measured by two probes
    before training (`vigos.training.memory`); on CPU off (host memory is not the limit the recompute buys back).
    The threshold and its numbers are logged (`[vigos]` line, run params), the share of checkpointed micro-steps
    per step (`train/checkpointed_micro_step_fraction`)."""
    pack_sequences: bool = True
    """Pack each forward's rows (the student's, each teacher role's) into one sequence without padding; every row
    keeps its own mRoPE positions and attends only within itself (flash-attention varlen with
    `model.attn_implementation=flash_attention_2`, a block-diagonal causal mask with sdpa/eager). Same values as
    the padded forward (tests/training/test_packing.py)."""
    fused_kernels: Literal["auto", "liger", "none"] = "auto"
    """Fused Triton kernels for the language model: `liger` (liger-kernel's RMSNorm, SwiGLU and rotary; needs the
    `gpu` extra and CUDA), `none`, or `auto` (liger when installed and on CUDA, else none)."""
    seed: int = 42
    max_prompt_length: int = 32768
    max_completion_length: int = 4096
    rollout_temperature: float = 1.1
    rollout_top_p: float = 0.95
    rollout_top_k: int = 20
    lambda_perception: float = 1.0
    lambda_reasoning: float = 1.0
    lambda_reference: float = 2.0
    distill_temperature: float = 1.0
    kl_token_clip: float = 0.05
    description_last_token_clip: float | None = 0.05
    reasoning_first_token_clip: float | None = 0.05
    reasoning_teacher_sees_description: bool = False
    kl_chunk_size: int = 512
    """Tokens per chunk of the chunked KL (never materialise [tokens, vocab] logits for the whole sequence)."""
    logging_steps: int = 1
    save_steps: int = 50
    save_total_limit: int = 2
    """Checkpoints kept on disk (the newest ones); the one a run resumed from is kept until a newer one is saved
    by that run. About 2 GB each at 7B (adapter + optimizer)."""
    sample_log_steps: int = 10
    """Every this many steps a JSONL sample of rollouts goes to MLflow."""


    def accumulation_steps(self, world_size: int) -> int:
        """Gradient accumulation steps for `world_size` ranks, checked against `global_batch_size`."""
        per_device, world = self.per_device_train_batch_size, max(1, int(world_size))
        if per_device < 1 or self.global_batch_size < 1:
            raise ConfigError(f"train.per_device_train_batch_size ({per_device}) and train.global_batch_size "
                              f"({self.global_batch_size}) must be >= 1")
        if self.gradient_accumulation_steps is None:
            accumulation, rest = divmod(self.global_batch_size, per_device * world)
            if rest or accumulation < 1:
                raise ConfigError(
                    f"train.global_batch_size {self.global_batch_size} is not a multiple of per-device batch "
                    f"{per_device} x {world} rank(s) = {per_device * world}; change train.global_batch_size, "
                    "train.per_device_train_batch_size or the number of GPUs"
                )
            return accumulation
        accumulation = self.gradient_accumulation_steps
        if accumulation < 1 or per_device * accumulation * world != self.global_batch_size:
            raise ConfigError(
                f"per-device batch {per_device} x gradient accumulation {accumulation} x {world} rank(s) = "
                f"{per_device * accumulation * world}, not train.global_batch_size {self.global_batch_size}; "
                "leave train.gradient_accumulation_steps unset (null) to derive it, or change one of the numbers"
            )
        return accumulation


@dataclass
class EvalConfig:
    """Pass@k evaluation (docs/evaluation.md)."""

    benchmarks: list[str] = field(
        default_factory=lambda: [
            "mm-vet", "mmmu", "mmmu-pro", "mathverse", "mathvista", "mmsi", "realworldqa", "cv-bench",
            "vilp-f", "vilp-p",
        ]
    )
    n_samples: int = 5
    temperature: float = 1.0
    top_p: float = 0.9
    top_k: int = 20
    max_new_tokens: int = 4096
    seed: int = 42
    batch_size: int = 32
    """Sequences per generation call (questions x samples)."""
    max_examples: int | None = None
    """Evaluate at most this many examples per benchmark (None: all)."""
    max_images: int = 16
    """Images per question passed to the model, in order (docs/evaluation.md: up to 16)."""
    sources: list[str] = field(default_factory=list)
    """`benchmark=path` entries pointing a benchmark at a local copy in its Hub schema (default: the Hub)."""
    grader: Literal["auto", "rules", "judge", "rules+judge"] = "auto"
    """`auto`: each benchmark's own default grader (the LLM judge for open-ended MM-Vet when a judge is configured,
    else rules, marked "rules (approximate)"; rules elsewhere); `rules`: the rule grader alone; `judge`: the LLM
    judge decides; `rules+judge`: the judge only where the rules say incorrect (a backup)."""
    grade_processes: int = 1
    """Worker processes for rule grading (1: in-process). Grading is cheap beside generation; more help only
    with very large response sets (benchmarks/grading.py)."""
    judge_base_url: str = ""
    """OpenAI-compatible endpoint of the LLM judge (empty: no judge)."""
    judge_model: str = ""
    judge_api_key_env: str = "VIGOS_JUDGE_API_KEY"
    """Name of the environment variable holding the judge's API key (never the key itself)."""
    judge_max_retries: int = 5
    """Retries of one question's judge call (HTTP errors, time-outs, unreadable replies), with jittered exponential
    back-off, or the server's Retry-After."""
    judge_max_consecutive_failures: int = 10
    """Circuit breaker: after this many questions in a row whose judge call finally failed, the judge is taken for
    down and the remaining questions are not sent (the scores are marked incomplete and the command fails)."""
    judge_timeout_s: float = 120.0
    """Seconds one judge request may take before it counts as a failed attempt."""
    backend: Literal["engine", "openai", "vllm"] = "vllm"
    """Who generates the responses (docs/evaluation.md, "Backends"): `engine`, the project's batched engine in this
    process (under torchrun, one process per GPU; the tiny/CPU default); `openai`, any OpenAI-compatible server at
    `eval.base_url` (vLLM, SGLang, TGI, `transformers serve`); `vllm`, a `vllm serve` the evaluation starts on the
    model folder on 127.0.0.1, data-parallel over this machine's GPUs, used through the `openai` path and stopped
    on every exit."""
    base_url: str = ""
    """`openai` backend: the server's OpenAI API root, e.g. `http://host:8000/v1`."""
    server_model: str = ""
    """`openai` backend: the model name requests carry (empty: the model path as given to `vigos eval run`)."""
    api_key_env: str = "VIGOS_EVAL_API_KEY"
    """`openai` backend: name of the environment variable holding the server's API key (unset: no key is sent)."""
    prefill: Literal["auto", "continue_final_message", "chat_template"] = "auto"
    """How the server is made to continue the `<description>` prefill: `continue_final_message` (vLLM, SGLang:
    request fields `continue_final_message` / `add_generation_prompt` and `top_k` / `repetition_penalty`),
    `chat_template` (`transformers serve`: a request-side chat template that leaves the assistant turn open, and a
    `generation_config`), or `auto` (the first whose probe prompt has exactly the engine's prompt length)."""
    concurrency: int = 64
    """Server backends: requests in flight at once (each one sample); for `vllm`, per engine replica (8 GPUs: 512),
    since each replica batches its own requests continuously and idles when starved."""
    request_retries: int = 5
    """Server backends: retries of one request on HTTP 429/5xx, time-outs and lost connections, with jittered
    exponential back-off or the server's Retry-After; a request still failing is recorded as an error row."""
    request_timeout_s: float = 900.0
    """Server backends: seconds one request may take before it counts as a failed attempt."""
    vllm_data_parallel_size: int = 0
    """`vllm` backend: engine replicas (`--data-parallel-size`); 0: one per GPU this machine shows."""
    vllm_start_timeout_s: float = 1800.0
    """`vllm` backend: seconds `vllm serve` may take to answer /health (a 7B model loads and compiles first)."""
    vllm_args: list[str] = field(default_factory=list)
    """`vllm` backend: extra `vllm serve` arguments, e.g. `[--max-model-len, "32768"]`."""


@dataclass
class PublishConfig:
    """MLflow registry gate and Hugging Face Hub upload."""

    registered_model: str = "vigos-qwen2.5-vl-7b"
    gate_metric: str = "mean.pass_at_k"
    """Score (scores.json, flattened) that must beat the current champion's for the `champion` alias to move."""
    hub_repo_id: str = ""
    """Hub repository to upload the merged model to; empty: dry run (the exact folder is written, nothing sent)."""
    hub_private: bool = True
    hub_token_env: str = "HF_TOKEN"
    """Name of the environment variable holding the Hub token (a Kubernetes Secret in the cluster)."""
    license: str = "apache-2.0"


@dataclass
class TrackingConfig:
    experiment: str = "vigos"
    """MLflow experiment; the tracking URI comes from MLFLOW_TRACKING_URI (local default: SQLite under .vigos/)."""


@dataclass
class VigosConfig:
    preset: str = "paper-7b"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """`section.key -> value`, e.g. for MLflow params."""
        return dict(flatten_dict(self.to_dict()))


# Presets are sparse overrides on top of the defaults (which are the model card's values).
PRESETS: dict[str, dict[str, Any]] = {
    "paper-7b": {},
    "tiny": {
        # A randomly initialised Qwen2.5-VL (hidden 64, ~20 M parameters, nearly all in the real vocabulary's
        # embedding and lm_head) and a small synthetic dataset: the CPU demo and the end-to-end tests.
        # `model.name_or_path` is filled in by whoever builds the model (`.vigos/` is $VIGOS_HOME when that is set,
        # see `home_path`: where `vigos model tiny` writes by default); the demo warms it up first
        # (vigos/modeling/warmup.py) so that about half of its rollouts are well formed.
        "data": {"max_samples": 64, "num_proc": 1},
        "model": {"name_or_path": ".vigos/tiny-model", "dtype": "float32", "min_pixels": 784, "max_pixels": 3136},
        "lora": {"r": 8, "alpha": 16},
        "train": {
            "max_steps": 4,
            "global_batch_size": 2,
            "learning_rate": 1e-3,
            "bf16": False,
            "gradient_checkpointing": False,
            "max_prompt_length": 1024,
            # the warmed-up model's well-formed answers take 23-41 tokens (EOS included): they finish; a malformed
            # one stops here (every token of 152,064 logits per row is the cost of a generation step)
            "max_completion_length": 48,
            "kl_chunk_size": 16,
            "save_steps": 2,
            "sample_log_steps": 2,
        },
        # same completion budget as training; 32 rows per generate call: a benchmark's 30 samples in one call;
        # the CPU demo generates in-process (no server)
        "eval": {"n_samples": 5, "max_new_tokens": 48, "batch_size": 32, "max_examples": 8, "backend": "engine"},
        "publish": {"registered_model": "vigos-tiny-demo"},
        "tracking": {"experiment": "vigos-local"},
    },
}


# Allowed ranges, checked once on the final config (after every layer), so a value that is wrong on its own terms
# stops the run before anything starts. `>= 1` style bounds, or an interval: `(0, 1]`. None always passes (the
# fields that accept it mean "derive" or "all"). train.save_total_limit is checked by the trainer itself.
RANGES: dict[str, str] = {
    "data.max_samples": ">= 1",
    "data.min_image_size": ">= 0",
    "data.max_image_pixels": "[1, 178956970]",
    "data.num_proc": ">= 1",
    "model.min_pixels": ">= 1",
    "model.max_pixels": ">= 1",
    "lora.r": ">= 1",
    "lora.alpha": "> 0",
    "lora.dropout": "[0, 1)",
    "train.num_train_epochs": "> 0",
    "train.max_steps": ">= -1",
    "train.global_batch_size": ">= 1",
    "train.per_device_train_batch_size": ">= 1",
    "train.gradient_accumulation_steps": ">= 1",
    "train.learning_rate": "> 0",
    "train.warmup_steps": ">= 0",
    "train.weight_decay": ">= 0",
    "train.max_grad_norm": ">= 0",
    "train.zero_stage": "[0, 3]",
    "train.max_prompt_length": ">= 1",
    "train.max_completion_length": ">= 1",
    "train.rollout_temperature": ">= 0",
    "train.rollout_top_p": "(0, 1]",
    "train.rollout_top_k": ">= 0",
    "train.lambda_perception": ">= 0",
    "train.lambda_reasoning": ">= 0",
    "train.lambda_reference": ">= 0",
    "train.distill_temperature": "> 0",
    "train.kl_token_clip": "> 0",
    "train.description_last_token_clip": "> 0",
    "train.reasoning_first_token_clip": "> 0",
    "train.kl_chunk_size": ">= 1",
    "train.logging_steps": ">= 1",
    "train.save_steps": ">= 1",
    "train.sample_log_steps": ">= 0",
    "eval.n_samples": ">= 1",
    "eval.temperature": ">= 0",
    "eval.top_p": "(0, 1]",
    "eval.top_k": ">= 0",
    "eval.max_new_tokens": ">= 1",
    "eval.batch_size": ">= 1",
    "eval.max_examples": ">= 0",
    "eval.max_images": ">= 1",
    "eval.grade_processes": ">= 1",
    "eval.judge_max_retries": ">= 0",
    "eval.judge_max_consecutive_failures": ">= 1",
    "eval.judge_timeout_s": "> 0",
    "eval.concurrency": ">= 1",
    "eval.request_retries": ">= 0",
    "eval.request_timeout_s": "> 0",
    "eval.vllm_data_parallel_size": ">= 0",
    "eval.vllm_start_timeout_s": "> 0",
}
_NOTES = {  # what the boundary means, where it is not obvious
    "train.max_steps": " (-1: run the epochs)",
    "train.rollout_temperature": " (0: greedy)",
    "eval.temperature": " (0: greedy)",
    "train.rollout_top_k": " (0: off)",
    "eval.top_k": " (0: off)",
    "train.sample_log_steps": " (0: off)",
    "train.max_grad_norm": " (0: no clipping)",
    "eval.vllm_data_parallel_size": " (0: one per GPU)",
}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BOUND = re.compile(r"^(>=|>|<=|<)\s*(-?[\d.e+-]+)$")
_INTERVAL = re.compile(r"^([\[(])\s*(-?[\d.e+-]+)\s*,\s*(-?[\d.e+-]+)\s*([\])])$")


def _in_range(value: float, rule: str) -> bool:
    if m := _BOUND.match(rule):
        op, bound = m.group(1), float(m.group(2))
        return {">=": value >= bound, ">": value > bound, "<=": value <= bound, "<": value < bound}[op]
    m = _INTERVAL.match(rule)
    if not m:
        raise ValueError(f"bad range rule {rule!r}")
    lo, hi = float(m.group(2)), float(m.group(3))
    above = value >= lo if m.group(1) == "[" else value > lo
    below = value <= hi if m.group(4) == "]" else value < hi
    return above and below


def validate(cfg: VigosConfig, origins: typing.Mapping[str, str] | None = None) -> None:
    """Check every value against RANGES (and the few rules that tie two fields); ConfigError naming the key, the
    value, the allowed range and where the value came from."""
    flat = cfg.flat()
    origins = origins or {}
    for key, rule in RANGES.items():
        value = flat[key]
        if value is None or _in_range(value, rule):
            continue
        where = origins.get(key, f"preset {cfg.preset}")
        allowed = f"in {rule}" if rule[0] in "[(" else rule
        raise ConfigError(f"{where}: {key} is {value!r}; it must be {allowed}{_NOTES.get(key, '')}")
    for key, value in flat.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and has_password(item.split("=", 1)[-1]):  # eval.sources: `name=URL`
                where = origins.get(key, f"preset {cfg.preset}")  # an override's origin quotes the URL too
                raise ConfigError(redact(f"{where}: {key} is {item!r}, a URL with a password, which would be logged "
                                         "with the config; remove it (a key or token goes in the environment "
                                         "variable the config names, e.g. eval.judge_api_key_env)"))
        if key.endswith("_env") and not _ENV_NAME.match(str(value)):
            raise ConfigError(f"{origins.get(key, f'preset {cfg.preset}')}: {key} is not an environment variable "
                              "name (letters, digits, _); it names the variable that holds the secret, never the "
                              "secret itself")
    if cfg.model.min_pixels > cfg.model.max_pixels:
        where = origins.get("model.min_pixels") or origins.get("model.max_pixels") or f"preset {cfg.preset}"
        raise ConfigError(f"{where}: model.min_pixels ({cfg.model.min_pixels}) is larger than model.max_pixels "
                          f"({cfg.model.max_pixels}); lower min_pixels or raise max_pixels")


def home_path(path: str) -> str:
    """A `.vigos/...` path (the local state folder, as the tiny preset names its model) under `$VIGOS_HOME` when that
    is set; any other path unchanged."""
    home = os.environ.get("VIGOS_HOME")
    if not home or not (path == ".vigos" or path.startswith(".vigos/")):
        return path
    root = Path(home).expanduser().resolve()
    return str(root if path == ".vigos" else root / path[len(".vigos/"):])


def load_config(
    preset: str = "paper-7b",
    yaml_path: str | Path | None = None,
    overrides: typing.Iterable[str] = (),
    values: typing.Mapping[str, Any] | None = None,
) -> VigosConfig:
    """Defaults <- preset <- YAML file <- `key=value` strings <- `values` (dotted key -> typed value; later wins).

    `values` is how pipeline parameters reach the config: already typed, so no YAML re-parsing of strings.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}{_did_you_mean(preset, PRESETS)}; choose one of {sorted(PRESETS)}")
    cfg = VigosConfig(preset=preset)
    origins: dict[str, str] = {}  # dotted key -> the layer that set it last (named in range errors)
    _apply(cfg, PRESETS[preset], origin=f"preset {preset}", origins=origins)
    # `.vigos/...` in a preset is the local state folder: $VIGOS_HOME when set
    cfg.model.name_or_path = home_path(cfg.model.name_or_path)
    if yaml_path:
        data = read_yaml_config(yaml_path)
        data.pop("preset", None)
        _apply(cfg, data, origin=str(yaml_path), origins=origins)
    for item in overrides:
        key, value = parse_override(item)
        _apply(cfg, _nest(key, value), origin=f"override {item!r}", origins=origins)
    for key, value in (values or {}).items():
        _apply(cfg, _nest(key, value), origin=f"parameter {key}", origins=origins)
    validate(cfg, origins)
    return cfg


def read_yaml_config(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a mapping of sections; ConfigError (one line: the file and what is wrong) otherwise."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist; check the --config path")
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; point --config at a YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not text (UTF-8); point --config at a YAML file") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read ({e.strerror or e}); check its permissions") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{at}: {problem}; fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections (e.g. `train: {{max_steps: 10}}`), "
                          f"got a {type(data).__name__}")
    return data

def parse_override(item: str) -> tuple[str, Any]:
    """`train.learning_rate=1e-4` -> ("train.learning_rate", 1e-4); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form section.key=value (e.g. train.max_steps=10)")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def dump_config(cfg: VigosConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def config_from_json(text: str) -> VigosConfig:
    """Rebuild a config serialised with `json.dumps(cfg.to_dict())` (how pipeline steps pass it on)."""
    data = json.loads(text)
    cfg = VigosConfig(preset=data.pop("preset", "paper-7b"))
    origins: dict[str, str] = {}
    _apply(cfg, data, origin="json", origins=origins)
    validate(cfg, origins)
    return cfg


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def flatten_dict(d: dict[str, Any], prefix: str = "") -> typing.Iterator[tuple[str, Any]]:
    """Nested mapping -> (`a.b.c`, value) pairs."""
    for k, v in d.items():
        if isinstance(v, dict):
            yield from flatten_dict(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _apply(obj: Any, data: dict[str, Any], origin: str, path: str = "",
           origins: dict[str, str] | None = None) -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj) if not (path == "" and f.name == "preset")]
    for key, value in data.items():
        where = f"{path}{key}"
        if where == "preset":
            raise ConfigError(f"{origin}: the preset is chosen on its own (--preset / the `preset` parameter)")
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            if close:
                raise ConfigError(f"{origin}: unknown key {where!r}; did you mean {path + close[0]!r}?")
            raise ConfigError(f"{origin}: unknown key {where!r}; valid keys here: {', '.join(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: {where!r} is a section; give a mapping or use {where}.KEY=VALUE")
            _apply(current, value, origin, f"{where}.", origins)
        else:
            setattr(obj, key, _coerce(value, hints[key], where, origin))
            if origins is not None:
                origins[where] = origin

def _coerce(value: Any, tp: Any, where: str, origin: str) -> Any:
    """Check (and gently convert) a value against a field's type annotation."""
    origin_tp = get_origin(tp)
    if origin_tp in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, origin)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:
            raise errors[0]
        # e.g. `bool | Literal["auto"]`: "expects true/false or must be one of ['auto'], got 'maybe'"
        wants = [e.split(f"{where!r} ", 1)[-1].rsplit(", got ", 1)[0] for e in errors]
        raise ConfigError(f"{origin}: {where!r} {' or '.join(wants)}, got {value!r}")
    if origin_tp is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{origin}: {where!r} must be one of {list(choices)}, got {value!r}")
        return value
    if origin_tp is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{origin}: {where!r} expects a list, got {value!r}")
        (item_tp,) = get_args(tp) or (Any,)
        return [_coerce(v, item_tp, where, origin) for v in value]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{origin}: {where!r} expects true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{origin}: {where!r} expects an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "5e-6" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{origin}: {where!r} expects a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{origin}: {where!r} expects a string, got {value!r}")
    raise ConfigError(f"{origin}: {where!r} has unsupported type {tp}")
