"""`HFEngine`: batched, per-row-seeded sampling on transformers `generate`, for training rollouts and evaluation.

Design (benchmarks/RESULTS.md measures why generation must be batched and use a static cache):

- **Many requests per call.** Requests are cut into chunks of `batch_size` sequences; each chunk is one processor
  call (left padding) and one `model.generate` call. Results come back in request order.
- **Sampling lives in a LogitsProcessor, `generate` runs greedy.** `SeededSamplingProcessor` applies temperature,
  top-k and top-p, draws each row's token with that row's own randomness (`vigos.generation.sampling`: a
  counter-based hash of (seed, step, token id) + Gumbel-max, an exact sample from the filtered distribution) and
  masks every other token, so greedy `generate` picks the drawn token. `generate` thus keeps its static-cache /
  compiled-decode path, and no HF sampling code (nor the global torch RNG) is involved: row i's tokens depend only on
  its prompt, images, seed and the model, not on the other rows of its batch. (Bitwise-equal tokens also need
  bitwise-equal logits: different batch shapes may change float rounding, which can flip a draw at a near-tie;
  float32 on CPU reproduces exactly in the tests.)
- **An explicit GenerationConfig.** Checkpoints ship sampling defaults (Qwen2.5-VL-7B-Instruct: do_sample, T 0.1,
  top-p 0.001, top-k 1, repetition_penalty 1.05) that `generate` would merge into any field left unset. We set
  do_sample=False, num_beams=1, repetition_penalty=1.0 and the neutral temperature/top-k/top-p values explicitly,
  so the only logits transform is ours. EOS ids come from the model's generation_config (`<|im_end|>`,
  `<|endoftext|>`); finished rows are padded with the pad id, which is cut off (completions end at their first EOS).
- **No recompiles on the GPU path** (`cache_implementation="static"`, chosen by default on CUDA; transformers then
  compiles the decode step itself). The compiled decode step sees tensors shaped by (batch, cache length) only, so:
  the batch is always `batch_size` rows (a short last chunk is filled with copies of its last request, whose
  results are dropped); the static cache length is fixed by passing `max_new_tokens = cache_len - prompt_width`,
  with `cache_len` a multiple of `cache_bucket` that only ever grows (or `max_cache_len` up front), while the real
  `max_new_tokens` is enforced by a stopping criterion; and the prompt width is rounded up to a multiple of
  `prompt_bucket` with at least one pad column, so the 2-D attention mask is never dropped as all-ones (which would
  change the traced inputs). Only public `generate` arguments are used (transformers 5.17 .. 5.24). The prefill is
  not compiled, so its varying width costs nothing extra. CPU tests use the dynamic cache (no padding games).
- **Two decode paths behind the same chunking** (`decode`): "hf" runs `generate` as above; "vigos" runs the
  engine's own loop (`vigos.generation.decode.DecodeLoop`) on the same padded inputs, seeds, cache length and
  sampler, without `generate`'s per-step Python and host syncs (a CUDA graph per decode step on CUDA). Both give
  the same rows; pre- and post-processing (padding, EOS cut, finish reasons, texts, prompt inputs) are shared.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from vigos.generation.decode import DecodeLoop
from vigos.generation.sampling import draw, seeds_tensor
from vigos.generation.types import GenerationRequest, GenerationResult, SamplingParams

STATIC_CACHE = "static"
DECODE_LOOPS = ("hf", "vigos")
VISION_PLACEHOLDERS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")
_NON_SEQUENCE_KEYS = frozenset(
    {"pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"}
)


class SeededSamplingProcessor(LogitsProcessor):
    """Samples each row's next token with its own seed and leaves only that token finite (for greedy `generate`).

    The decode step index is `input_ids.shape[1] - prompt_width` (0 for the first completion token), the same for
    every row of a left-padded batch.
    """

    def __init__(
        self, seeds: torch.Tensor, prompt_width: int, params: SamplingParams, suppress: torch.Tensor | None = None,
        record_logprobs: bool = False,
    ) -> None:
        self.seeds = seeds
        self.prompt_width = prompt_width
        self.params = params
        self.suppress = suppress
        self.logprobs: list[torch.Tensor] | None = [] if record_logprobs else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        p = self.params
        tokens, logprob = draw(scores, self.seeds, input_ids.shape[1] - self.prompt_width, p.temperature, p.top_k,
                               p.top_p, self.suppress, self.logprobs is not None)
        if self.logprobs is not None:
            self.logprobs.append(logprob)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, tokens[:, None], 0.0)


class StopAtLength(StoppingCriteria):
    """Stops every row once the sequence (prompt width + completion) reaches `max_length` tokens."""

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        done = input_ids.shape[1] >= self.max_length
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class HFEngine:
    """The `Engine` on transformers `generate` (see the module docstring for the design).

    Args:
        model: a Qwen2.5-VL (any `generate`-capable) model; switched to eval mode during a call, then restored.
        processor: its processor (tokenizer + image processor); padding side does not matter.
        batch_size: sequences per `generate` call.
        cache_implementation: "static" (GPU: static KV cache + compiled decode), None (dynamic cache), or "auto"
            (static on CUDA, dynamic elsewhere).
        prompt_bucket: with the static cache, prompt widths are padded up to a multiple of this.
        cache_bucket: with the static cache, the cache length is a multiple of this (and never shrinks).
        max_cache_len: with the static cache, the cache length to start from (e.g. max prompt + max new tokens), so
            that no later call has to grow it.
        eos_token_ids: token ids that end a completion (default: the model's generation_config eos ids).
        suppress_tokens: tokens never sampled (default: the vision placeholders `<|image_pad|>`, `<|video_pad|>`,
            `<|vision_start|>`, `<|vision_end|>`, `<|vision_pad|>`): a completion holding one could not be fed back
            with its images (the trainer's forwards would see more placeholders than image features), and an answer
            never needs them.
        progress: show a tqdm bar over chunks.
        decode: "hf" (transformers `generate`, the module docstring's design) or "vigos" (our own prefill + decode
            loop, `vigos.generation.decode`: same results, no per-step Python or host sync; on CUDA with the static
            cache the decode step runs as a CUDA graph).
        check_every: "vigos" decode: decode steps between two host checks of "all rows finished".
        compile_decode: "vigos" decode: compile the decode step with CUDA graphs (True), with these `torch.compile`
            options (a dict; `{"backend": "eager"}` checks the tracing on CPU), or not (False); None (auto): CUDA
            graphs on CUDA with the static cache.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        batch_size: int = 32,
        cache_implementation: str | None = "auto",
        prompt_bucket: int = 64,
        cache_bucket: int = 256,
        max_cache_len: int | None = None,
        eos_token_ids: Sequence[int] | None = None,
        suppress_tokens: Sequence[str] | None = VISION_PLACEHOLDERS,
        progress: bool = False,
        decode: str = "hf",
        check_every: int = 16,
        compile_decode: bool | dict[str, Any] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if decode not in DECODE_LOOPS:
            raise ValueError(f"decode must be one of {DECODE_LOOPS}, got {decode!r}")
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.batch_size = batch_size
        if cache_implementation == "auto":
            cache_implementation = STATIC_CACHE if _device(model).type == "cuda" else None
        self.cache_implementation = cache_implementation
        self.prompt_bucket = max(1, prompt_bucket)
        self.cache_bucket = max(1, cache_bucket)
        self._cache_len = max_cache_len or 0
        self.progress = progress
        self.decode = decode
        self.check_every = check_every
        self.compile_decode = compile_decode
        self._decode_loop: DecodeLoop | None = None
        gen_cfg = getattr(model, "generation_config", None)
        self.eos_token_ids = tuple(eos_token_ids) if eos_token_ids else _eos_ids(gen_cfg, self.tokenizer)
        pad = getattr(gen_cfg, "pad_token_id", None)
        if pad is None:
            pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else self.eos_token_ids[0])
        self.last_stats: dict[str, Any] = {}
        vocab = self.tokenizer.get_vocab()
        self.suppress_token_ids = tuple(vocab[t] for t in (suppress_tokens or ()) if t in vocab)

    @property
    def static(self) -> bool:
        return self.cache_implementation == STATIC_CACHE

    @property
    def cache_len(self) -> int:
        """The static cache length used so far (0 before the first static call)."""
        return self._cache_len

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        params: SamplingParams,
        *,
        keep_inputs: bool = False,
        logprobs: bool = False,
        progress: bool | None = None,
    ) -> list[GenerationResult]:
        """Sample one completion per request (in request order). `keep_inputs`: attach each row's processor inputs;
        `logprobs`: attach the model's log-probability of every completion token (temperature 1, unfiltered)."""
        requests = list(requests)
        stats = {
            "requests": len(requests),
            "chunks": 0,
            "dummy_rows": 0,
            "generated_tokens": 0,
            "prompt_widths": [],
            "cache_len": None,
            "seconds": 0.0,
        }
        self.last_stats = stats
        if not requests:
            return []
        chunks = [requests[i : i + self.batch_size] for i in range(0, len(requests), self.batch_size)]
        show = self.progress if progress is None else progress
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(requests), desc="generate", unit="seq")
        started = time.perf_counter()
        results: list[GenerationResult] = []
        was_training = bool(getattr(self.model, "training", False))
        self.model.eval()
        try:
            with torch.no_grad():
                for chunk in chunks:
                    results.extend(self._generate_chunk(chunk, params, keep_inputs, logprobs, stats))
                    if bar is not None:
                        bar.update(len(chunk))
        finally:
            if was_training:
                self.model.train()
            if bar is not None:
                bar.close()
        stats["seconds"] = time.perf_counter() - started
        stats["generated_tokens"] = sum(r.num_tokens for r in results)
        return results

    # ----------------------------------------------------------------------------------------------------------

    def _generate_chunk(
        self, chunk: list[GenerationRequest], params: SamplingParams, keep_inputs: bool, logprobs: bool,
        stats: dict[str, Any],
    ) -> list[GenerationResult]:
        n_real = len(chunk)
        rows = list(chunk)
        if self.static and n_real < self.batch_size:
            rows += [chunk[-1]] * (self.batch_size - n_real)  # fixed batch shape: no recompile for the last chunk
        images = [img for r in rows for img in r.images]
        batch = self.processor(text=[r.prompt for r in rows], images=images or None, padding=True, return_tensors="pt")
        batch = {k: v for k, v in batch.items() if v is not None}
        mask = batch["attention_mask"].bool()
        lengths = mask.sum(dim=1).tolist()
        width = max(lengths)
        if self.static:
            width = _round_up(width + 1, self.prompt_bucket)
        inputs = _left_pad(batch, mask, width, self.pad_token_id)

        n_new = params.max_new_tokens
        if self.static:
            self._cache_len = max(self._cache_len, _round_up(width + n_new, self.cache_bucket))
            stats["cache_len"] = self._cache_len
        stats["chunks"] += 1
        stats["dummy_rows"] += len(rows) - n_real
        stats["prompt_widths"].append(width)

        device = _device(self.model)
        model_inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        seeds = seeds_tensor([r.seed for r in rows], device)
        if self.decode == "vigos":
            tokens, table = self._loop().run(model_inputs, seeds, width, n_new, params,
                                             self._cache_len if self.static else None, logprobs)
        else:
            tokens, table = self._decode_hf(model_inputs, seeds, width, n_new, params, logprobs)
        completions = tokens[:n_real].tolist()

        eos = set(self.eos_token_ids)
        token_lists: list[list[int]] = []
        reasons: list[str] = []
        for ids in completions:
            cut = next((j for j, t in enumerate(ids) if t in eos), None)
            if cut is None:
                token_lists.append(ids)
                reasons.append("length")
            else:
                token_lists.append(ids[: cut + 1])
                reasons.append("stop")
        texts = self.tokenizer.batch_decode(
            [ids[:-1] if r == "stop" else ids for ids, r in zip(token_lists, reasons, strict=True)],
            skip_special_tokens=False,
        )
        row_inputs = _row_inputs(batch, mask, chunk, device) if keep_inputs else [None] * n_real
        row_logprobs: list[list[float] | None] = [None] * n_real
        if table is not None:
            rows_lp = table[:n_real].tolist()  # [rows, decode steps]
            row_logprobs = [rows_lp[i][: len(token_lists[i])] for i in range(n_real)]
        return [
            GenerationResult(
                token_ids=token_lists[i],
                text=texts[i],
                finish_reason=reasons[i],  # type: ignore[arg-type]
                seed=chunk[i].seed,
                prompt_tokens=int(lengths[i]),
                prompt_inputs=row_inputs[i],
                logprobs=row_logprobs[i],
            )
            for i in range(n_real)
        ]

    def _decode_hf(
        self, inputs: dict[str, Any], seeds: torch.Tensor, width: int, n_new: int, params: SamplingParams,
        logprobs: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`generate` with our sampler as its logits processor -> (completion tokens [B, <= n_new], their
        log-probabilities or None), on the host."""
        device = inputs["input_ids"].device
        suppress = torch.tensor(self.suppress_token_ids, dtype=torch.long, device=device)
        sampler = SeededSamplingProcessor(seeds, width, params, suppress, record_logprobs=logprobs)
        gen_kwargs: dict[str, Any] = {"logits_processor": LogitsProcessorList([sampler])}
        if self.static:  # the cache length is fixed by max_new_tokens; the real budget is a stopping criterion
            gen_kwargs["generation_config"] = self._generation_config(self._cache_len - width)
            gen_kwargs["stopping_criteria"] = StoppingCriteriaList([StopAtLength(width + n_new)])
        else:
            gen_kwargs["generation_config"] = self._generation_config(n_new)
        out = self.model.generate(**inputs, **gen_kwargs)
        sequences = getattr(out, "sequences", out)
        table = torch.stack(sampler.logprobs, dim=1).cpu() if logprobs and sampler.logprobs else None
        return sequences[:, width : width + n_new].cpu(), table

    def _loop(self) -> DecodeLoop:
        if self._decode_loop is None:
            compile_step = self.compile_decode
            if compile_step is None:  # auto: CUDA graphs where they exist and the shapes are fixed
                compile_step = self.static and _device(self.model).type == "cuda"
            self._decode_loop = DecodeLoop(self.model, self.eos_token_ids, self.pad_token_id,
                                           self.suppress_token_ids, check_every=self.check_every,
                                           compile=compile_step)
        return self._decode_loop

    def _generation_config(self, max_new_tokens: int) -> GenerationConfig:
        # Every field a checkpoint's generation_config.json could fill in is set: only our sampler transforms logits.
        return GenerationConfig(
            do_sample=False,
            num_beams=1,
            num_return_sequences=1,
            temperature=1.0,
            top_p=1.0,
            top_k=50,
            repetition_penalty=1.0,
            eos_token_id=list(self.eos_token_ids),
            pad_token_id=self.pad_token_id,
            max_new_tokens=max_new_tokens,
            use_cache=True,
            cache_implementation=self.cache_implementation,
        )


# --------------------------------------------------------------------------------------------------------------
# Helpers


def _device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def _eos_ids(gen_cfg: Any, tokenizer: Any) -> tuple[int, ...]:
    eos = getattr(gen_cfg, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("no EOS token id: set model.generation_config.eos_token_id or pass eos_token_ids")
    return tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _is_sequence_tensor(key: str, value: Any, mask: torch.Tensor) -> bool:
    """A per-token [B, L] tensor of the batch (input_ids, attention_mask, mm_token_type_ids, ...)."""
    return (
        key not in _NON_SEQUENCE_KEYS
        and torch.is_tensor(value)
        and value.dim() == 2
        and tuple(value.shape) == tuple(mask.shape)
    )


def _left_pad(batch: dict[str, Any], mask: torch.Tensor, width: int, pad_id: int) -> dict[str, Any]:
    """Re-pad every [B, L] tensor of a processor batch to [B, width], real tokens right-aligned (left padding).

    Works whatever side the processor padded on: each row's real positions are those where the mask is 1.
    """
    out = dict(batch)
    n_rows = mask.shape[0]
    for key, value in batch.items():
        if not _is_sequence_tensor(key, value, mask):
            continue
        fill = pad_id if key == "input_ids" else 0
        padded = torch.full((n_rows, width), fill, dtype=value.dtype)
        for i in range(n_rows):
            row = value[i][mask[i]]
            padded[i, width - row.shape[0] :] = row
        out[key] = padded
    return out


def _row_inputs(
    batch: dict[str, Any], mask: torch.Tensor, chunk: list[GenerationRequest], device: torch.device
) -> list[dict[str, Any]]:
    """Each real row's processor outputs, unpadded, with a batch dimension of 1, on `device`."""
    grid = batch.get("image_grid_thw")
    patches = grid.prod(dim=-1).tolist() if grid is not None else []
    offsets = [0]
    for n in patches:
        offsets.append(offsets[-1] + n)
    rows: list[dict[str, Any]] = []
    image_index = 0
    for i, request in enumerate(chunk):
        row: dict[str, Any] = {}
        for key, value in batch.items():
            if _is_sequence_tensor(key, value, mask):
                row[key] = value[i][mask[i]][None].to(device)
        n_images = len(request.images)
        if n_images and grid is not None:
            first, last = image_index, image_index + n_images
            row["pixel_values"] = batch["pixel_values"][offsets[first] : offsets[last]].to(device)
            row["image_grid_thw"] = grid[first:last].to(device)
        image_index += n_images
        rows.append(row)
    return rows
