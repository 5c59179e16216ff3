"""Merge operators against hand-computed values and naive reference loops written here."""

from __future__ import annotations

import math

import pytest
import torch

from vlmmerge.errors import IncompatibleModelsError, RecipeError, VlmMergeError
from vlmmerge.methods import (
    METHODS,
    breadcrumbs,
    dare_mask,
    dare_sparsify,
    dare_ties,
    della_keep_probabilities,
    della_sparsify,
    elect_sign,
    get_method,
    linear,
    model_stock,
    rank_range_mask,
    slerp,
    task_arithmetic,
    ties,
    trim_outliers,
    trim_to_density,
    value_at_rank,
)

torch.set_num_threads(1)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-6) -> bool:
    return a.shape == b.shape and float((a - b).abs().max()) <= tol


# ---------------------------------------------------------------- naive references (python loops)


def naive_keep_ranks(values: list[float], start: int, stop: int) -> list[bool]:
    """Keep the entries whose ascending |value| rank (ties by index) lies in [start, stop)."""
    order = sorted(range(len(values)), key=lambda i: (abs(values[i]), i))
    keep = [False] * len(values)
    for rank, index in enumerate(order):
        keep[index] = start <= rank < stop
    return keep


def naive_trim(values: list[float], density: float) -> list[float]:
    n = len(values)
    if density >= 1:
        return list(values)
    if density <= 0:
        return [0.0] * n
    k = max(1, int(density * n))
    # largest magnitudes first; equal magnitudes: lower index first (stable descending sort)
    kept = set(sorted(range(n), key=lambda i: (-abs(values[i]), i))[:k])
    return [v if i in kept else 0.0 for i, v in enumerate(values)]


def naive_ties(base, finetuned, weights, densities, normalize=True, lam=1.0):
    n = len(base)
    deltas = [naive_trim([f[i] - base[i] for i in range(n)], d) for f, d in zip(finetuned, densities)]
    out = []
    for i in range(n):
        weighted = [w * delta[i] for w, delta in zip(weights, deltas)]
        elected = 1.0 if sum(weighted) >= 0 else -1.0
        total, divisor = 0.0, 0.0
        for w, x in zip(weights, weighted):
            if x != 0 and math.copysign(1.0, x) == elected:
                total += x
                divisor += w
        if normalize:
            total /= divisor if divisor != 0 else 1.0
        out.append(base[i] + lam * total)
    return out


# ---------------------------------------------------------------- linear and task arithmetic


def test_linear_hand_computed():
    a, b = t(1, 2), t(3, 4)
    assert close(linear([a, b], [1.0, 3.0]), t(2.5, 3.5))
    assert close(linear([a, b], [1.0, 3.0], normalize=False), t(10, 14))


def test_linear_zero_weight_sum_is_an_error_naming_weight():
    with pytest.raises(RecipeError, match="weight"):
        linear([t(1, 2), t(3, 4)], [1.0, -1.0])
    assert close(linear([t(1, 2), t(3, 4)], [1.0, -1.0], normalize=False), t(-2, -2))


def test_task_arithmetic_hand_computed():
    base = t(0, 0, 0)
    ft = [t(1, -1, 2), t(3, 1, -2)]
    assert close(task_arithmetic(base, ft, [1.0, 0.5], lambda_=2.0), t(5, -1, 2))
    assert close(task_arithmetic(base, ft, [1.0, 0.5], normalize=True), t(2.5, -0.5, 1) / 1.5)
    # weights summing to ~0 are not divided by (divisor -> 1)
    assert close(task_arithmetic(base, ft, [1.0, -1.0], normalize=True), t(-2, -2, 4))


def test_task_arithmetic_random_vs_formula():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(5, 7, generator=g)
    ft = [torch.randn(5, 7, generator=g) for _ in range(3)]
    w = [0.3, 1.2, -0.4]
    expected = base + 0.7 * sum(wi * (f - base) for wi, f in zip(w, ft))
    assert close(task_arithmetic(base, ft, w, lambda_=0.7), expected, 1e-5)


# ---------------------------------------------------------------- TIES


