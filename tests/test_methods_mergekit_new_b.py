"""mergekit 0.1.5's arcee_fusion, ram and ramplus_tl (parity with its kernels and with mergekit-yaml),
and recipe parameters that mergekit accepts but the chosen method ignores (issue 13, items 1-2)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mergekit.merge_methods import merge_tensors

from core_helpers import load_tensors, write_recipe
from vlmmerge.engine import run_merge
from vlmmerge.errors import RecipeError
from vlmmerge.methods import get_method
from vlmmerge.methods.arcee_fusion import fusion_threshold
from vlmmerge.testing.tiny import build_tiny_lm_for, save_model

torch.set_num_threads(1)
TOL = 1e-5
MERGEKIT = shutil.which("mergekit-yaml") or str(Path(sys.executable).parent / "mergekit-yaml")


def sparse_models(shape, count, seed, keep=0.4):
    """A base and `count` models, each changing a random ~`keep` share of the entries, so that
    some entries are changed by one model only and some by several (RAM's two cases)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    models = [base + torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < keep) for _ in range(count)]
    return base, models


def theirs(name, base, models, params=None):
    return merge_tensors([base, *models], name, parameters=params or {}, base_index=0)


def ours(name, base, models, params=None):
    return get_method(name).merge(base, models, [{}] * len(models), params or {})


# ------------------------------------------------------------ kernel parity

RAM_CASES = [
    ("ram", {}),
    ("ram", {"epsilon": 0.3}),
    ("ramplus_tl", {}),
    ("ramplus_tl", {"r": 0.7, "alpha": 5.0}),  # alpha large: rho is not clamped
    ("ramplus_tl", {"r": 0.5, "alpha": 0.05, "epsilon": 0.2}),
]


@pytest.mark.parametrize(("name", "params"), RAM_CASES)
@pytest.mark.parametrize(("shape", "count"), [((7, 5), 1), ((16, 9), 3), ((33,), 4)])
def test_ram_matches_mergekit_kernel(name, params, shape, count):
    base, models = sparse_models(shape, count, seed=count)
    got, expected = ours(name, base, models, params), theirs(name, base, models, params)
    assert (got - expected).abs().max().item() <= TOL
    assert not torch.equal(got, base)


def test_ram_independent_formula():
    # Entry 0: model 0 only -> its delta; entry 1: both -> mean; entry 2: neither -> base.
    base = torch.zeros(3)
    a, b = torch.tensor([2.0, 1.0, 0.0]), torch.tensor([0.0, 3.0, 0.0])
    assert torch.equal(get_method("ram").merge(base, [a, b], [{}, {}], {}), torch.tensor([2.0, 2.0, 0.0]))
    # RAM+: model 0 has 1 shared, 1 unique entry -> rho = 1, clamped to alpha = 0.2 -> scale 1.02.
    got = get_method("ramplus_tl").merge(base, [a, b], [{}, {}], {})
    torch.testing.assert_close(got, torch.tensor([2.0 * (1 + 0.1 * 0.2), 2.0, 0.0]), rtol=0, atol=1e-7)


def test_ram_defaults_are_mergekits():
    assert dict(get_method("ram").global_params) == {"epsilon": 1e-5}
    assert dict(get_method("ramplus_tl").global_params) == {"r": 0.1, "alpha": 0.2, "epsilon": 1e-5}
    assert dict(get_method("arcee_fusion").global_params) == {}
    with pytest.raises(RecipeError, match="epsilon"):
        ours("ram", *sparse_models((4,), 2, 0), {"epsilon": -1.0})


@pytest.mark.parametrize(("shape", "seed"), [((8, 6), 0), ((64, 32), 1), ((50,), 2), ((3, 4, 5), 3)])
def test_arcee_fusion_matches_mergekit_kernel(shape, seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    other = base + torch.randn(shape, generator=g) * torch.rand(shape[:-1] + (1,), generator=g)
    got, expected = ours("arcee_fusion", base, [other]), theirs("arcee_fusion", base, [other])
    assert (got - expected).abs().max().item() <= TOL
    took = got == other
    assert took.any() and not took.all()  # the fence really splits the entries


def test_fusion_threshold_is_the_outlier_fence():
    scores = torch.arange(9.0).flip(0)  # sorted 0..8: q1 = 2, median = 4, q3 = 6
    assert fusion_threshold(scores).item() == 4 + 1.5 * (6 - 2)


def test_arcee_fusion_takes_exactly_one_model():
    base, models = sparse_models((4, 4), 2, 0)
    with pytest.raises(RecipeError, match="exactly 2"):
        ours("arcee_fusion", base, models)


# ------------------------------------------------------------ recipe parity (mergekit-yaml)


def _sparse_perturb(model, seed, keep=0.4, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=g) * scale * (torch.rand(param.shape, generator=g) < keep))
    return model


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity_b")
    paths = {"base": save_model(build_tiny_lm_for("llava", seed=1), root / "base")}
    for name, seed in (("a", 31), ("b", 32)):
        paths[name] = save_model(_sparse_perturb(build_tiny_lm_for("llava", seed=1), seed), root / name)
    return {k: str(v) for k, v in paths.items()}


def _recipe(m, method, models, parameters=None):
    recipe = {"merge_method": method, "base_model": m["base"], "models": [{"model": m[x]} for x in models], "dtype": "float32"}
    if parameters:
        recipe["parameters"] = parameters
    return recipe


RECIPE_CASES = {
    "arcee_fusion": ("arcee_fusion", ["a"], None),
    "ram": ("ram", ["a", "b"], None),
    "ramplus_tl": ("ramplus_tl", ["a", "b"], {"r": 0.4, "alpha": [0.1, 3.0]}),
}


@pytest.mark.parametrize("case", sorted(RECIPE_CASES))
def test_same_tensors_as_mergekit_yaml(case, lms, tmp_path):
    method, models, parameters = RECIPE_CASES[case]
    path = write_recipe(tmp_path / f"{case}.yaml", _recipe(lms, method, models, parameters))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [MERGEKIT, str(path), str(tmp_path / "mergekit"), "--no-cuda", "--quiet", "--random-seed", "0"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_merge(path, tmp_path / "vlmmerge", progress=False)
    expected, got = load_tensors(tmp_path / "mergekit"), load_tensors(tmp_path / "vlmmerge")
    assert set(got) == set(expected)
    worst = max((got[n].float() - expected[n].float()).abs().max().item() for n in expected)
    assert worst <= TOL, f"{case}: max abs difference {worst}"
    base = load_tensors(Path(lms["base"]))
    assert any(not torch.equal(got[n], base[n]) for n in got)


# ------------------------------------------------------------ parameters mergekit accepts


def _slerp(m, **model_params):
    return {
        "merge_method": "slerp", "base_model": m["base"], "dtype": "float32", "parameters": {"t": 0.3},
        "models": [{"model": m["base"], "parameters": model_params}, {"model": m["a"], "parameters": model_params}],
    }


def test_slerp_with_weights_merges_and_notes_them(lms, tmp_path):
    plain = run_merge(_slerp(lms), tmp_path / "plain", progress=False)
    weighted = run_merge(_slerp(lms, weight=0.5, density=0.7), tmp_path / "weighted", progress=False)
    assert not any("ignored" in note for note in plain.notes)
    ignored = [note for note in weighted.notes if "ignored" in note]
    assert any("'weight'" in note and "models[1]" in note for note in ignored)
    assert any("'density'" in note for note in ignored)
    a, b = load_tensors(tmp_path / "plain"), load_tensors(tmp_path / "weighted")
    assert all(torch.equal(a[n], b[n]) for n in a)  # ignored means ignored


def test_global_parameter_of_another_method_is_ignored(lms, tmp_path):
    recipe = _recipe(lms, "ram", ["a", "b"], {"epsilon": 1e-3, "normalize": True, "int8_mask": True})
    result = run_merge(recipe, tmp_path / "out", progress=False)
    assert [n for n in result.notes if "ignored" in n] == [
        "parameters.normalize: merge_method ram does not use parameter 'normalize'; ignored",
        "parameters.int8_mask: merge_method ram does not use parameter 'int8_mask'; ignored",
    ]


@pytest.mark.parametrize(
    ("method", "where", "typo", "suggestion"),
    [("slerp", "model", "densty", "density"), ("ties", "model", "wieght", "weight"), ("ties", "global", "lamda", "lambda")],
)
def test_unknown_parameter_is_an_error_with_a_suggestion(lms, tmp_path, method, where, typo, suggestion):
    recipe = _slerp(lms) if method == "slerp" else _recipe(lms, "ties", ["a", "b"])
    if method == "ties":
        recipe["models"][0]["parameters"] = {"weight": 1.0}
        recipe["models"][1]["parameters"] = {"weight": 1.0}
    if where == "model":
        recipe["models"][1]["parameters"][typo] = 0.5
    else:
        recipe["parameters"] = {typo: 0.5}
    with pytest.raises(RecipeError, match=rf"{typo}.*did you mean '{suggestion}'\?"):
        run_merge(recipe, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
