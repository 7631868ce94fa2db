"""Clipped per-token KL (docs/training.md): naive formula, hard clamp, empty masks, chunked == naive."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vigos.training.losses import (
    KLTerms,
    chunked_clipped_token_kl,
    clipped_token_kl,
    clipped_token_kl_terms,
    default_chunk_size,
    token_kl,
)

torch.set_num_threads(2)
V, H = 53, 12
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def explicit_kl(source_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p || q) = sum_v p_v (log p_v - log q_v), p = softmax(source / T), q = softmax(target / T), in float64."""
    s = source_logits.double() / temperature
    t = target_logits.double() / temperature
    p = torch.exp(s) / torch.exp(s).sum(-1, keepdim=True)
    q = torch.exp(t) / torch.exp(t).sum(-1, keepdim=True)
    return (p * (torch.log(p) - torch.log(q))).sum(-1)


def naive_terms(hs, ht, w, mask, *, clip=None, temperature=1.0, detach_source=False, detach_target=False):
    """The naive reference: full logits from lm_head, then the logits-level KL."""
    zs = F.linear(hs, w)
    zt = F.linear(ht, w)
    zs = zs.detach() if detach_source else zs
    zt = zt.detach() if detach_target else zt
    return clipped_token_kl_terms(zs, zt, mask, temperature=temperature, clip=clip)


def make(dtype=torch.float32, b=2, t=9, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(b, t, H, generator=g).to(device, dtype).requires_grad_()
    ht = (hs.detach().float().cpu() + 0.7 * torch.randn(b, t, H, generator=g)).to(device, dtype).requires_grad_()
    w = (torch.randn(V, H, generator=g) / H**0.5 * 2).to(device, dtype).requires_grad_()
    mask = torch.rand(b, t, generator=g) < 0.6
    mask[0, 0] = True
    return hs, ht, w, mask.to(device)


def grads(loss, *tensors):
    """d loss / d tensors; zeros for a tensor that does not require grad or is not reached."""
    live = [x for x in tensors if x.requires_grad]
    out = dict(zip(map(id, live), torch.autograd.grad(loss, live, allow_unused=True), strict=True))
    return [torch.zeros_like(x) if out.get(id(x)) is None else out[id(x)] for x in tensors]


# ---------------------------------------------------------------------------------------------------------------
# Logits-level


def test_token_kl_matches_explicit_formula():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 5, V, generator=g) * 3, torch.randn(4, 5, V, generator=g) * 3
    for temp in (1.0, 0.7, 2.0):
        torch.testing.assert_close(token_kl(s, t, temperature=temp).double(), explicit_kl(s, t, temp),
                                   rtol=1e-5, atol=1e-6)
    assert token_kl(s, s).abs().max() < 1e-5
    assert token_kl(s, t).dtype == torch.float32


def test_clipped_token_kl_is_the_masked_mean_of_min_kl_clip():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(3, 7, V, generator=g) * 2, torch.randn(3, 7, V, generator=g) * 2
    mask = torch.rand(3, 7, generator=g) < 0.5
    kl = explicit_kl(s, t)
    clip = float(kl[mask].median())
    expected = torch.clamp(kl[mask], max=clip).mean()
    assert clipped_token_kl(s, t, mask, clip=clip).item() == pytest.approx(expected.item(), rel=1e-5)
    assert clipped_token_kl(s, t, mask).item() == pytest.approx(kl[mask].mean().item(), rel=1e-5)
    terms = clipped_token_kl_terms(s, t, mask, clip=clip)
    assert terms.count == int(mask.sum())
    assert terms.num_clipped == int((kl[mask] >= clip).sum())
    assert terms.clipped_fraction == pytest.approx(terms.num_clipped / terms.count)
    torch.testing.assert_close(terms.raw.double(), kl[mask], rtol=1e-5, atol=1e-6)
    # sum / (an all-reduced count) for data-parallel means
    assert terms.mean(100).item() == pytest.approx(terms.sum.item() / 100)
    assert terms.mean(torch.tensor(100)).item() == pytest.approx(terms.sum.item() / 100)


def test_bf16_logits_are_computed_in_float32():
    g = torch.Generator().manual_seed(3)
    s, t = (torch.randn(2, 6, V, generator=g) * 4).bfloat16(), (torch.randn(2, 6, V, generator=g) * 4).bfloat16()
    mask = torch.ones(2, 6, dtype=torch.bool)
    terms = clipped_token_kl_terms(s, t, mask)
    assert terms.values.dtype == torch.float32
    torch.testing.assert_close(terms.raw.double(), explicit_kl(s.float(), t.float()).flatten(), rtol=1e-5, atol=1e-6)


