"""passthrough (models form), nearswap, multislerp and sce: parity with mergekit 0.1.5's kernels
(float32, <= 1e-5), hand-computed values, and parameter checking; plus one `mergekit-yaml` recipe.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mergekit.merge_methods import merge_tensors

from core_helpers import load_tensors, perturb, write_recipe
from vlmmerge.engine import run_merge
from vlmmerge.errors import RecipeError
from vlmmerge.methods import get_method
from vlmmerge.methods.sce import sce_select_mask, sce_weights

torch.set_num_threads(1)
TOL = 1e-5
SHAPES = [(37,), (24, 40), (3, 10, 12)]
MERGEKIT = shutil.which("mergekit-yaml") or str(Path(sys.executable).parent / "mergekit-yaml")


def randn(shape, count, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) * scale for _ in range(count)]


def theirs(name, base, models, params):
    if base is None:
        return merge_tensors([t.clone() for t in models], name, parameters=params)
    return merge_tensors([base.clone(), *(t.clone() for t in models)], name, parameters=params, base_index=0)


def ours(name, base, models, model_params, global_params=None):
    return get_method(name).merge(base, models, model_params, global_params or {})


def max_diff(expected, got):
    assert expected.shape == got.shape
    return float((expected.float() - got.float()).abs().max())


# passthrough


@pytest.mark.parametrize("scale", [None, 1.0, 0.5, 0.0, -2.0])
def test_passthrough_parity(scale):
    (x,) = randn((24, 40), 1, seed=1)
    params = {} if scale is None else {"scale": [scale]}
    got = ours("passthrough", None, [x], [{} if scale is None else {"scale": scale}])
    assert max_diff(theirs("passthrough", None, [x], params), got) <= TOL
    assert torch.equal(got, x * (1.0 if scale is None else scale))


def test_passthrough_takes_one_model():
    x, y = randn((5,), 2, seed=2)
    with pytest.raises(RecipeError, match="exactly 1"):
        ours("passthrough", None, [x, y], [{}, {}])
    with pytest.raises(RecipeError, match="scale"):
        ours("passthrough", None, [x], [{"scale": "big"}])


# nearswap


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("t", [0.0, 0.001, 0.05, 0.3, 2.0])
def test_nearswap_parity(shape, t):
    base, noise = randn(shape, 2, seed=3)
    other = base + 0.1 * noise
    expected = theirs("nearswap", base, [other], {"t": t})
    assert max_diff(expected, ours("nearswap", base, [other], [{}], {"t": t})) <= TOL


def test_nearswap_by_hand():
    base = torch.tensor([0.0, 1.0, 2.0, 3.0])
    other = torch.tensor([0.05, 1.0, 2.5, 2.0])
    got = ours("nearswap", base, [other], [{}], {"t": 0.1})
    # |diff| 0.05 < t: swap; 0: swap (weight 1); 0.5: weight 0.2; 1.0: weight 0.1
    assert torch.allclose(got, torch.tensor([0.05, 1.0, 2.1, 2.9]), atol=1e-6)


def test_nearswap_needs_t_and_two_models():
    base, other, third = randn((6,), 3, seed=4)
    with pytest.raises(RecipeError, match="'t'"):
        ours("nearswap", base, [other], [{}])
    with pytest.raises(RecipeError, match="exactly 2"):
        ours("nearswap", base, [other, third], [{}, {}], {"t": 0.1})
    with pytest.raises(RecipeError, match="base_model"):
        ours("nearswap", None, [other, third], [{}, {}], {"t": 0.1})


# multislerp


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_base", [False, True])
@pytest.mark.parametrize("weights", [[0.6, 0.4], [0.2, 0.5, 0.3], [1.0, 2.0, 0.5, 0.7]])
@pytest.mark.parametrize("normalize_weights", [True, False])
def test_multislerp_parity(shape, with_base, weights, normalize_weights):
    base, *models = randn(shape, len(weights) + 1, seed=5)
    base = base if with_base else None
    expected = theirs("multislerp", base, models, {"weight": weights, "normalize_weights": normalize_weights})
    got = ours(
        "multislerp", base, models, [{"weight": w} for w in weights], {"normalize_weights": normalize_weights}
    )
    assert max_diff(expected, got) <= TOL


def test_multislerp_of_equal_norm_pair_is_slerp_midpoint():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    got = ours("multislerp", None, [a, b], [{"weight": 1.0}, {"weight": 1.0}])
    assert torch.allclose(got, torch.tensor([2**-0.5, 2**-0.5]), atol=1e-6)


def test_multislerp_antipodal():
    a = torch.tensor([1.0, 2.0, -1.0])
    pair = [{"weight": 0.5}, {"weight": 0.5}]
    expected = theirs("multislerp", None, [a, -a], {"weight": [0.5, 0.5]})
    got = ours("multislerp", None, [a, -a], pair)
    assert max_diff(expected, got) <= TOL and torch.allclose(got, torch.zeros(3))
    with pytest.raises(ValueError):
        theirs("multislerp", None, [a, -a, a, -a], {"weight": [0.25] * 4})
    with pytest.raises(RecipeError, match="zero"):
        ours("multislerp", None, [a, -a, a, -a], [{"weight": 0.25}] * 4)


def test_multislerp_one_model_and_missing_weight():
    base, x = randn((7,), 2, seed=6)
    assert torch.equal(ours("multislerp", base, [x], [{"weight": 0.3}]), x)
    with pytest.raises(RecipeError, match="'weight'"):
        ours("multislerp", None, [base, x], [{}, {}])


# sce


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("select_topk", [1.0, 0.7, 0.3, 0.05, 0.0])
def test_sce_parity(shape, count, select_topk):
    base, *models = randn(shape, count + 1, seed=7)
    expected = theirs("sce", base, models, {"select_topk": select_topk})
    got = ours("sce", base, models, [{}] * count, {"select_topk": select_topk, "int8_mask": True})
    assert max_diff(expected, got) <= TOL


def test_sce_by_hand():
    base = torch.zeros(4)
    a = torch.tensor([1.0, -2.0, 0.0, 3.0])
    b = torch.tensor([3.0, 1.0, 0.5, 3.0])
    deltas = torch.stack([a, b])
    # energies: mean square a = 14/4, b = 19.25/4 -> weights 14/33.25, 19.25/33.25
    assert torch.allclose(sce_weights(deltas), torch.tensor([14 / 33.25, 19.25 / 33.25]))
    # variances across models: 1, 2.25, 0.0625, 0 -> top half of the 3 nonzero = 1 entry (index 1)
    assert torch.equal(sce_select_mask(deltas, 0.5), torch.tensor([0.0, 1.0, 0.0, 0.0]))
    wa, wb = 14 / 33.25, 19.25 / 33.25
    # elected signs: +, -, +, +; index 1 keeps only a; index 2 only b
    expected = torch.tensor([(wa * 1 + wb * 3) / (wa + wb), -2.0, 0.5, 3.0])
    got = ours("sce", base, [a, b], [{}, {}])
    assert torch.allclose(got, expected, atol=1e-6)


def test_sce_rejects_unknown_and_bad_parameters():
    base, x = randn((5,), 2, seed=8)
    with pytest.raises(RecipeError, match="'weight'"):
        ours("sce", base, [x], [{"weight": 1.0}])
    with pytest.raises(RecipeError, match="select_topk"):
        ours("sce", base, [x], [{}], {"select_topk": "all"})


def test_defaults_match_mergekit():
    expected = {
        "passthrough": ({"scale": 1.0}, {}),
        "nearswap": ({}, {"t": None}),
        "multislerp": ({"weight": None}, {"normalize_weights": True, "eps": 1e-8}),
        "sce": ({}, {"int8_mask": False, "select_topk": 1.0}),
    }
    for name, (model_params, global_params) in expected.items():
        method = get_method(name)
        assert dict(method.model_params) == model_params and dict(method.global_params) == global_params


# end to end: the same recipe through mergekit-yaml and vlmmerge


def test_passthrough_recipe_with_scale_filter(tmp_path):
    from vlmmerge.testing.tiny import build_tiny_lm_for, save_model

    source = save_model(perturb(build_tiny_lm_for("llava", seed=1), seed=31), tmp_path / "a")
    recipe = {
        "merge_method": "passthrough",
        "models": [{"model": str(source), "parameters": {"scale": [{"filter": "o_proj", "value": 0}, {"value": 0.5}]}}],
        "dtype": "float32",
    }
    path = write_recipe(tmp_path / "passthrough.yaml", recipe)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [MERGEKIT, str(path), str(tmp_path / "mergekit"), "--no-cuda", "--quiet"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_merge(path, tmp_path / "vlmmerge", progress=False)
    expected, got, original = (load_tensors(p) for p in (tmp_path / "mergekit", tmp_path / "vlmmerge", source))
    assert set(got) == set(expected)
    assert max(max_diff(expected[n], got[n]) for n in expected) <= TOL
    o_proj = [n for n in got if "o_proj" in n]
    assert o_proj and all(not got[n].any() for n in o_proj)
    other = next(n for n in got if "o_proj" not in n and original[n].any())
    assert torch.equal(got[other], original[other] * 0.5)
