"""Per-token clipped KL divergences for ViGOS (docs/training.md, "One optimizer step").

For each supervised token t, with p = softmax(logits / T) over the FULL vocabulary, computed in float32:

    k_t = min( KL(p_source || p_target), clip_t ),   KL(p || q) = sum_v p_v (log p_v - log q_v)

The clamp is hard: a token with KL >= clip contributes ``clip`` and no gradient. Directions used by the
trainer: perception / reasoning ``KL(teacher || student)`` (source = teacher, target = student); reference
``KL(student || teacher)`` (source = student, target = teacher).

Two implementations with the same values and gradients:

* :func:`clipped_token_kl_terms` / :func:`clipped_token_kl` take logits (naive; for small vocabularies, tests).
* :func:`chunked_clipped_token_kl` takes hidden states and the lm_head weight. It gathers the masked positions,
  then computes logits chunk by chunk (``chunk_size`` tokens at a time) and turns each chunk straight into one
  KL value per token and, when the hidden states need gradients, into the hidden-state gradient for a unit
  upstream gradient (token t's KL depends on h_t only; the backward just scales it per token). So the logits
  are computed once, with as many matmuls as the naive graph. When the lm_head weight itself needs a gradient,
  the forward keeps only the KL values and the backward recomputes the logits of the tokens whose gradient is
  non-zero (clipped tokens are skipped). Peak extra memory is about ``12 * chunk_size * vocab`` bytes plus a
  few ``[tokens, hidden]`` tensors, whatever the sequence length; ``[tokens, vocab]`` logits never exist.

Both return :class:`KLTerms`: per-token clipped values, so a data-parallel caller can compute
``terms.sum / all_reduced_count``. An empty mask gives an empty ``values`` whose sum is 0 and is still
connected to the inputs (its backward gives zero gradients).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Working-set budget used to pick a default chunk size: ~12 bytes per (token, vocab) entry live at once.
DEFAULT_CHUNK_BYTES = 512 * 1024 * 1024
_BYTES_PER_ENTRY = 12


@dataclass
class KLTerms:
    """Per-token results over the masked positions (in mask order: row-major over ``[batch, seq]``)."""

    values: torch.Tensor  # [N] float32, min(KL, clip); carries the graph
    raw: torch.Tensor  # [N] float32, unclipped KL, detached
    clipped: torch.Tensor  # [N] bool, KL >= clip (no gradient)

    @property
    def count(self) -> int:
        return int(self.values.numel())

    @property
    def sum(self) -> torch.Tensor:
        """Sum of the clipped values (0 with a connected graph when empty)."""
        return self.values.sum()

    @property
    def num_clipped(self) -> int:
        return int(self.clipped.sum().item())

    @property
    def clipped_fraction(self) -> float:
        return self.num_clipped / self.count if self.count else 0.0

    def mean(self, count: float | torch.Tensor | None = None) -> torch.Tensor:
        """``sum / count`` (``count`` defaults to the local token count; pass an all-reduced one for DP).

        A zero count gives 0 (the sum is then 0 too) with the graph kept.
        """
        n = self.count if count is None else count
        if isinstance(n, torch.Tensor):
            return self.sum / n.to(self.values.dtype).clamp(min=1)
        return self.sum / max(float(n), 1.0)


def _gather_clip(clip, mask: torch.Tensor, n: int, device) -> torch.Tensor | None:
    """Clip as a float32 tensor broadcastable to ``[n]`` (scalar, ``[N]`` or mask-shaped), or None."""
    if clip is None:
        return None
    if not isinstance(clip, torch.Tensor):
        return torch.tensor(float(clip), dtype=torch.float32, device=device)
    clip = clip.detach().to(device=device, dtype=torch.float32)
    if clip.dim() == 0:
        return clip
    if clip.shape == mask.shape:
        return clip[mask]
    if clip.shape == (n,):
        return clip
    raise ValueError(f"clip must be a scalar, shaped like the mask {tuple(mask.shape)} or [{n}]; got "
                     f"{tuple(clip.shape)}")


def _clip(raw: torch.Tensor, clip: torch.Tensor | None) -> KLTerms:
    if clip is None:
        clipped = torch.zeros_like(raw, dtype=torch.bool)
        return KLTerms(raw, raw.detach(), clipped)
    clipped = raw.detach() >= clip
    values = torch.where(clipped, clip.expand_as(raw), raw)  # hard clamp: no gradient where clipped
    return KLTerms(values, raw.detach(), clipped)


def token_kl(source_logits: torch.Tensor, target_logits: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """``KL(softmax(source/T) || softmax(target/T))`` per position ``[...]``, in float32, over the last dim."""
    ls = torch.log_softmax(source_logits.float() / temperature, dim=-1)
    lt = torch.log_softmax(target_logits.float() / temperature, dim=-1)
    return (ls.exp() * (ls - lt)).sum(-1)


def clipped_token_kl_terms(
    source_logits: torch.Tensor,
    target_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    clip=None,
) -> KLTerms:
    """Per-token clipped KL at the positions where ``mask`` (``logits.shape[:-1]``) is true.

    ``clip``: None (no clamp), a float, or a tensor shaped like ``mask`` (or ``[N]``) of per-token clips.
    """
    mask = mask.to(torch.bool)
    raw = token_kl(source_logits[mask], target_logits[mask], temperature=temperature)
    return _clip(raw, _gather_clip(clip, mask, raw.numel(), raw.device))


def clipped_token_kl(
    source_logits: torch.Tensor,
    target_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    clip=None,
) -> torch.Tensor:
    """Mean over masked positions of ``min(KL(p_source || p_target), clip)``; 0 (graph kept) if none."""
    return clipped_token_kl_terms(source_logits, target_logits, mask, temperature=temperature, clip=clip).mean()


# ---------------------------------------------------------------------------------------------------------------
# Chunked: from hidden states and the lm_head weight


def default_chunk_size(vocab_size: int, budget_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Tokens per chunk so that the ``[chunk, vocab]`` working set stays near ``budget_bytes`` (multiple of 16)."""
    n = budget_bytes // (_BYTES_PER_ENTRY * max(int(vocab_size), 1))
    return int(max(16, min(4096, n // 16 * 16)))


def _log_probs(hidden: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    """float32 log-softmax of ``hidden @ weight.T / T`` (logits computed in the inputs' dtype, like lm_head)."""
    z = F.linear(hidden, weight).float()
    if temperature != 1.0:
        z.div_(temperature)
    return torch.log_softmax(z, dim=-1)


_MM_FLOAT32_OUT: dict = {}  # (device type, dtype) -> whether torch.mm(..., out_dtype=float32) works there


def _mm_float32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` as float32. Half-precision inputs on CUDA get a float32 output straight from the matmul (one
    rounding fewer) where this torch supports ``out_dtype``; elsewhere the product is rounded, then cast."""
    if a.is_cuda and a.dtype in (torch.bfloat16, torch.float16):
        key = (a.device.type, a.dtype)
        if _MM_FLOAT32_OUT.get(key, True):
            try:
                out = torch.mm(a, b, out_dtype=torch.float32)
                _MM_FLOAT32_OUT[key] = True
                return out
            except (RuntimeError, TypeError, NotImplementedError):
                _MM_FLOAT32_OUT[key] = False
    return (a @ b).float()


_VOCAB_BLOCK = 16384  # columns per step of the blocked row reduction (bounds its temporaries)


def _kl_rows(ls: torch.Tensor, lt: torch.Tensor) -> torch.Tensor:
    """``sum_v exp(ls) (ls - lt)`` per row, float32, leaving ``ls``/``lt`` intact; temporaries ``[rows, block]``."""
    out = torch.zeros(ls.shape[0], dtype=torch.float32, device=ls.device)
    for v in range(0, ls.shape[1], _VOCAB_BLOCK):
        a, b = ls[:, v: v + _VOCAB_BLOCK], lt[:, v: v + _VOCAB_BLOCK]
        out += (a - b).mul_(a.exp()).sum(-1)
    return out


def _grad_logits(ls, lt, kl, g, side_s: bool, side_t: bool):
    """Gradients of ``g * KL`` w.r.t. the source / target logits (None for a side not asked), float32.

    ``dKL/dz_s = p_s (ls - lt - KL) / T`` and ``dKL/dz_t = (p_t - p_s) / T`` with ``g`` already divided by T.
    Consumes ``ls`` and ``lt`` (their buffers are reused); a new ``[rows, V]`` buffer only when both sides are asked.
    """
    gz_s = gz_t = None
    if side_s:
        gz_s = ls - lt if side_t else lt.neg_().add_(ls)
        gz_s.sub_(kl)
    ps = ls.exp_()
    if side_s:
        gz_s.mul_(ps).mul_(g)
    if side_t:
        gz_t = lt.exp_().sub_(ps).mul_(g)
    return gz_s, gz_t


class _ChunkedTokenKL(torch.autograd.Function):
    """Per-token (unclipped) ``KL(softmax(hs W^T / T) || softmax(ht W^T / T))`` for ``[N, H]`` hidden states.

    ``side_s`` / ``side_t``: whether the source / target logits are differentiable. Two ways to the gradients:

    * eager (the weight needs no gradient): the forward also turns each chunk's logit gradients for a unit
      upstream gradient into ``[N, H]`` hidden-state gradients, which the backward scales per token. Token t's
      KL depends on h_t only, so this is exact; logits are computed once (3 matmuls in all, as naive).
    * recompute (the weight needs a gradient, which depends on every token's upstream gradient): the forward
      keeps only the KL values; the backward recomputes the logits of the tokens whose gradient is non-zero.
    """

    @staticmethod
    def forward(ctx, hs, ht, weight, temperature, chunk_size, side_s, side_t, eager):
        n = hs.shape[0]
        kl = torch.empty(n, dtype=torch.float32, device=hs.device)
        unit_s = torch.empty(hs.shape, dtype=torch.float32, device=hs.device) if eager and side_s else None
        unit_t = torch.empty(ht.shape, dtype=torch.float32, device=ht.device) if eager and side_t else None
        for a in range(0, n, chunk_size):
            b = min(a + chunk_size, n)
            ls = _log_probs(hs[a:b], weight, temperature)
            lt = _log_probs(ht[a:b], weight, temperature)
            if eager:
                kl_c = _kl_rows(ls, lt)
                kl[a:b] = kl_c
                gz_s, gz_t = _grad_logits(ls, lt, kl_c.unsqueeze(1), 1.0 / temperature, side_s, side_t)
                if gz_s is not None:
                    unit_s[a:b] = _mm_float32(gz_s.to(weight.dtype), weight)
                if gz_t is not None:
                    unit_t[a:b] = _mm_float32(gz_t.to(weight.dtype), weight)
                del gz_s, gz_t
            else:
                # in place, no extra [chunk, V] buffer: lt := p_s * (ls - lt), then sum over the vocabulary
                kl[a:b] = lt.neg_().add_(ls).mul_(ls.exp_()).sum(-1)
            del ls, lt
        ctx.eager = eager
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        ctx.side_s, ctx.side_t = side_s, side_t
        ctx.dtypes = (hs.dtype, ht.dtype)
        if eager:
            ctx.save_for_backward(unit_s, unit_t)
        else:
            ctx.save_for_backward(hs, ht, weight, kl)
        return kl

    @staticmethod
    def backward(ctx, grad_kl):
        need_hs, need_ht, need_w = ctx.needs_input_grad[:3]
        grad_kl = grad_kl.float()
        if ctx.eager:
            unit_s, unit_t = ctx.saved_tensors
            g = grad_kl.unsqueeze(1)
            grad_hs = (unit_s * g).to(ctx.dtypes[0]) if need_hs and unit_s is not None else None
            grad_ht = (unit_t * g).to(ctx.dtypes[1]) if need_ht and unit_t is not None else None
            return grad_hs, grad_ht, None, None, None, None, None, None
        hs, ht, weight, kl = ctx.saved_tensors
        t = ctx.temperature
        side_s = ctx.side_s and (need_hs or need_w)
        side_t = ctx.side_t and (need_ht or need_w)
        grad_hs = torch.zeros_like(hs) if need_hs else None
        grad_ht = torch.zeros_like(ht) if need_ht else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        if side_s or side_t:
            idx = torch.nonzero(grad_kl).squeeze(1)  # clipped tokens have zero gradient: skip them
            for a in range(0, idx.numel(), ctx.chunk_size):
                rows = idx[a: a + ctx.chunk_size]
                hs_c, ht_c = hs[rows], ht[rows]
                ls = _log_probs(hs_c, weight, t)
                lt = _log_probs(ht_c, weight, t)
                g = (grad_kl[rows] / t).unsqueeze(1)
                gz_s, gz_t = _grad_logits(ls, lt, kl[rows].unsqueeze(1), g, side_s, side_t)
                del ls, lt
                if gz_s is not None:
                    if need_hs:
                        grad_hs[rows] = (gz_s.to(weight.dtype) @ weight).to(hs.dtype)
                    if need_w:
                        grad_w.addmm_(gz_s.t(), hs_c.float())
                if gz_t is not None:
                    if need_ht:
                        grad_ht[rows] = (gz_t.to(weight.dtype) @ weight).to(ht.dtype)
                    if need_w:
                        grad_w.addmm_(gz_t.t(), ht_c.float())
                del gz_s, gz_t
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        return grad_hs, grad_ht, grad_w, None, None, None, None, None


def chunked_clipped_token_kl(
    source_hidden: torch.Tensor,
    target_hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    mask: torch.Tensor,
    *,
    target_mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    clip=None,
    chunk_size: int | None = None,
    grad_source: bool | None = None,
    grad_target: bool | None = None,
    recompute: bool = False,
) -> KLTerms:
    """Clipped per-token ``KL(softmax(h_s W^T / T) || softmax(h_t W^T / T))`` without materialising logits.

    ``source_hidden`` / ``target_hidden``: final hidden states (after the final norm) ``[..., H]``; ``mask``
    (``hidden.shape[:-1]``) selects the scored positions of the source, ``target_mask`` (default ``mask``) those
    of the target; both must select the same number of positions, matched in order (so a teacher whose context
    has another length can be aligned by its own mask). ``lm_head_weight``: ``[V, H]`` (no bias, as Qwen2.5's).

    Gradients: ``grad_source`` / ``grad_target`` say whether a side's logits are differentiable; by default,
    whether its hidden states require grad (a teacher run under no_grad is a constant, and contributes no
    weight gradient even when the weight is trainable). Hidden-state gradients are in the hidden dtype; the
    weight gradient is accumulated in float32 over chunks and returned in the weight dtype.

    ``clip``: None, a float or per-token clips (mask-shaped or ``[N]``); ``chunk_size``: tokens per chunk
    (default :func:`default_chunk_size`). ``recompute=True`` forces the recompute-in-backward path (otherwise
    used only when the weight needs a gradient). Returns :class:`KLTerms`.
    """
    mask = mask.to(torch.bool)
    target_mask = mask if target_mask is None else target_mask.to(torch.bool)
    if grad_source is None:
        grad_source = source_hidden.requires_grad
    if grad_target is None:
        grad_target = target_hidden.requires_grad
    hs = source_hidden[mask] if grad_source else source_hidden.detach()[mask]
    ht = target_hidden[target_mask] if grad_target else target_hidden.detach()[target_mask]
    if hs.shape[0] != ht.shape[0]:
        raise ValueError(f"mask selects {hs.shape[0]} source positions but target_mask selects {ht.shape[0]}")
    weight = lm_head_weight if (grad_source or grad_target) else lm_head_weight.detach()
    if hs.dtype != weight.dtype or ht.dtype != weight.dtype:
        raise ValueError(f"hidden states ({hs.dtype}, {ht.dtype}) and lm_head weight ({weight.dtype}) differ in dtype")
    if chunk_size is None:
        chunk_size = default_chunk_size(weight.shape[0])
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    grad_on = torch.is_grad_enabled()
    side_s = grad_on and grad_source and hs.requires_grad
    side_t = grad_on and grad_target and ht.requires_grad
    weight_grad = grad_on and weight.requires_grad
    eager = (side_s or side_t) and not weight_grad and not recompute
    sides = (side_s, side_t) if eager else (grad_source, grad_target)
    raw = _ChunkedTokenKL.apply(hs.contiguous(), ht.contiguous(), weight, float(temperature), int(chunk_size),
                                bool(sides[0]), bool(sides[1]), bool(eager))
    return _clip(raw, _gather_clip(clip, mask, raw.numel(), raw.device))
