"""Merge operators (linear, task arithmetic, TIES, SLERP, Model Stock) against hand-computed values and naive loops."""

from __future__ import annotations

import math

import pytest
import torch

from method_refs import close, naive_ties, t
from vlmmerge.errors import RecipeError
from vlmmerge.methods import (
    elect_sign,
    linear,
    model_stock,
    slerp,
    task_arithmetic,
    ties,
)

torch.set_num_threads(1)


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