def test_clipped_tokens_get_no_gradient():
    g = torch.Generator().manual_seed(4)
    s = (torch.randn(1, 8, V, generator=g) * 2).requires_grad_()
    t = (torch.randn(1, 8, V, generator=g) * 2).requires_grad_()
    mask = torch.ones(1, 8, dtype=torch.bool)
    raw = token_kl(s, t).detach()[0]
    clip = torch.full((1, 8), float(raw.median()))
    clip[0, 0] = raw[0]  # exactly at the clip: clipped (KL >= clip), no gradient either
    loss = clipped_token_kl(s, t, mask, clip=clip)
    gs, gt = torch.autograd.grad(loss, (s, t))
    clipped = raw >= clip[0]
    assert clipped[0] and 0 < int(clipped.sum()) < 8
    for gr in (gs, gt):
        assert (gr[0, clipped] == 0).all()
        assert (gr[0, ~clipped].abs().sum(-1) > 0).all()
    # the unclipped tokens' gradients are those of the plain KL, scaled by 1/N
    gs_plain = torch.autograd.grad(token_kl(s, t)[0, ~clipped].sum() / 8, s)[0]
    torch.testing.assert_close(gs, gs_plain)


def test_empty_mask_gives_zero_with_a_graph():
    s = torch.randn(2, 3, V, requires_grad=True)
    t = torch.randn(2, 3, V)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    loss = clipped_token_kl(s, t, mask, clip=0.05)
    assert loss.item() == 0.0 and loss.requires_grad
    (gs,) = torch.autograd.grad(loss, s)
    assert (gs == 0).all()
    terms = clipped_token_kl_terms(s, t, mask, clip=0.05)
    assert terms.count == 0 and terms.clipped_fraction == 0.0


def test_bad_clip_shape():
    s = torch.randn(2, 3, V)
    with pytest.raises(ValueError):
        clipped_token_kl(s, s, torch.ones(2, 3, dtype=torch.bool), clip=torch.ones(4))


