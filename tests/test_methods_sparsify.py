"""Selection helpers (trim, ranks, outliers, breadcrumbs) and DARE / DELLA against hand-computed values and naive loops."""

from __future__ import annotations

import math

import pytest
import torch

from method_refs import close, naive_keep_ranks, naive_trim, t
from vlmmerge.errors import RecipeError
from vlmmerge.methods import (
    breadcrumbs,
    dare_mask,
    dare_sparsify,
    dare_ties,
    della_keep_probabilities,
    della_sparsify,
    rank_range_mask,
    ties,
    trim_outliers,
    trim_to_density,
    value_at_rank,
)

torch.set_num_threads(1)


# ---------------------------------------------------------------- selection helpers


def test_trim_to_density_matches_naive_and_keeps_k():
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(13, 17, generator=g)
    for density in [0.0, 0.001, 0.1, 0.5, 0.99, 1.0]:
        got = trim_to_density(delta.clone(), density)
        expected = torch.tensor(naive_trim(delta.flatten().tolist(), density)).reshape(13, 17)
        assert torch.equal(got, expected), density


def test_trim_ties_broken_by_lower_index():
    delta = t(1, -2, 2, 2, -2, 0.5)
    # k = 2: magnitude 2 appears 4 times; the lower indices win, as in a stable descending sort
    assert torch.equal(trim_to_density(delta.clone(), 2 / 6), t(0, -2, 2, 0, 0, 0))
    assert torch.equal(trim_to_density(delta.clone(), 0.5), t(0, -2, 2, 2, 0, 0))
    # the same on a tensor large enough for the sampled threshold search
    big = torch.zeros(1_500_000)
    big[::3] = 1.0
    big[7] = 5.0
    trimmed = trim_to_density(big.clone(), 100.5 / 1_500_000)  # k = 100: the 5.0 and 99 ones
    expected = torch.cat([torch.tensor([7]), torch.arange(0, 3 * 99, 3)]).sort().values
    assert torch.equal(torch.nonzero(trimmed).squeeze(1), expected)


def test_trim_heavy_ties_in_large_tensors_matches_stable_order():
    """Large tensors (the bracketed selection) with few distinct magnitudes: the tied entries kept at
    the cut are the lowest flat indices (a stable descending sort), wherever the cut falls."""
    g = torch.Generator().manual_seed(6)
    delta = torch.randint(-20, 21, (400_000,), generator=g).float() * 0.01
    order = torch.sort(delta.abs(), descending=True, stable=True).indices
    for density in [0.1, 0.37, 0.5, 0.9]:
        k = max(1, int(density * delta.numel()))
        expected = torch.zeros_like(delta)
        expected[order[:k]] = delta[order[:k]]
        assert torch.equal(trim_to_density(delta.clone(), density), expected), density


def test_trim_rescale_keeps_l1_norm():
    g = torch.Generator().manual_seed(1)
    delta = torch.randn(40, generator=g)
    trimmed = trim_to_density(delta.clone(), 0.25, rescale_norm="l1")
    assert int((trimmed != 0).sum()) == 10
    assert math.isclose(float(trimmed.abs().sum()), float(delta.abs().sum()), rel_tol=1e-5)


