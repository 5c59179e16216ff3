"""DARE / DELLA masks as common random numbers: one generator per (seed, tensor, model), drawn on the CPU."""

from __future__ import annotations

import pytest
import torch

from core_helpers import perturb
from vlmmerge.engine import mask_generators_for, merge_tensor, plan_merge
from vlmmerge.methods import dare_linear, dare_sparsify, della_linear, draw_uniforms, mask_generators, mask_seed
from vlmmerge.testing.tiny import build_tiny_lm_for, save_model


def _inputs(shape=(40, 30), seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + torch.randn(shape, generator=g) for _ in range(2)]


def _kept_of_second(method, density_first, density_second, generators, **kwargs):
    """Which entries of the second model's delta survive: the first model has weight 0."""
    base, (first, second) = _inputs()
    merged = method(base, [first, second], [0.0, 1.0], [density_first, density_second], generator=generators,
                    rescale=False, **kwargs)
    return merged != base


@pytest.mark.parametrize(("method", "kwargs"), [(dare_linear, {}), (della_linear, {"epsilons": [0.05, 0.05]})])
def test_a_models_mask_ignores_the_other_models_density(method, kwargs):
    masks = [
        _kept_of_second(method, density, 0.4, mask_generators(3, "t", [0, 1]), **kwargs)
        for density in (0.2, 0.7, 1.0)  # 1.0 draws nothing for the first model
    ]
    assert 0.3 < masks[0].float().mean() < 0.5
    assert all(torch.equal(masks[0], m) for m in masks[1:])
    # One generator shared in model order (mergekit's stream) is what this guards against.
    shared = [_kept_of_second(method, d, 0.4, torch.Generator().manual_seed(3), **kwargs) for d in (0.2, 1.0)]
    assert not torch.equal(shared[0], shared[1])


@pytest.mark.parametrize(("method", "kwargs"), [(dare_linear, {}), (della_linear, {"epsilons": [0.05, 0.05]})])
def test_a_higher_density_keeps_a_superset(method, kwargs):
    kept = [_kept_of_second(method, 0.5, d, mask_generators(5, "t", [0, 1]), **kwargs) for d in (0.2, 0.5, 0.8)]
    counts = [int(k.sum()) for k in kept]
    assert counts[0] < counts[1] < counts[2]
    for low, high in zip(kept, kept[1:]):
        assert not (low & ~high).any()


def test_mask_seeds_depend_on_seed_tensor_and_model_only():
    seeds = {mask_seed(s, t, m) for s in (0, 1) for t in ("a.weight", "b.weight") for m in (0, 1)}
    assert len(seeds) == 8
    assert mask_seed(0, "a.weight", 1) == mask_seed(0, "a.weight", 1)
    assert all(0 <= s < 2**63 for s in seeds)
    generators = mask_generators(0, "a.weight", [2, 0])
    assert all(g.device == torch.device("cpu") for g in generators)
    expected = torch.rand(5, generator=torch.Generator().manual_seed(mask_seed(0, "a.weight", 2)))
    assert torch.equal(torch.rand(5, generator=generators[0]), expected)


def test_uniforms_are_drawn_on_the_generators_device_whatever_the_target():
    """A CPU generator feeding a `meta` (stand-in for cuda) target draws exactly the CPU numbers."""
    on_cpu, elsewhere = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    reference = draw_uniforms((6, 7), on_cpu, "cpu")
    moved = draw_uniforms((6, 7), elsewhere, "meta")
    assert moved.device.type == "meta" and moved.dtype == torch.float32
    assert torch.equal(on_cpu.get_state(), elsewhere.get_state())  # same stream consumed on the CPU
    assert torch.equal(reference, torch.rand((6, 7), generator=torch.Generator().manual_seed(11)))
    # the sparsifier accepts a delta on another device than its generator
    delta = torch.empty((6, 7), device="meta")
    assert dare_sparsify(delta, 0.5, torch.Generator().manual_seed(1), rescale_norm=None).device.type == "meta"


# --------------------------------------------------------------------------------------------
# Through the engine: recipes, per-layer parameters, plan order


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    root = tmp_path_factory.mktemp("masks")
    paths = {"base": save_model(build_tiny_lm_for("llava", seed=1), root / "base")}
    for name, seed in (("a", 41), ("b", 42)):
        paths[name] = save_model(perturb(build_tiny_lm_for("llava", seed=1), seed=seed), root / name)
    return paths


def _recipe(lms, density_b, density_a=0.4, order=("b", "a")):
    params = {"b": {"weight": 0.0, "density": density_b}, "a": {"weight": 1.0, "density": density_a}}
    return {
        "merge_method": "dare_linear",
        "base_model": str(lms["base"]),
        "models": [{"model": str(lms[n]), "parameters": params[n]} for n in order],
        "parameters": {"rescale": False},
        "dtype": "float32",
        "seed": 9,
    }


def _kept_of_a(lms, **kwargs) -> dict[str, torch.Tensor]:
    plan = plan_merge(_recipe(lms, **kwargs))
    base = {t.name: plan.base.lm_tensor(t.lm_name) for t in plan.tensors if t.merged}
    return {t.name: merge_tensor(plan, t) != base[t.name] for t in plan.tensors if t.merged}


def test_engine_masks_of_one_model_ignore_another_models_density(lms):
    reference = _kept_of_a(lms, density_b=0.3)
    for density_b in (0.8, 1.0):
        other = _kept_of_a(lms, density_b=density_b)
        assert all(torch.equal(reference[n], other[n]) for n in reference)
    rate = sum(int(k.sum()) for k in reference.values()) / sum(k.numel() for k in reference.values())
    assert 0.35 < rate < 0.45


def test_engine_masks_follow_the_models_position_and_grow_with_density(lms):
    low, high = _kept_of_a(lms, density_b=0.3), _kept_of_a(lms, density_b=0.3, density_a=0.7)
    assert all(not (low[n] & ~high[n]).any() for n in low)
    # Model a listed first instead of second: another seed, so (almost surely) another mask.
    moved = _kept_of_a(lms, density_b=0.3, order=("a", "b"))
    assert not all(torch.equal(low[n], moved[n]) for n in low)


def test_engine_mask_generators_are_on_the_cpu_for_any_device(lms):
    recipe = _recipe(lms, density_b=0.5)
    recipe["options"] = {"device": "cuda"}
    plan = plan_merge(recipe)
    tensor = next(t for t in plan.tensors if t.merged)
    generators = mask_generators_for(plan, tensor)
    assert [g.device.type for g in generators] == ["cpu", "cpu"]
    assert [m.index for m in plan.members] == [0, 1]