# ---------------------------------------------------------------------------------------------------------------
# Chunked from hidden states


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunk_size", [1, 4, 1000])
@pytest.mark.parametrize("path", ["eager", "recompute", "weight-grad"])
def test_chunked_equals_naive_all_grads(chunk_size, path, device):
    hs, ht, w, mask = make(device=device)
    if path != "weight-grad":
        w = w.detach()
    naive = naive_terms(hs, ht, w, mask)
    ours = chunked_clipped_token_kl(hs, ht, w, mask, chunk_size=chunk_size, recompute=path == "recompute")
    torch.testing.assert_close(ours.values, naive.values, rtol=1e-5, atol=1e-6)
    # a non-uniform upstream gradient, so every token's weight matters
    coef = torch.linspace(0.5, 2.0, naive.count, device=device)
    ga = grads((ours.values * coef).sum(), hs, ht, w)
    gb = grads((naive.values * coef).sum(), hs, ht, w)
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert all(x.abs().sum() > 0 for x in (ga if path == "weight-grad" else ga[:2]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("temperature", [0.5, 1.5])
@pytest.mark.parametrize("recompute", [False, True])
def test_chunked_temperature_and_clip(temperature, recompute, device):
    hs, ht, w, mask = make(seed=5, device=device)
    raw = naive_terms(hs, ht, w, mask, temperature=temperature).raw.sort().values
    k = raw.numel() // 2
    clip = float(raw[k - 1] + raw[k]) / 2  # between two tokens' KL: no tie for rounding to break
    naive = naive_terms(hs, ht, w, mask, temperature=temperature, clip=clip)
    ours = chunked_clipped_token_kl(hs, ht, w, mask, temperature=temperature, clip=clip, chunk_size=3,
                                    recompute=recompute)
    assert 0 < ours.num_clipped < ours.count and ours.num_clipped == naive.num_clipped
    torch.testing.assert_close(ours.values, naive.values, rtol=1e-5, atol=1e-6)
    ga = grads(ours.mean(), hs, ht, w)
    for a, b in zip(ga, grads(naive.mean(), hs, ht, w), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    # the clipped tokens' hidden states get exactly zero gradient
    g_hs = ga[0][mask]
    assert (g_hs[ours.clipped] == 0).all() and (g_hs[~ours.clipped].abs().sum(-1) > 0).all()


def test_chunked_per_token_clip_tensor():
    hs, ht, w, mask = make(seed=6)
    raw = naive_terms(hs, ht, w, mask).raw
    clip = torch.full(mask.shape, 10.0)
    first = mask.nonzero()[0]
    clip[first[0], first[1]] = raw[0] / 2  # an extra clamp on one token (e.g. the last description token)
    naive = naive_terms(hs, ht, w, mask, clip=clip)
    ours = chunked_clipped_token_kl(hs, ht, w, mask, clip=clip, chunk_size=2)
    assert ours.clipped.tolist() == [True] + [False] * (ours.count - 1)
    torch.testing.assert_close(ours.values, naive.values, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads(ours.sum, hs, ht, w), grads(naive.sum, hs, ht, w), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    ours_n = chunked_clipped_token_kl(hs, ht, w, mask, clip=clip[mask], chunk_size=2)  # [N] clips work too
    torch.testing.assert_close(ours_n.values, ours.values)


@pytest.mark.parametrize("student", ["target", "source"])
@pytest.mark.parametrize("frozen_weight", [True, False])
def test_chunked_teacher_is_a_constant(student, frozen_weight):
    """Teacher hidden states from a no_grad forward: no grad to them, and the weight only gets the student's."""
    hs, ht, w, mask = make(seed=7)
    if frozen_weight:
        w = w.detach()
    teacher_is_source = student == "target"
    if teacher_is_source:
        hs = hs.detach()
    else:
        ht = ht.detach()
    naive = naive_terms(hs, ht, w, mask, clip=0.3, detach_source=teacher_is_source,
                        detach_target=not teacher_is_source)
    ours = chunked_clipped_token_kl(hs, ht, w, mask, clip=0.3, chunk_size=5)
    torch.testing.assert_close(ours.values, naive.values, rtol=1e-5, atol=1e-6)
    student_h = ht if teacher_is_source else hs
    wrt = (student_h,) if frozen_weight else (student_h, w)
    ga = torch.autograd.grad(ours.mean(), wrt)
    gb = torch.autograd.grad(naive.mean(), wrt)
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
        assert a.abs().sum() > 0


def test_chunked_frozen_weight_and_explicit_flags():
    hs, ht, w, mask = make(seed=8)
    w = w.detach()
    ours = chunked_clipped_token_kl(hs, ht, w, mask, chunk_size=4, grad_source=False)
    naive = naive_terms(hs, ht, w, mask, detach_source=True)
    g_hs, g_ht = grads(ours.sum, hs, ht)
    n_hs, n_ht = grads(naive.sum, hs, ht)
    assert (g_hs == 0).all() and (n_hs == 0).all()
    torch.testing.assert_close(g_ht, n_ht, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("frozen_weight", [True, False])
def test_chunked_bf16_matches_naive_bf16(frozen_weight, device):
    hs, ht, w, mask = make(dtype=torch.bfloat16, seed=9, device=device)
    if frozen_weight:
        w = w.detach()
    for chunk_size in (2, 7):
        naive = naive_terms(hs, ht, w, mask, clip=1.0)
        ours = chunked_clipped_token_kl(hs, ht, w, mask, clip=1.0, chunk_size=chunk_size)
        assert ours.values.dtype == torch.float32
        torch.testing.assert_close(ours.values, naive.values, rtol=1e-5, atol=1e-6)
        ga, gb = grads(ours.mean(), hs, ht, w), grads(naive.mean(), hs, ht, w)
        assert all(a.dtype == torch.bfloat16 for a in ga)
        # bf16 matmuls like the naive graph, rounded at other points (the eager path scales by the upstream
        # gradient after the matmul; the weight gradient is accumulated over chunks in float32): within ~2 bf16
        # ulps of the gradient's scale
        for a, b in zip(ga, gb, strict=True):
            scale = b.float().abs().max().item()
            torch.testing.assert_close(a.float(), b.float(), rtol=1e-2, atol=1e-2 * scale)
    # the values are the float32 KL of the bf16 logits (what a bf16 lm_head gives), to float32 precision
    exact = explicit_kl(F.linear(hs, w).float()[mask], F.linear(ht, w).float()[mask])
    ours = chunked_clipped_token_kl(hs, ht, w, mask, chunk_size=3)
    assert (ours.values.double() - exact).abs().max() < 1e-5


def test_chunked_empty_mask_gives_zero_with_a_graph():
    hs, ht, w, mask = make(seed=10)
    empty = torch.zeros_like(mask)
    terms = chunked_clipped_token_kl(hs, ht.detach(), w, empty, clip=0.05, chunk_size=4)
    loss = terms.mean()
    assert terms.count == 0 and loss.item() == 0.0 and loss.requires_grad
    g_hs, g_w = torch.autograd.grad(loss, (hs, w))
    assert (g_hs == 0).all() and (g_w == 0).all()


def test_chunked_target_mask_aligns_a_shifted_teacher():
    hs, ht, w, mask = make(seed=11)
    shift = 3  # the teacher's context is 3 positions longer: completion token j sits at j + 3
    ht_long = torch.cat([torch.randn(ht.shape[0], shift, H), ht.detach()], dim=1)
    tmask = torch.cat([torch.zeros(mask.shape[0], shift, dtype=torch.bool), mask], dim=1)
    a = chunked_clipped_token_kl(hs, ht.detach(), w, mask, chunk_size=4)
    b = chunked_clipped_token_kl(hs, ht_long, w, mask, target_mask=tmask, chunk_size=4)
    torch.testing.assert_close(a.values, b.values)
    with pytest.raises(ValueError):
        chunked_clipped_token_kl(hs, ht_long, w, mask, target_mask=torch.ones_like(tmask))


def test_chunked_under_no_grad():
    hs, ht, w, mask = make(seed=12)
    with torch.no_grad():
        terms = chunked_clipped_token_kl(hs, ht, w, mask, clip=0.05)
    assert isinstance(terms, KLTerms) and not terms.values.requires_grad
    torch.testing.assert_close(terms.values, naive_terms(hs, ht, w, mask, clip=0.05).values.detach(),
                               rtol=1e-5, atol=1e-6)


def test_default_chunk_size():
    assert default_chunk_size(152_064) % 16 == 0 and 128 <= default_chunk_size(152_064) <= 512
    assert default_chunk_size(53) == 4096 and default_chunk_size(10**9) == 16
