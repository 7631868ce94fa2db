"""The per-row seeded sampler alone: exact distribution, filtering, reproducibility, the hash RNG."""

from __future__ import annotations

import math

import pytest
import torch

from vigos.generation.sampling import filter_logits, hash_uniform, mix32, row_keys, sample_tokens, seeds_tensor

LOGITS = torch.tensor([2.0, 1.5, 1.2, 0.9, 0.3, -0.2, -1.0, -3.0, 0.0, 1.0])


def _naive_probs(logits: list[float], temperature: float, top_k: int, top_p: float) -> list[float]:
    """Reference: softmax(logits / T), keep top-k, then the smallest most-likely prefix with mass >= top_p."""
    z = [x / temperature for x in logits]
    order = sorted(range(len(z)), key=lambda i: -z[i])
    if top_k > 0:
        order = order[:top_k]
    m = max(z[i] for i in order)
    w = {i: math.exp(z[i] - m) for i in order}
    total = sum(w.values())
    kept, mass = [], 0.0
    for i in order:
        kept.append(i)
        mass += w[i] / total
        if mass >= top_p:
            break
    total = sum(w[i] for i in kept)
    return [w[i] / total if i in kept else 0.0 for i in range(len(z))]


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "over"),
    [
        (1.0, 0, 1.0, "seeds"),
        (0.7, 5, 1.0, "seeds"),
        (1.1, 0, 0.8, "seeds"),
        (1.0, 6, 0.9, "seeds"),
        (2.0, 20, 0.95, "seeds"),
        (1.1, 0, 0.8, "steps"),
        (1.0, 6, 0.9, "steps"),
    ],
)
def test_empirical_frequencies_match_filtered_softmax(temperature, top_k, top_p, over):
    n = 20_000
    logits = LOGITS.expand(n, -1)
    if over == "seeds":  # many rows, one step
        tokens = sample_tokens(logits, torch.arange(n) + 42, 0, temperature, top_k, top_p)
    else:  # one seed, many steps
        n = 1500
        tokens = torch.cat(
            [sample_tokens(LOGITS[None], torch.tensor([7]), s, temperature, top_k, top_p) for s in range(n)]
        )
    freq = torch.bincount(tokens, minlength=LOGITS.numel()).double() / n
    expected = torch.tensor(_naive_probs(LOGITS.tolist(), temperature, top_k, top_p), dtype=torch.float64)
    # never outside the kept set
    assert freq[expected == 0].sum().item() == 0
    # within ~4.5 standard deviations of the binomial frequency
    tol = 4.5 * torch.sqrt(expected * (1 - expected) / n) + 1e-9
    assert torch.all((freq - expected).abs() <= tol), (freq.tolist(), expected.tolist())


def test_top_k_one_and_zero_temperature_are_argmax():
    logits = torch.randn(64, 100, generator=torch.Generator().manual_seed(0))
    seeds = torch.arange(64)
    assert torch.equal(sample_tokens(logits, seeds, 3, 1.0, top_k=1), logits.argmax(-1))
    assert torch.equal(sample_tokens(logits, seeds, 3, 0.0, top_k=0), logits.argmax(-1))


def test_tiny_top_p_keeps_only_the_most_likely_token():
    logits = torch.randn(32, 50, generator=torch.Generator().manual_seed(1))
    got = sample_tokens(logits, torch.arange(32), 0, 1.0, top_k=0, top_p=1e-6)
    assert torch.equal(got, logits.argmax(-1))


def test_filter_logits_marks_removed_candidates():
    scores, ids = filter_logits(LOGITS[None], 1.0, top_k=4, top_p=0.6)
    assert ids.tolist() == [[0, 1, 2, 9]]
    expected = _naive_probs(LOGITS.tolist(), 1.0, 4, 0.6)
    kept = [int(i) for i, s in zip(ids[0], scores[0], strict=True) if s > float("-inf")]
    assert kept == [i for i, p in enumerate(expected) if p > 0]


def test_draws_are_per_row_and_independent_of_the_batch():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 300, generator=gen)
    seeds = torch.tensor([42, 43, 44, 45, 46])
    batched = sample_tokens(logits, seeds, 11, 1.0, 20, 0.9)
    for i in range(5):
        alone = sample_tokens(logits[i : i + 1], seeds[i : i + 1], 11, 1.0, 20, 0.9)
        assert alone.item() == batched[i].item()
    # same seed, same step: same draw; other seeds / steps: different draws (over many tokens)
    flat = torch.zeros(1, 1000).expand(200, -1)
    a = sample_tokens(flat, torch.full((200,), 5), 0, 1.0)
    assert len(set(a.tolist())) == 1
    b = sample_tokens(flat, torch.arange(200), 0, 1.0)
    assert len(set(b.tolist())) > 150


def test_global_torch_rng_is_not_used():
    logits = torch.randn(8, 64, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    a = sample_tokens(logits, torch.arange(8), 0, 1.0)
    torch.manual_seed(123)
    torch.rand(10)
    b = sample_tokens(logits, torch.arange(8), 0, 1.0)
    assert torch.equal(a, b)


def test_hash_uniform_range_uniqueness_and_moments():
    seeds = seeds_tensor([0, 1, 2**40 + 7, -5])
    u = hash_uniform(seeds, 9, torch.arange(50_000))
    assert u.dtype == torch.float64 and u.shape == (4, 50_000)
    assert 0.0 < u.min().item() and u.max().item() < 1.0
    for row in u:
        assert row.unique().numel() == row.numel()
        assert abs(row.mean().item() - 0.5) < 0.01
        assert abs(row.var().item() - 1 / 12) < 0.005
    # rows (seeds) are uncorrelated
    c = torch.corrcoef(u)
    assert (c - torch.eye(4, dtype=c.dtype)).abs().max().item() < 0.03


def test_mix32_is_exact_32bit_arithmetic():
    # Reference with Python integers (mod 2^32) on a few values.
    def ref(x: int) -> int:
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    xs = [0, 1, 2, 12345, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xDEADBEEF]
    assert mix32(torch.tensor(xs)).tolist() == [ref(x) for x in xs]


def test_seeds_tensor_wraps_to_int64_and_high_bits_matter():
    t = seeds_tensor([2**64 + 3, -1, 2**63])
    assert t.tolist() == [3, -1, -(2**63)]
    assert not torch.equal(row_keys(seeds_tensor([5]), 0), row_keys(seeds_tensor([5 + 2**32]), 0))
