"""`DecodeLoop`: the engine's own prefill + decode loop (`HFEngine(decode="vigos")`, config `model.decode_loop`).

Why not `generate`: at batch 4-16 a 7B decode step is bound by reading the weights (3.2 ms on an H200), and
`generate`'s per-step Python (input preparation, Qwen2.5-VL's position bookkeeping, our sampler's eager kernels,
stopping criteria, a host sync on "all finished") costs more than that. Here one decode step is one function of
device tensors only - model forward on the last tokens, our seeded sampling (`vigos.generation.sampling`), the
token written into an on-device buffer, the finished mask updated, the step counter advanced - so on CUDA it is
compiled once per (batch, cache length) with CUDA graphs (`torch.compile(mode="reduce-overhead")`) and replayed:

- **Prefill**: one forward of the whole left-padded chunk with the processor's inputs (pixel values, grids,
  `mm_token_type_ids`) and explicit mRoPE positions from the model's own `get_rope_index` (text-only rows: the
  attention-mask positions), into a `StaticCache` (reused and reset per (batch, cache length)) or a `DynamicCache`.
- **Decode positions**: Qwen2.5-VL continues every row at its prompt's largest position + 1 on all three mRoPE axes
  (text length + the row's rope delta): one base position per row, computed once; step n feeds position base + n - 1.
- **The step index is a 0-d device tensor**, the hash sampler reads it (no recompile, no re-capture per step); the
  attention mask is a fixed [batch, cache length] buffer (the causal mask hides the not yet written columns).
- **The host looks only every `check_every` steps** whether all rows finished (one sync), then trims.

Results equal the `generate` path's (same tokens, EOS rule, finish reasons, log-probabilities): the prefill and
every decode forward see the same token ids, positions and attended keys, and the sampler is the same function
(tests/generation/test_engine.py compares both paths on CPU in float32). Finished rows keep running (their tokens
become the pad id and are cut off after the EOS), as in `generate`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from vigos.generation.sampling import draw
from vigos.generation.types import SamplingParams

ROPE_KEYS = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts", "mm_token_type_ids")


@dataclass
class _Buffers:
    """Device tensors of one (batch, cache length) bucket; the decode step reads and writes them in place, so their
    addresses stay fixed (what a captured CUDA graph needs)."""

    tokens: torch.Tensor  # [B, L] int64: completion tokens, column n = step n
    logprobs: torch.Tensor  # [B, L] float32: the model's log-probability of each drawn token
    finished: torch.Tensor  # [B] bool: the row drew an EOS
    step: torch.Tensor  # 0-d int64: the completion index of the next token to draw
    base: torch.Tensor  # [B] int64: mRoPE position of completion token 0
    seeds: torch.Tensor  # [B] int64
    mask: torch.Tensor  # [B, L] int64: attention mask over prompt + completion columns
    cache: Any  # a StaticCache (one per bucket) or None (a fresh DynamicCache per call)


MIN_TRANSFORMERS = (5, 24)
"""The cache API this loop is written against (a StaticCache that tracks its own length, the `cache` keyword)."""


def _check_transformers(version: str | None = None) -> None:
    """A clear error where the installed transformers predates `MIN_TRANSFORMERS` (e.g. the vLLM evaluation image,
    which pins vLLM's own), rather than a wrong position or a TypeError deep in a forward."""
    import re

    if version is None:
        import transformers

        version = transformers.__version__
    found = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
    if found < MIN_TRANSFORMERS:
        from vigos.errors import VigosError

        need = ".".join(map(str, MIN_TRANSFORMERS))
        raise VigosError(f"model.decode_loop=vigos needs transformers>={need} (this environment has {version}); "
                         "set model.decode_loop=hf")


class DecodeLoop:
    """Prefill + decode for one chunk of rows at a time (see the module docstring).

    Args:
        model: a Qwen2.5-VL (plain or PEFT-wrapped) in eval mode; calls run under `torch.no_grad()`.
        eos_token_ids / pad_token_id / suppress_token_ids: as in `HFEngine`.
        check_every: decode steps between two host checks of "all rows finished".
        compile: True: compile the decode step with CUDA graphs (`torch.compile(mode="reduce-overhead")`; needs
            CUDA); a dict: `torch.compile` options (`{"backend": "eager"}` checks the tracing and the absence of
            recompiles on CPU); False: eager. Compiling needs the static cache (fixed shapes).
    """

    def __init__(
        self, model: Any, eos_token_ids: tuple[int, ...], pad_token_id: int, suppress_token_ids: tuple[int, ...],
        *, check_every: int = 16, compile: bool | dict[str, Any] = False,
    ) -> None:
        if check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {check_every}")
        _check_transformers()
        self.model = model
        self.eos_token_ids = eos_token_ids
        self.pad_token_id = pad_token_id
        self.suppress_token_ids = suppress_token_ids
        self.check_every = check_every
        self.compile = compile
        self._buffers: dict[tuple[int, int], _Buffers] = {}
        self._rope_index = _find_rope_index(model)
        self._cache_kw = _cache_keyword(model)
        self._step_fn = None
        self._constants: dict[tuple, _Constants] = {}
        self.last_steps = 0  # decode forwards of the last call (after the prefill)

    def run(
        self, inputs: dict[str, Any], seeds: torch.Tensor, width: int, max_new_tokens: int, params: SamplingParams,
        cache_len: int | None, logprobs: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sample up to `max_new_tokens` tokens for the left-padded batch `inputs` ([B, width] sequence tensors on
        the model's device). `cache_len`: the static cache length (None: dynamic cache, sized to the call).
        Returns the completion tokens [B, steps] and their log-probabilities (or None), on the host; a row's
        completion ends at its first EOS (later columns are padding)."""
        mask = inputs["attention_mask"]
        batch, device = mask.shape[0], mask.device
        static = cache_len is not None
        if self.compile and not static:
            raise ValueError("a compiled decode step needs the static cache: use cache_implementation='static'")
        length = cache_len if static else width + max_new_tokens
        if length < width + max_new_tokens:
            raise ValueError(f"cache length {length} < prompt width {width} + {max_new_tokens} new tokens")
        buf = self._buffers_for(batch, length, device, static)
        positions, deltas = self._positions(inputs)
        buf.tokens.fill_(self.pad_token_id)
        buf.logprobs.zero_()
        buf.finished.zero_()
        buf.step.zero_()
        buf.base.copy_(mask.sum(dim=1) + deltas.view(-1))
        buf.seeds.copy_(seeds)
        buf.mask.fill_(1)  # completion columns (the causal mask hides those not yet written)
        buf.mask[:, :width].copy_(mask)
        cache = buf.cache if static else _dynamic_cache(self.model)
        if static:
            cache.reset()

        # prefill: the whole prompt, logits of the last position only (as `generate`), then draw token 0
        out = self.model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1, **{self._cache_kw: cache})
        constants = self._constants_for(params, logprobs, device)
        _draw(out.logits[:, -1], buf, constants)
        del out
        step_fn = self._compiled_step() if self.compile else _decode_step
        cache_arg = {self._cache_kw: cache}
        steps = 1
        while steps < max_new_tokens:
            if steps % self.check_every == 0 and bool(buf.finished.all()):  # the only host sync of the loop
                break
            step_mask = buf.mask if static else buf.mask[:, : width + steps]
            if self.compile:
                torch.compiler.cudagraph_mark_step_begin()  # the previous replay's outputs are not read again
            step_fn(self.model, cache_arg, buf, step_mask, constants)
            steps += 1
        self.last_steps = steps - 1
        tokens = buf.tokens[:, :steps].cpu()
        return tokens, buf.logprobs[:, :steps].cpu() if logprobs else None

    # ------------------------------------------------------------------------------------------------------

    def _buffers_for(self, batch: int, length: int, device: torch.device, static: bool) -> _Buffers:
        key = (batch, length)
        buf = self._buffers.get(key) if static else None
        if buf is None:
            if static:
                self._buffers.clear()  # the engine's cache length only grows: keep one bucket's KV cache alive
            buf = _Buffers(
                tokens=torch.empty(batch, length, dtype=torch.long, device=device),
                logprobs=torch.empty(batch, length, dtype=torch.float32, device=device),
                finished=torch.empty(batch, dtype=torch.bool, device=device),
                step=torch.zeros((), dtype=torch.long, device=device),
                base=torch.empty(batch, dtype=torch.long, device=device),
                seeds=torch.empty(batch, dtype=torch.long, device=device),
                mask=torch.empty(batch, length, dtype=torch.long, device=device),
                cache=_static_cache(self.model, length) if static else None,
            )
            if static:
                self._buffers[key] = buf
                if self.compile:  # fixed addresses: in-place updates do not make cudagraphs skip or re-record
                    for t in (buf.tokens, buf.logprobs, buf.finished, buf.step, buf.base, buf.seeds, buf.mask):
                        torch._dynamo.mark_static_address(t)
        return buf

    def _positions(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """mRoPE positions [3, B, W] of the prompt and each row's rope delta [B, 1], as `generate` computes them."""
        mask = inputs["attention_mask"]
        has_vision = inputs.get("image_grid_thw") is not None or inputs.get("video_grid_thw") is not None
        if has_vision and self._rope_index is not None:
            fn, accepted = self._rope_index
            kwargs = {k: inputs[k] for k in ROPE_KEYS if k in inputs and (accepted is None or k in accepted)}
            return fn(inputs["input_ids"], attention_mask=mask, **kwargs)
        text = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        return text[None].expand(3, -1, -1), torch.zeros(mask.shape[0], 1, dtype=torch.long, device=mask.device)

    def _constants_for(self, params: SamplingParams, logprobs: bool, device: torch.device) -> _Constants:
        # one object per setting: a compiled step guards on it, a new one per call could recompile
        key = (float(params.temperature), int(params.top_k), float(params.top_p), bool(logprobs), str(device))
        if key not in self._constants:
            self._constants[key] = _Constants(
                key[0], key[1], key[2], torch.tensor(self.eos_token_ids, dtype=torch.long, device=device),
                torch.tensor(self.suppress_token_ids, dtype=torch.long, device=device), self.pad_token_id, key[3])
            if self.compile:
                torch._dynamo.mark_static_address(self._constants[key].eos)
                torch._dynamo.mark_static_address(self._constants[key].suppress)
        return self._constants[key]

    def _compiled_step(self):
        if self._step_fn is None:
            options = self.compile if isinstance(self.compile, dict) else {"mode": "reduce-overhead"}
            if options.get("mode") == "reduce-overhead" and not torch.cuda.is_available():
                raise RuntimeError("the CUDA-graph decode step needs a CUDA device: use HFEngine(compile_decode=False)"
                                   " or model.decode_loop=hf on this machine")
            self._step_fn = torch.compile(_decode_step, **{"fullgraph": False, "dynamic": False, **options})
        return self._step_fn


@dataclass(frozen=True)
class _Constants:
    """What the step needs besides the buffers: sampling settings (Python numbers: compile-time constants) and the
    EOS / suppressed ids (device tensors)."""

    temperature: float
    top_k: int
    top_p: float
    eos: torch.Tensor
    suppress: torch.Tensor
    pad: int
    logprobs: bool


def _draw(logits: torch.Tensor, buf: _Buffers, c: _Constants) -> None:
    """Draw token `buf.step` from the last position's logits (`sampling.draw`, as `SeededSamplingProcessor` does
    under `generate`) and record it (a finished row records the pad id)."""
    tokens, logprob = draw(logits, buf.seeds, buf.step, c.temperature, c.top_k, c.top_p, c.suppress, c.logprobs)
    column = buf.step.view(1)
    if logprob is not None:
        buf.logprobs.index_copy_(1, column, logprob[:, None])
    tokens = torch.where(buf.finished, c.pad, tokens)
    buf.tokens.index_copy_(1, column, tokens[:, None])
    buf.finished.logical_or_((tokens[:, None] == c.eos[None, :]).any(dim=1))
    buf.step.add_(1)


def _decode_step(model: Any, cache: dict[str, Any], buf: _Buffers, mask: torch.Tensor, c: _Constants) -> None:
    """One decode forward: feed completion token step-1 at its position, draw token `step`. `cache`: {keyword:
    cache object}."""
    last = buf.tokens.index_select(1, buf.step.view(1) - 1)
    positions = (buf.base + buf.step - 1).view(1, -1, 1).expand(3, -1, -1)
    out = model(input_ids=last, attention_mask=mask, position_ids=positions, use_cache=True, **cache)
    _draw(out.logits[:, -1], buf, c)


def _find_rope_index(model: Any):
    """The model's `get_rope_index` (Qwen2.5-VL: on the inner `Qwen2_5_VLModel`, under any PEFT wrapping) and the
    keyword names it accepts (None: any), or None for a model without mRoPE."""
    for module in model.modules():
        fn = getattr(module, "get_rope_index", None)
        if callable(fn):
            params = inspect.signature(fn).parameters
            var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
            return fn, None if var_kw else set(params)
    return None


def _cache_keyword(model: Any) -> str:
    """`cache` (transformers >= 5.24) or `past_key_values` (older; a deprecated alias since), read off the HF
    model's forward under any PEFT wrapping."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _static_cache(model: Any, length: int) -> Any:
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=length)


def _dynamic_cache(model: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=model.config)