def test_value_at_rank_large_tensors_exact():
    g = torch.Generator().manual_seed(2)
    cases = {
        "normal": torch.randn(1_300_000, generator=g),
        "sorted": torch.arange(1_200_000, dtype=torch.float32),  # sample brackets still exact
        "few values": torch.randint(0, 7, (1_100_000,), generator=g).float(),  # heavy ties
        "spike": torch.cat([torch.zeros(1_000_000), torch.randn(200_000, generator=g)]),
    }
    for name, values in cases.items():
        for rank in [0, 17, values.numel() // 3, values.numel() // 2, values.numel() - 5, values.numel() - 1]:
            expected = torch.kthvalue(values, rank + 1).values
            assert value_at_rank(values, rank) == expected, (name, rank)


def test_rank_range_mask_large_with_ties_matches_stable_order():
    g = torch.Generator().manual_seed(4)
    values = torch.randint(0, 50, (1_100_000,), generator=g).float()
    order = torch.sort(values, stable=True).indices
    for start, stop in [(0, 1000), (123_457, 600_001), (1_000_000, 1_100_000), (5, 5)]:
        expected = torch.zeros(values.numel(), dtype=torch.bool)
        expected[order[start:stop]] = True
        assert torch.equal(rank_range_mask(values, start, stop), expected), (start, stop)


def test_trim_outliers_hand_computed():
    delta = t(1, -2, 3, -4, 5, -6, 7, -8, 9, -10)
    # density 0.5, gamma 0.2: target 5, n_top 2, n_bottom 3 -> keep magnitudes 4..8
    assert torch.equal(trim_outliers(delta.clone(), 0.5, 0.2), t(0, 0, 0, -4, 5, -6, 7, -8, 0, 0))
    # density 0.9 + gamma 0.2 > 1: n_bottom 0, keep the 9 smallest
    assert torch.equal(trim_outliers(delta.clone(), 0.9, 0.2), t(1, -2, 3, -4, 5, -6, 7, -8, 9, 0))
    # density 0.05 -> int(0.5) = 0 kept (no minimum of one, unlike TIES)
    assert torch.equal(trim_outliers(delta.clone(), 0.05, 0.2), torch.zeros(10))


def test_breadcrumbs_random_vs_naive():
    g = torch.Generator().manual_seed(5)
    base = torch.randn(50, generator=g)
    ft = [base + torch.randn(50, generator=g) for _ in range(2)]
    w, d, gam = [0.7, 0.6], [0.4, 0.8], [0.1, 0.05]
    expected = base.clone()
    for wi, di, gi, f in zip(w, d, gam, ft):
        delta = (f - base).tolist()
        n = len(delta)
        target, n_top = int(di * n), int(gi * n)
        n_bottom = max(0, n - target - n_top)
        keep = naive_keep_ranks(delta, n_bottom, n_bottom + target)
        expected += wi * torch.tensor([x if k else 0.0 for x, k in zip(delta, keep)])
    assert close(breadcrumbs(base, ft, w, d, gam), expected, 1e-5)


# ---------------------------------------------------------------- DARE and DELLA


def test_dare_mask_deterministic_and_seed_dependent():
    masks = [dare_mask((300, 40), 0.3, torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert masks[0].dtype == torch.bool
    assert torch.equal(masks[0], masks[1])
    assert not torch.equal(masks[0], masks[2])
    assert abs(float(masks[0].float().mean()) - 0.3) < 0.01


def test_dare_mask_is_torch_bernoulli_stream():
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    expected = torch.bernoulli(torch.full((50, 30), 0.4), generator=g1).bool()
    assert torch.equal(dare_mask((50, 30), 0.4, g2), expected)


def test_dare_rescale_l1_and_probability():
    g = torch.Generator().manual_seed(10)
    delta = torch.randn(20_000, generator=g)
    kept = dare_sparsify(delta.clone(), 0.25, torch.Generator().manual_seed(1), rescale_norm="l1")
    assert math.isclose(float(kept.abs().sum()), float(delta.abs().sum()), rel_tol=1e-4)
    mask = dare_mask(delta.shape, 0.25, torch.Generator().manual_seed(1))
    assert torch.equal(kept != 0, mask)
    unbiased = dare_sparsify(delta.clone(), 0.25, torch.Generator().manual_seed(1), rescale_norm="probability")
    assert close(unbiased, delta * mask / 0.25, 1e-5)
    plain = dare_sparsify(delta.clone(), 0.25, torch.Generator().manual_seed(1), rescale_norm=None)
    assert torch.equal(plain, delta * mask)


def test_dare_rescale_keeps_expectation():
    delta = torch.linspace(-1, 1, 64)
    for norm in ["probability", "l1"]:
        total = torch.zeros(64)
        trials = 3000
        g = torch.Generator().manual_seed(0)
        for _ in range(trials):
            total += dare_sparsify(delta.clone(), 0.3, g, rescale_norm=norm)
        mean = total / trials
        # per-entry standard error: |delta| * sqrt((1 - p) / p / trials) <= 0.028
        assert float((mean - delta).abs().max()) < 0.12, norm
        assert abs(float(mean.sum() - delta.sum())) < 0.5, norm


def test_dare_ties_deterministic_per_seed_and_density_one_is_ties():
    g = torch.Generator().manual_seed(12)
    base = torch.randn(30, 20, generator=g)
    ft = [base + torch.randn(30, 20, generator=g) for _ in range(3)]
    w, d = [0.5, 0.3, 0.2], [0.4, 0.6, 0.5]
    runs = [dare_ties(base, ft, w, d, torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    no_drop = dare_ties(base, ft, w, [1.0] * 3, torch.Generator().manual_seed(1))
    assert close(no_drop, ties(base, ft, w, [1.0] * 3, normalize=False), 1e-6)


def test_della_keep_probabilities_hand_computed():
    probs = della_keep_probabilities(t(0.1, 0.5, 0.3), 0.5, 0.1)
    assert close(probs, t(0.4, 0.6, 0.5))
    rows = della_keep_probabilities(torch.tensor([[1.0, 3.0, 2.0, 4.0, 0.0], [5.0, 4.0, 3.0, 2.0, 1.0]]), 0.4, 0.2)
    assert close(rows, torch.tensor([[0.3, 0.5, 0.4, 0.6, 0.2], [0.6, 0.5, 0.4, 0.3, 0.2]]))
    # one column: no rank spread, every entry kept with probability density
    assert close(della_keep_probabilities(torch.ones(3, 1), 0.4, 0.2), torch.full((3, 1), 0.4))


def test_della_empirical_keep_rates_follow_rank():
    magnitudes = torch.arange(1, 11, dtype=torch.float32).repeat(4000, 1)  # rows of ranks 0..9
    kept = della_sparsify(magnitudes.clone(), 0.5, 0.2, torch.Generator().manual_seed(3), rescale_norm=None)
    rates = (kept != 0).float().mean(dim=0)
    expected = 0.3 + torch.arange(10) / 9 * 0.4
    assert float((rates - expected).abs().max()) < 0.03


def test_della_epsilon_domain_error_names_epsilon():
    with pytest.raises(RecipeError, match="epsilon"):
        della_sparsify(torch.randn(10), 0.9, 0.15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_negligible_norm_is_torchs_comparison_with_the_threshold(dtype):
    from vlmmerge.methods.sparsify import RESCALE_EPS, negligible

    eps = torch.tensor(RESCALE_EPS, dtype=dtype)
    around = [eps, torch.nextafter(eps, torch.zeros_like(eps)), torch.nextafter(eps, torch.ones_like(eps)),
              torch.tensor(RESCALE_EPS * 0.999999, dtype=torch.float64).to(dtype), torch.zeros((), dtype=dtype),
              torch.tensor(float("nan"), dtype=dtype), torch.tensor(3.0, dtype=dtype)]
    for value in around:
        assert negligible(value) == bool(value < RESCALE_EPS), (dtype, float(value))
