"""`mask_generator: counter`: DARE / DELLA uniforms as a keyed hash of the element index.

The numbers are checked against the formula in plain Python integers, eager against compiled
against split over threads, for uniformity and independence (scipy.stats), and through recipes:
the key is recorded, a recipe without it keeps torch's generator, the engine's masks are the
formula's, and a live candidate is bit for bit the static merge of its recipe."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from scipy import stats

from core_helpers import load_tensors, make_world
from vlmmerge.engine import mask_generators_for, merge_tensor, plan_merge, run_merge
from vlmmerge.errors import RecipeError
from vlmmerge.live import LiveMerge
from vlmmerge.methods import counter_masks, fused, fused_runtime
from vlmmerge.methods.counter_masks import CounterUniforms, reference_uniform
from vlmmerge.methods.masks import DrawnUniforms, draw_uniforms, keep_below, mask_generators, mask_seed
from vlmmerge.recipe import load_recipe

SEEDS = [0, 1, 2**32 - 1, 2**32, mask_seed(3, "model.layers.0.mlp.up_proj.weight", 1), 2**63 - 1]


def _formula(seed: int, start: int, n: int) -> torch.Tensor:
    return torch.tensor([reference_uniform(seed, k) for k in range(start, start + n)], dtype=torch.float32)


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().view(torch.int32)


@pytest.mark.parametrize("seed", SEEDS)
def test_uniforms_are_the_formula_eager_compiled_and_in_parts(monkeypatch, seed):
    n, start = 3001, 2**31 - 1000  # the index crosses the int32 sign boundary
    expected = _bits(_formula(seed, start, n))
    monkeypatch.setenv(fused.MODE_ENV, "off")
    monkeypatch.setattr(counter_masks, "_CPU_CHUNK", 512)  # several eager steps, a tail
    eager = counter_masks.fill(torch.empty(n), seed, start)
    monkeypatch.setenv(fused.MODE_ENV, "on")
    monkeypatch.setenv(fused.MIN_ELEMENTS_ENV, "2")
    calls = fused.calls["uniforms"]
    compiled = counter_masks.fill(torch.empty(n), seed, start)
    assert fused.calls["uniforms"] == calls + 1
    monkeypatch.setattr(fused_runtime, "MIN_SPLIT_ELEMENTS", 64)
    with ThreadPoolExecutor(2) as helpers, fused.split_over(helpers, 2):
        parts = counter_masks.fill(torch.empty(n), seed, start)
    assert fused.calls["uniforms"] == calls + 4  # three parts
    for value in (eager, compiled, parts):
        assert torch.equal(_bits(value), expected)
    assert float(eager.min()) >= 0.0 and float(eager.max()) < 1.0


def test_a_stream_continues_across_draws_and_rewinds():
    seed = mask_seed(5, "t", 0)
    stream = CounterUniforms(seed)
    first, second = stream.next((7, 5)), stream.next((3,))
    assert first.shape == (7, 5) and stream.position == 38
    assert torch.equal(torch.cat([first.view(-1), second]), _formula(seed, 0, 38))
    assert torch.equal(stream.rewind().next((38,)), _formula(seed, 0, 38))
    kept = DrawnUniforms(seed, "counter")
    for _ in range(2):
        kept.rewind()
        assert torch.equal(kept.next((7, 5)), first) and torch.equal(kept.next((3,)), second)
    # draw_uniforms / keep_below take a counter stream like a generator, `out` filled in place
    out = torch.empty(7, 5)
    assert draw_uniforms((7, 5), CounterUniforms(seed), out=out) is out and torch.equal(out, first)
    low = keep_below((7, 5), 0.3, CounterUniforms(seed))
    high = keep_below((7, 5), 0.6, CounterUniforms(seed))
    assert torch.equal(low, (first < 0.3).float()) and bool((high >= low).all()) and high.sum() > low.sum()


def test_a_stream_past_two_to_the_32_uniforms_is_refused():
    with pytest.raises(ValueError, match=r"counter mask stream of seed 7: uniforms .* past its 4294967296"):
        counter_masks.fill(torch.empty(10), 7, 2**32 - 5)


def test_uniforms_are_uniform_and_independent_across_models_and_neighbours():
    n = 1 << 20
    streams = [counter_masks.fill(torch.empty(n), mask_seed(0, "model.layers.3.self_attn.q_proj.weight", m), 0)
               for m in (0, 1)]
    for u in streams:
        values = u.numpy().astype(np.float64)
        assert stats.kstest(values, "uniform").pvalue > 1e-4
        assert stats.chisquare(np.bincount((values * 256).astype(int), minlength=256)).pvalue > 1e-4
        pairs = (values[0::2] * 32).astype(int) * 32 + (values[1::2] * 32).astype(int)  # neighbours, 32 x 32 cells
        assert stats.chisquare(np.bincount(pairs, minlength=1024)).pvalue > 1e-4
        assert abs(stats.pearsonr(values[:-1], values[1:]).statistic) < 0.005
    a, b = (streams[0] < 0.5), (streams[1] < 0.5)
    assert abs(float((a == b).float().mean()) - 0.5) < 0.003  # two models' masks agree by chance only
    assert abs(float(a.float().mean()) - 0.5) < 0.003


def test_the_recipe_key_is_recorded_and_checked():
    base = {"merge_method": "dare_linear", "models": [{"model": "a"}, {"model": "b"}], "base_model": "c"}
    assert load_recipe(base).mask_generator == "torch"
    assert "mask_generator" not in load_recipe(base).to_yaml()  # old recipes stay what they were
    recipe = load_recipe({**base, "mask_generator": "counter"})
    assert "mask_generator: counter" in recipe.to_yaml()
    assert load_recipe(recipe.to_yaml()).mask_generator == "counter"
    with pytest.raises(RecipeError, match="mask_generator"):
        load_recipe({**base, "mask_generator": "philox"})
    with pytest.raises(ValueError, match="mask_generator 'philox'"):
        mask_generators(0, "t", [0], "philox")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("counter"))


def _dare_recipe(world, **extra):
    return {
        "merge_method": "dare_linear", "base_model": str(world["base"]), "dtype": "float32", "seed": 9,
        "models": [{"model": str(world["ft_a"]), "parameters": {"weight": 0.7, "density": 0.4}},
                   {"model": str(world["ft_b"]), "parameters": {"weight": 0.5, "density": 0.6}}],
        "parameters": {"rescale": False, "normalize": False}, **extra,
    }


def test_engine_masks_are_the_formulas_of_seed_tensor_and_model(world):
    plan = plan_merge(_dare_recipe(world, mask_generator="counter"))
    tensor = min((t for t in plan.tensors if t.merged and t.numel > 100), key=lambda t: t.numel)
    generators = mask_generators_for(plan, tensor)
    assert [g.seed for g in generators] == [mask_seed(9, tensor.name, i) for i in (0, 1)]
    base = plan.base.lm_tensor(tensor.lm_name).to(torch.float32)
    expected = base.clone()
    for i, (weight, density) in enumerate(((0.7, 0.4), (0.5, 0.6))):
        member = next(m for m in plan.members if m.index == i)
        tau = member.source.lm_tensor(tensor.lm_name).to(torch.float32) - base
        keep = (_formula(mask_seed(9, tensor.name, i), 0, tau.numel()) < density).view(tau.shape)
        expected += weight * (tau * keep)
    merged = merge_tensor(plan, tensor)
    torch.testing.assert_close(merged, expected, rtol=0, atol=1e-6)
    # a recipe without the key keeps torch's generator: other masks, the same as saying "torch"
    default, explicit = plan_merge(_dare_recipe(world)), plan_merge(_dare_recipe(world, mask_generator="torch"))
    torch_merged = merge_tensor(default, tensor)
    assert torch.equal(torch_merged, merge_tensor(explicit, tensor))
    assert not torch.equal(torch_merged, merged)


@pytest.mark.parametrize("method", ["dare_ties", "della", "dare_linear"])
def test_live_candidates_with_counter_masks_are_the_static_merge(world, tmp_path, method):
    refs = [str(world["base"]), str(world["vlm"]), str(world["ft_a"])]
    extra = {"epsilon": 0.05} if method == "della" else {}
    live = LiveMerge(refs, str(world["vlm"]), load_processor=False)
    for number, (densities, seed) in enumerate((((0.5, 0.3), 4), ((0.8, 0.6), 4), ((0.5, 0.3), 9))):
        recipe = load_recipe({
            "merge_method": method, "base_model": str(world["base"]), "dtype": "float32", "seed": seed,
            "mask_generator": "counter",
            "models": [{"model": str(world[name]), "parameters": {"weight": w, "density": d, **extra}}
                       for name, w, d in zip(("vlm", "ft_a"), (1.0, 0.6), densities)],
        })
        live.apply(recipe)
        out = run_merge(recipe, tmp_path / f"{method}-{number}", progress=False).out_dir
        assert "mask_generator: counter" in (out / "recipe.yaml").read_text()
        state = live.model.state_dict()
        for name, value in load_tensors(out).items():
            assert torch.equal(state[name], value), (number, name)
    assert live.mask_bytes > 0 and {key[3] for key in live._uniforms} == {"counter"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_counter_uniforms_on_cuda_are_the_cpu_numbers():
    seed, n = mask_seed(1, "t", 0), (1 << 20) + 3
    on_gpu = draw_uniforms((n,), CounterUniforms(seed), "cuda")
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), draw_uniforms((n,), CounterUniforms(seed), "cpu"))
