"""Per-row seeded token sampling: temperature, top-k, top-p, then a Gumbel-max draw from a counter-based hash RNG.

Why a hash RNG and not `torch.Generator`s: the uniform number a row uses for token `t` at decode step `n` is a pure
function `hash(seed, n, t)`, computed for all rows at once with a handful of integer tensor ops (no per-row
generator objects, no per-row kernel launches, no hidden state to save for resumption). So row i's draws depend only
on its own seed and on its logits, never on which other rows share the batch, on their padding, or on the global
torch RNG: sample s of an eval question with seed 42+s is reproducible, and a resumed run reproduces its rollouts.

The draw: with logits z (already divided by the temperature and filtered), picking `argmax_t z_t + g_t` with
`g_t = -log(-log(u_t))` and `u_t` i.i.d. uniform is an exact sample from softmax(z) over the kept tokens (the
Gumbel-max trick). The hash (three rounds of a 32-bit integer mixer, "lowbias32") is computed in int64 without
overflow (32-bit multiplications are split into 16-bit halves), so it gives identical bits on CPU and CUDA; the
Gumbel transform runs in float64 so that u close to 1 does not round to 1.

Filtering follows the HF / vLLM order and semantics: divide by the temperature, keep the `top_k` largest logits
(0 = no top-k), then keep the smallest set of the most likely remaining tokens whose probability reaches `top_p`
(the most likely token is always kept). `temperature == 0` is greedy (argmax).
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF
_KEY_SALT = 0x5BD1E995
_TOKEN_SALT = 0x9E3779B9


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for int64 `x` in [0, 2^32) and a 32-bit constant, without int64 overflow."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer mixer (Chris Wellons' lowbias32) on int64 tensors holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def row_keys(seeds: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
    """One 32-bit key per row for decode step `step`, from 64-bit seeds (int64 tensor [B]) -> int64 [B].

    `step` may be a 0-d int64 tensor on the seeds' device (a compiled / CUDA-graph decode step reads it from device
    memory, so it neither syncs nor recompiles per step); an int gives the same bits."""
    seeds = seeds.to(torch.int64)
    lo = seeds & _M32
    hi = (seeds >> 32) & _M32  # arithmetic shift, then mask: the high word of the two's-complement bits
    key = mix32(lo ^ _KEY_SALT)
    key = mix32(key ^ hi)
    return mix32(key ^ ((step if torch.is_tensor(step) else int(step)) & _M32))


def hash_uniform(seeds: torch.Tensor, step: int | torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Uniforms in (0, 1), float64, shape of `token_ids` ([B, K] or [K]): u[b, k] = U(seeds[b], step, token_ids[..k]).

    For a fixed row and step, distinct token ids get distinct values (the map is a bijection on 32 bits).
    """
    key = row_keys(seeds, step)[:, None]
    tok = mix32((token_ids.to(torch.int64) & _M32) ^ _TOKEN_SALT)
    if tok.dim() == 1:
        tok = tok[None, :]
    h = mix32((mix32(key ^ tok) + key) & _M32)
    return (h.to(torch.float64) + 0.5) * (1.0 / 4294967296.0)


def filter_logits(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Temperature + top-k + top-p. Returns (scores [B, K], token ids [B, K] or None meaning "all V, in order").

    Removed candidates have score -inf. Candidates come sorted by decreasing logit when top-k or top-p is active.
    """
    scores = logits.float() / float(temperature)
    vocab = scores.shape[-1]
    ids = None
    if 0 < top_k < vocab:
        scores, ids = torch.topk(scores, top_k, dim=-1)
    if top_p < 1.0:
        if ids is None:
            scores, ids = torch.sort(scores, dim=-1, descending=True)
        probs = torch.softmax(scores, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs
        drop = mass_before >= top_p
        drop[:, 0] = False
        scores = scores.masked_fill(drop, float("-inf"))
    return scores, ids


def sample_tokens(
    logits: torch.Tensor,
    seeds: torch.Tensor,
    step: int | torch.Tensor,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
) -> torch.Tensor:
    """Draw one token per row from `logits` [B, V]: row b uses only (seeds[b], step) for its randomness. -> int64 [B]."""
    if temperature <= 0 or top_k == 1:
        return torch.argmax(logits, dim=-1)
    scores, ids = filter_logits(logits, temperature, top_k, top_p)
    if ids is None:
        cand = torch.arange(scores.shape[-1], device=scores.device)
    else:
        cand = ids
    u = hash_uniform(seeds.to(scores.device), step, cand)
    gumbel = -torch.log(-torch.log(u))
    choice = torch.argmax(scores.to(torch.float64) + gumbel, dim=-1)
    if ids is None:
        return choice
    return ids.gather(-1, choice[:, None]).squeeze(-1)


def draw(
    logits: torch.Tensor, seeds: torch.Tensor, step: int | torch.Tensor, temperature: float, top_k: int = 0,
    top_p: float = 1.0, suppress: torch.Tensor | None = None, logprobs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One decode step of every row, as both of the engine's decode paths draw it: the `suppress` ids are never
    drawn, then `sample_tokens`. -> (tokens [B], and with `logprobs` the model's own log-probability of each drawn
    token [B]: temperature 1, before suppression and filtering, i.e. what the trainer's forward must reproduce for
    the same token; else None)."""
    raw = logits.float()
    scores = raw.index_fill(1, suppress, float("-inf")) if suppress is not None and suppress.numel() else raw
    tokens = sample_tokens(scores, seeds, step, temperature, top_k, top_p)
    if not logprobs:
        return tokens, None
    return tokens, torch.log_softmax(raw, dim=-1).gather(1, tokens[:, None])[:, 0]


def seeds_tensor(seeds: list[int], device: torch.device | str | None = None) -> torch.Tensor:
    """Python ints (any size, negative allowed) -> int64 tensor of their low 64 bits (two's complement)."""
    wrapped = [((int(s) + 2**63) % 2**64) - 2**63 for s in seeds]
    return torch.tensor(wrapped, dtype=torch.int64, device=device)