def test_ties_hand_computed():
    base = t(0, 0, 0, 0)
    ft = [t(3, -1, 0.5, -2), t(-1, 2, 0.4, -3)]
    # density 0.5 keeps 2 of 4: [3, 0, 0, -2] and [0, 2, 0, -3]; elected signs [+, +, +, -]
    assert close(ties(base, ft, [1.0, 1.0], [0.5, 0.5]), t(3, 2, 0, -2.5))
    # weights [2, 1]: weighted [6, 0, 0, -4], [0, 2, 0, -3]; divisors [2, 1, 1, 3]
    assert close(ties(base, ft, [2.0, 1.0], [0.5, 0.5]), t(3, 2, 0, -7 / 3))
    assert close(ties(base, ft, [2.0, 1.0], [0.5, 0.5], normalize=False), t(6, 2, 0, -7))


def test_ties_elects_sign_on_weighted_deltas():
    base = t(0.0)
    ft = [t(1.0), t(-0.8)]
    # unweighted sum is +0.2, weighted 0.5 * 1 - 0.8 = -0.3: the negative model wins
    assert close(ties(base, ft, [0.5, 1.0], [1.0, 1.0]), t(-0.8))


def test_ties_random_vs_naive_loop():
    g = torch.Generator().manual_seed(11)
    base = torch.randn(6, 9, generator=g)
    ft = [base + torch.randn(6, 9, generator=g) for _ in range(3)]
    weights, densities = [0.9, 0.5, 1.4], [0.3, 0.7, 0.55]
    for normalize, lam in [(True, 1.0), (False, 0.6)]:
        got = ties(base, ft, weights, densities, normalize=normalize, lambda_=lam)
        expected = naive_ties(
            base.flatten().tolist(), [f.flatten().tolist() for f in ft], weights, densities, normalize, lam
        )
        assert close(got, torch.tensor(expected).reshape(6, 9), 1e-5)


def test_elect_sign_sum_and_count():
    deltas = torch.stack([t(1, -1, 0, 2), t(-3, -1, 0, 1), t(1, 3, 0, 1)])
    assert torch.equal(elect_sign(deltas, "sum"), t(-1, 1, 1, 1))
    assert torch.equal(elect_sign(deltas, "count"), t(1, -1, 1, 1))


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


# ---------------------------------------------------------------- SLERP


def test_slerp_hand_computed():
    a, b = t(1, 0), t(0, 1)
    assert close(slerp(a, b, 0.5), t(math.sqrt(0.5), math.sqrt(0.5)))
    assert close(slerp(a, b, 1 / 3), t(math.cos(math.pi / 6), math.sin(math.pi / 6)))
    assert close(slerp(a, b, 0.0), a) and close(slerp(a, b, 1.0), b)
    # unnormalized ends: coefficients multiply the raw tensors
    assert close(slerp(t(2, 0), b, 0.5), t(2 * math.sqrt(0.5), math.sqrt(0.5)))
    # 120 degrees apart
    c = t(-0.5, math.sqrt(3) / 2)
    theta = 2 * math.pi / 3
    assert close(slerp(a, c, 0.25), (math.sin(0.75 * theta) * a + math.sin(0.25 * theta) * c) / math.sin(theta))


def test_slerp_colinear_antipodal_and_zero_fall_back_to_lerp():
    a = t(1, 2, 3)
    assert close(slerp(a, 2 * a, 0.3), 0.7 * a + 0.3 * 2 * a)
    assert close(slerp(a, -a, 0.3), 0.7 * a - 0.3 * a)
    zero = torch.zeros(3)
    # a zero vector has no direction: angle 90 degrees with norm 1, coefficients sin(.)/1
    assert close(slerp(zero, a, 0.5), math.sin(math.pi / 4) * a)


def test_slerp_matrix_is_flattened():
    g = torch.Generator().manual_seed(13)
    a, b = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    assert close(slerp(a, b, 0.4), slerp(a.flatten(), b.flatten(), 0.4).reshape(4, 5))


# ---------------------------------------------------------------- Model Stock


