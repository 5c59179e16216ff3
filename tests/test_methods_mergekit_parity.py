"""Tensor-level parity with mergekit 0.1.5's own kernels (mergekit.merge_methods.merge_tensors).

Deterministic methods must agree to 1e-5 on float32 tensors. The task-vector inputs are built
tie-free (distinct delta magnitudes, exact float32 arithmetic): mergekit's unstable argsort breaks
ties at the trim threshold arbitrarily, so only tie-free data has one right answer.
DARE/DELLA: mergekit draws from torch's global generator; ours from a generator we pass. Same
state -> same masks (checked exactly), and independent seeds agree statistically.
"""

from __future__ import annotations

import math

import pytest
import torch
from mergekit.merge_methods import merge_tensors

from vlmmerge.methods import get_method

torch.set_num_threads(1)
TOL = 1e-5


def tie_free_models(shape, count, seed):
    """A base and `count` models whose deltas have distinct magnitudes and are exact in float32.

    base: multiples of 1/8 in [-1, 1]; delta: +/- k * step with k a permutation of 1..n
    (n <= 2**21) and step a power of two making the largest |delta| about 0.25-0.5, so
    base + delta and (base + delta) - base are exact.
    """
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    assert n <= 2**21
    step = 2.0 ** (math.floor(math.log2(2**21 / n)) - 22)
    base = torch.randint(-8, 9, shape, generator=g).float() / 8
    models = []
    for _ in range(count):
        magnitudes = (torch.randperm(n, generator=g) + 1).float() * step
        signs = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
        delta = (magnitudes * signs).reshape(shape)
        model = base + delta
        assert torch.equal(model - base, delta)
        models.append(model)
    return base, models


def mergekit_merge(name, base, models, params):
    if base is None:
        return merge_tensors(list(models), name, parameters=params)
    return merge_tensors([base, *models], name, parameters=params, base_index=0)


def ours(name, base, models, model_params, global_params, generator=None):
    return get_method(name).merge(base, models, model_params, global_params, generator)


def per_model(**lists):
    count = len(next(iter(lists.values())))
    return [{key: values[i] for key, values in lists.items()} for i in range(count)]


def assert_parity(expected, got, tol=TOL):
    assert expected.shape == got.shape
    diff = float((expected.float() - got).abs().max())
    assert diff <= tol, f"max abs diff {diff}"