def test_model_stock_hand_computed():
    base = t(0, 0)
    assert close(model_stock(base, [t(1, 0), t(0, 1)]), base)  # orthogonal: t = 0
    c = 1 / math.sqrt(2)
    ratio = 2 * c / (1 + c)
    assert close(model_stock(base, [t(1, 0), t(1, 1)]), ratio * t(1, 0.5))
    # opposite task vectors with N = 2: 1 + cos = 0, base kept
    assert close(model_stock(t(1, 1), [t(2, 1), t(0, 1)]), t(1, 1))


def test_model_stock_random_vs_formula():
    g = torch.Generator().manual_seed(14)
    base = torch.randn(6, 8, generator=g)
    ft = [base + torch.randn(6, 8, generator=g) + 0.5 for _ in range(3)]
    offsets = [f - base for f in ft]

    def cos(x, y):
        return float((x * y).sum() / (x.norm() * y.norm()))

    c = sum(cos(offsets[i], offsets[j]) for i, j in [(0, 1), (0, 2), (1, 2)]) / 3
    ratio = 3 * c / (1 + 2 * c)
    assert close(model_stock(base, ft), ratio * sum(ft) / 3 + (1 - ratio) * base, 1e-5)
    rows = []
    for r in range(6):
        c = sum(cos(offsets[i][r], offsets[j][r]) for i, j in [(0, 1), (0, 2), (1, 2)]) / 3
        ratio = 3 * c / (1 + 2 * c)
        rows.append(ratio * sum(f[r] for f in ft) / 3 + (1 - ratio) * base[r])
    assert close(model_stock(base, ft, filter_wise=True), torch.stack(rows), 1e-5)


# ---------------------------------------------------------------- registry


def registry_inputs(count=2, shape=(4, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + torch.randn(shape, generator=g) for _ in range(count)]


def test_registry_lists_required_methods():
    required = {"linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp", "breadcrumbs",
                "breadcrumbs_ties", "della", "della_linear", "model_stock"}
    assert required <= set(METHODS)
    assert {name for name, m in METHODS.items() if m.random} == {"dare_linear", "dare_ties", "della", "della_linear"}


def test_get_method_unknown_lists_known_names():
    with pytest.raises(RecipeError, match="unknown merge method 'tie'.*dare_ties.*ties"):
        get_method("tie")


def test_merge_unknown_model_parameter_names_key():
    base, ft = registry_inputs()
    with pytest.raises(RecipeError, match="'densty'"):
        get_method("ties").merge(base, ft, [{"weight": 1.0, "densty": 0.5}, {"weight": 1.0}], {})


def test_merge_unknown_global_parameter_names_key():
    base, ft = registry_inputs()
    with pytest.raises(RecipeError, match="'lamda'"):
        get_method("ties").merge(base, ft, [{"weight": 1.0}] * 2, {"lamda": 0.5})


def test_merge_missing_required_parameter_names_key():
    base, ft = registry_inputs()
    with pytest.raises(RecipeError, match="missing required parameter 'weight' for model 1"):
        get_method("task_arithmetic").merge(base, ft, [{"weight": 1.0}, {}], {})
    with pytest.raises(RecipeError, match="missing required parameter 't'"):
        get_method("slerp").merge(base, ft[:1], [{}], {})


def test_merge_bad_values_and_counts():
    base, ft = registry_inputs(3)
    with pytest.raises(RecipeError, match="'normalize'"):
        get_method("ties").merge(base, ft, [{"weight": 1.0}] * 3, {"normalize": "yes"})
    with pytest.raises(RecipeError, match="'weight'"):
        get_method("ties").merge(base, ft, [{"weight": "1"}] * 3, {})
    with pytest.raises(RecipeError, match="'density'.*>= 0"):
        get_method("dare_ties").merge(base, ft, [{"weight": 1.0, "density": -0.1}] * 3, {})
    with pytest.raises(RecipeError, match="'rescale_norm'"):
        get_method("dare_ties").merge(base, ft, [{"weight": 1.0}] * 3, {"rescale_norm": "l3"})
    with pytest.raises(RecipeError, match="exactly 2"):
        get_method("slerp").merge(base, ft, [{}] * 3, {"t": 0.5})
    with pytest.raises(RecipeError, match="at least 3"):
        get_method("model_stock").merge(base, ft[:1], [{}], {})
    with pytest.raises(RecipeError, match="needs a base_model"):
        get_method("ties").merge(None, ft, [{"weight": 1.0}] * 3, {})
    with pytest.raises(RecipeError, match="list the base among the models"):
        get_method("linear").merge(base, ft, [{"weight": 1.0}] * 3, {})
    with pytest.raises(IncompatibleModelsError, match=r"\(4, 3\).*\(3, 4\)"):
        get_method("linear").merge(None, [ft[0], ft[1].T], [{"weight": 1.0}] * 2, {})
    with pytest.raises(RecipeError, match="'probability'"):
        get_method("ties").merge(base, ft, [{"weight": 1.0, "density": 0.5}] * 3,
                                 {"rescale": True, "rescale_norm": "probability"})
    assert issubclass(RecipeError, VlmMergeError)


def test_merge_fills_defaults_and_calls_pure_functions():
    base, ft = registry_inputs(2)
    params = [{"weight": 0.6, "density": 0.5}, {"weight": 0.4}]
    got = get_method("ties").merge(base, ft, params, {"lambda": 0.8})
    assert torch.equal(got, ties(base, ft, [0.6, 0.4], [0.5, 1.0], normalize=True, lambda_=0.8))
    got = get_method("linear").merge(None, [base, *ft], [{"weight": 1.0}, {"weight": 2.0}, {"weight": 1.0}], {})
    assert close(got, (base + 2 * ft[0] + ft[1]) / 4)
    got = get_method("slerp").merge(base, ft[:1], [{}], {"t": 0.25})
    assert torch.equal(got, slerp(base, ft[0], 0.25))
    # task_arithmetic accepts mergekit's inert density/int8_mask without effect
    plain = get_method("task_arithmetic").merge(base, ft, [{"weight": 0.5}] * 2, {})
    inert = get_method("task_arithmetic").merge(base, ft, [{"weight": 0.5, "density": 0.1}] * 2, {"int8_mask": True})
    assert torch.equal(plain, inert)


def test_merge_random_methods_use_the_generator():
    base, ft = registry_inputs(2, shape=(40, 30))
    params = [{"weight": 0.5, "density": 0.4}] * 2
    for name in ["dare_linear", "dare_ties", "della", "della_linear"]:
        method = get_method(name)
        a = method.merge(base, ft, params, {}, torch.Generator().manual_seed(5))
        b = method.merge(base, ft, params, {}, torch.Generator().manual_seed(5))
        c = method.merge(base, ft, params, {}, torch.Generator().manual_seed(6))
        assert torch.equal(a, b) and not torch.equal(a, c), name


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_leaves_inputs_untouched_and_returns_float32(name):
    method = get_method(name)
    base, ft = registry_inputs(2 if name in ("nuslerp", "slerp") else 3, shape=(8, 6), seed=1)
    if name == "slerp":
        ft = ft[:1]
    base16, ft16 = base.to(torch.bfloat16), [f.to(torch.bfloat16) for f in ft]
    snapshot = [x.clone() for x in [base16, *ft16]]
    params = [{k: (0.5 if v is None else v) for k, v in method.model_params.items()} for _ in ft16]
    global_params = {"t": 0.3} if name == "slerp" else {}
    generator = torch.Generator().manual_seed(0) if method.random else None
    if method.takes_base:
        out = method.merge(base16, ft16, params, global_params, generator)
        reference = method.merge(base16.float(), [f.float() for f in ft16], params, global_params,
                                 torch.Generator().manual_seed(0) if method.random else None)
    else:
        params = params + [dict(params[0])]
        out = method.merge(None, [base16, *ft16], params, global_params, generator)
        reference = method.merge(None, [x.float() for x in [base16, *ft16]], params, global_params)
    assert out.dtype == torch.float32 and out.shape == base.shape
    assert torch.isfinite(out).all()
    assert close(out, reference, 1e-6)
    for before, after in zip(snapshot, [base16, *ft16]):
        assert torch.equal(before, after)