SHAPES = [(37,), (24, 40), (3, 10, 12)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("weights", [[0.7, 0.5, 0.4], [1.0, -0.3, 0.6]])
def test_linear(shape, normalize, weights):
    _, models = tie_free_models(shape, 3, seed=1)
    expected = mergekit_merge("linear", None, models, {"weight": weights, "normalize": normalize})
    got = ours("linear", None, models, per_model(weight=weights), {"normalize": normalize})
    assert_parity(expected, got)


TASK_VECTOR_SETTINGS = [
    {},
    {"normalize": True},
    {"normalize": False, "lambda": 1.7},
    {"normalize": True, "lambda": 0.6},
    {"rescale": True},
    {"rescale": True, "normalize": True, "lambda": 1.3},
]
WEIGHT_SETS = [[0.7, 0.5, 0.4], [1.2, 0.9, -0.35]]  # the first sums to 1.6 (> 1)
DENSITY_SETS = [[0.5, 0.3, 0.9], [1.0, 0.05, 0.0], [0.01, 0.99, 0.6]]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("settings", TASK_VECTOR_SETTINGS)
@pytest.mark.parametrize("weights", WEIGHT_SETS)
def test_task_arithmetic(shape, settings, weights):
    settings = {k: v for k, v in settings.items() if k != "rescale"}
    base, models = tie_free_models(shape, 3, seed=2)
    expected = mergekit_merge("task_arithmetic", base, models, {"weight": weights, **settings})
    got = ours("task_arithmetic", base, models, per_model(weight=weights), settings)
    assert_parity(expected, got)


@pytest.mark.parametrize("method", ["ties", "breadcrumbs", "breadcrumbs_ties"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("settings", TASK_VECTOR_SETTINGS)
@pytest.mark.parametrize("weights", WEIGHT_SETS)
@pytest.mark.parametrize("densities", DENSITY_SETS)
def test_sparsified_task_vectors(method, shape, settings, weights, densities):
    base, models = tie_free_models(shape, 3, seed=3)
    mk_params = {"weight": weights, "density": densities, **settings}
    lists = {"weight": weights, "density": densities}
    if method.startswith("breadcrumbs"):
        gammas = [0.05, 0.2, 0.01]
        mk_params["gamma"] = gammas
        lists["gamma"] = gammas
    expected = mergekit_merge(method, base, models, mk_params)
    got = ours(method, base, models, per_model(**lists), settings)
    assert_parity(expected, got)


@pytest.mark.parametrize("method", ["ties", "breadcrumbs_ties", "breadcrumbs"])
def test_large_tensor_selection_path(method):
    # 1.2M elements > the 2**20 threshold: exercises the sampled exact threshold search.
    base, models = tie_free_models((1000, 1200), 2, seed=4)
    weights, densities = [0.8, 0.6], [0.37, 0.81]
    mk_params = {"weight": weights, "density": densities, "rescale": True}
    lists = {"weight": weights, "density": densities}
    if method.startswith("breadcrumbs"):
        mk_params["gamma"] = [0.03, 0.1]
        lists["gamma"] = [0.03, 0.1]
    expected = mergekit_merge(method, base, models, mk_params)
    got = ours(method, base, models, per_model(**lists), {"rescale": True})
    assert_parity(expected, got)


def test_base_listed_with_weight_is_ignored_like_mergekit():
    # mergekit binds weight/density to non-base inputs only: a weight given for the base (id 0)
    # neither adds a delta nor enters the normalization divisor.
    base, models = tie_free_models((20, 20), 2, seed=5)
    params = {"weight": {0: 5.0, 1: 0.6, 2: 0.9}, "density": {0: 0.1, 1: 0.5, 2: 0.7}}
    for name in ["ties", "task_arithmetic", "dare_ties"]:
        torch.manual_seed(0)
        expected = merge_tensors([base, *models], name, parameters=dict(params, normalize=True), base_index=0)
        got = ours(name, base, models, per_model(weight=[0.6, 0.9], density=[0.5, 0.7]), {"normalize": True},
                   torch.Generator().manual_seed(0))
        assert_parity(expected, got)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 1.0, 1.25])
def test_slerp(shape, t):
    g = torch.Generator().manual_seed(6)
    base = torch.randn(shape, generator=g)
    other = base + torch.randn(shape, generator=g)
    expected = mergekit_merge("slerp", base, [other], {"t": t})
    assert_parity(expected, ours("slerp", base, [other], [{}], {"t": t}))


@pytest.mark.parametrize("case", ["colinear", "antipodal", "zero"])
def test_slerp_degenerate(case):
    g = torch.Generator().manual_seed(7)
    base = torch.randn(10, 10, generator=g)
    other = {"colinear": 3 * base, "antipodal": -0.5 * base, "zero": torch.zeros(10, 10)}[case]
    for t in [0.2, 0.7]:
        expected = mergekit_merge("slerp", base, [other], {"t": t})
        assert_parity(expected, ours("slerp", base, [other], [{}], {"t": t}))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("filter_wise", [False, True])
@pytest.mark.parametrize("count", [2, 4])
def test_model_stock(shape, filter_wise, count):
    g = torch.Generator().manual_seed(8)
    base = torch.randn(shape, generator=g)
    shared = torch.randn(shape, generator=g)
    models = [base + shared + torch.randn(shape, generator=g) for _ in range(count)]
    expected = mergekit_merge("model_stock", base, models, {"filter_wise": filter_wise})
    got = ours("model_stock", base, models, [{}] * count, {"filter_wise": filter_wise})
    assert_parity(expected, got)


@pytest.mark.parametrize("with_base", [True, False])
@pytest.mark.parametrize("options", [{}, {"nuslerp_flatten": False}, {"nuslerp_flatten": False, "nuslerp_row_wise": True}])
def test_nuslerp(with_base, options):
    g = torch.Generator().manual_seed(9)
    base = torch.randn(12, 9, generator=g)
    models = [base + torch.randn(12, 9, generator=g) for _ in range(2)]
    weights = [0.3, 0.9]
    expected = mergekit_merge("nuslerp", base if with_base else None, models, {"weight": weights, **options})
    got = ours("nuslerp", base if with_base else None, models, per_model(weight=weights), options)
    assert_parity(expected, got)


def test_karcher():
    g = torch.Generator().manual_seed(10)
    models = [torch.randn(16, 8, generator=g) + 1 for _ in range(3)]
    expected = mergekit_merge("karcher", None, models, {})
    assert_parity(expected, ours("karcher", None, models, [{}] * 3, {}))


# ---------------------------------------------------------------- DARE and DELLA

RANDOM_CASES = [
    ("dare_linear", {}),
    ("dare_ties", {}),
    ("dare_ties", {"rescale": False, "normalize": True, "lambda": 0.8}),
    ("della", {}),
    ("della_linear", {"lambda": 1.4}),
    ("della", {"rescale": False, "normalize": False}),
]


@pytest.mark.parametrize("shape", [(30, 50), (77,), (4, 9, 11)])
@pytest.mark.parametrize(("method", "settings"), RANDOM_CASES)
def test_random_methods_same_stream_same_masks(method, settings, shape):
    # mergekit draws from torch's global generator; ours from an explicit one in the same state.
    base, models = tie_free_models(shape, 3, seed=11)
    weights = [0.7, 0.5, 0.4]
    densities = [0.5, 0.3, 0.7]
    lists = {"weight": weights, "density": densities}
    mk_params = {**lists, **settings}
    if method.startswith("della"):
        lists["epsilon"] = mk_params["epsilon"] = [0.1, 0.2, 0.15]
    torch.manual_seed(1234)
    expected = mergekit_merge(method, base, models, mk_params)
    got = ours(method, base, models, per_model(**lists), settings, torch.Generator().manual_seed(1234))
    assert_parity(expected, got)


@pytest.mark.parametrize("method", ["dare_linear", "della_linear"])
@pytest.mark.parametrize("rescale", [True, False])
def test_random_methods_statistical_agreement(method, rescale):
    # Independent seeds: the two tools must agree in keep rate and in the rescaled L1 norm.
    g = torch.Generator().manual_seed(12)
    base = torch.randn(200, 300, generator=g)
    model = base + 0.1 * torch.randn(200, 300, generator=g)
    density = 0.3
    params = {"weight": [1.0], "density": [density], "rescale": rescale}
    lists = {"weight": [1.0], "density": [density]}
    if method == "della_linear":
        params["epsilon"] = lists["epsilon"] = [0.2]
    stats = {"mergekit": [], "ours": []}
    for seed in range(5):
        torch.manual_seed(100 + seed)
        delta = mergekit_merge(method, base, [model], params) - base
        stats["mergekit"].append((float((delta != 0).float().mean()), float(delta.abs().sum())))
        delta = ours(method, base, [model], per_model(**lists), {"rescale": rescale},
                     torch.Generator().manual_seed(200 + seed)) - base
        stats["ours"].append((float((delta != 0).float().mean()), float(delta.abs().sum())))
    full_l1 = float((model - base).abs().sum())
    for tool, values in stats.items():
        rate = sum(v[0] for v in values) / len(values)
        l1 = sum(v[1] for v in values) / len(values)
        assert abs(rate - density) < 0.005, tool
        if rescale:
            assert math.isclose(l1, full_l1, rel_tol=1e-3), tool
        else:
            # DARE keeps a uniform 30%; DELLA favours large magnitudes, so keeps more L1 mass
            assert 0.29 * full_l1 < l1 < 0.6 * full_l1, tool
    mk_rate = sum(v[0] for v in stats["mergekit"]) / 5
    our_rate = sum(v[0] for v in stats["ours"]) / 5
    mk_l1 = sum(v[1] for v in stats["mergekit"]) / 5
    our_l1 = sum(v[1] for v in stats["ours"]) / 5
    assert abs(mk_rate - our_rate) < 0.004
    assert math.isclose(mk_l1, our_l1, rel_tol=0.01)
