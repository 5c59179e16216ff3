"""Learned merges: the differentiable merged model against independent formulas and `vlmmerge merge`.

Runs on the shipped miniature world (zoo:base, zoo:vlm, zoo:ja_lm: a LLaVA VLM and a Llama LM, ~1M
parameters each).
"""

from __future__ import annotations

import pytest
import torch

from tests.core_helpers import load_tensors
from vlmmerge.engine import run_merge
from vlmmerge.recipe import Recipe
from vlmmerge.search.evolve import resolve_refs
from vlmmerge.tune.functional import DifferentiableMerge
from vlmmerge.tune.losses import cross_entropy
from vlmmerge.tune.prompts import answer_ids, collate, encode_prompts, pad_id


def vlm_template(**update) -> Recipe:
    recipe = Recipe(merge_method="task_arithmetic", base_model="zoo:base",
                    models=[{"model": "zoo:vlm"}, {"model": "zoo:ja_lm"}], host="zoo:vlm", dtype="float32", seed=3)
    return resolve_refs(recipe).model_copy(update=update)


@pytest.fixture(scope="module")
def merge_layer():
    return DifferentiableMerge(vlm_template(), granularity="layer", scale=2.0)


def random_w(merge, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return merge.space.initial_w(0.7) + 0.3 * torch.randn(merge.space.shape, generator=generator)


def test_gradient_of_merged_params_matches_formula(merge_layer):
    """d/dw_ig of sum(R * theta) = scale * (1 - tanh(w_ig)^2) * sum over the group's tensors of <R, tau_i>."""
    merge = merge_layer
    w = random_w(merge).requires_grad_(True)
    params = merge.params(w)
    generator = torch.Generator().manual_seed(1)
    probes = {name: torch.randn(value.shape, generator=generator) for name, value in params.items()}
    sum((params[n] * probes[n]).sum() for n in params).backward()
    expected = torch.zeros(merge.space.shape, dtype=torch.float64)
    for item in merge.tensors:
        probe = probes[item.plan.name].double()
        if item.rows is not None:
            probe = probe.index_select(0, item.rows)
        for i, tau in enumerate(item.taus):
            expected[i, item.group] += (probe * tau.double()).sum()
    expected *= 2.0 * (1 - torch.tanh(w.detach().double()) ** 2)
    torch.testing.assert_close(w.grad.double(), expected, rtol=1e-4, atol=1e-4)


def test_loss_gradient_matches_finite_differences(merge_layer):
    from vlmmerge.evaluation import load_task

    merge = merge_layer
    task = load_task("ja_caption")
    prompts = encode_prompts(task, task.items("fitness", 4), merge.processor, "{symbols} ➡{reference}")
    batch = collate(prompts, [answer_ids(merge.processor, p.answer) for p in prompts], pad_id(merge.processor))
    labels = batch.pop("labels")

    def loss(w):
        return cross_entropy(merge.forward(w, batch).logits, labels)

    w = random_w(merge, seed=2).requires_grad_(True)
    loss(w).backward()
    h = 1e-2
    for index in [(0, 0), (1, 2), (1, merge.space.shape[1] - 1)]:
        with torch.no_grad():
            plus, minus = w.detach().clone(), w.detach().clone()
            plus[index] += h
            minus[index] -= h
            numeric = (loss(plus) - loss(minus)).item() / (2 * h)
        assert w.grad[index].item() == pytest.approx(numeric, rel=5e-2, abs=2e-3), index


@pytest.mark.parametrize("sparsify,granularity", [("none", "component"), ("dare", "layer"), ("ties", "tensor")])
def test_static_recipe_reproduces_learned_model_bit_for_bit(tmp_path, sparsify, granularity):
    """`vlmmerge merge best-recipe.yaml` writes exactly the tensors the learned model computes."""
    merge = DifferentiableMerge(vlm_template(), granularity=granularity, scale=2.0, sparsify=sparsify, density=0.6)
    w = random_w(merge, seed=5)
    learned = {name: value.detach() for name, value in merge.params(w).items()}
    recipe = merge.static_recipe(w)
    path = tmp_path / "best-recipe.yaml"
    path.write_text(recipe.to_yaml())
    run_merge(str(path), tmp_path / "out", overwrite=True, progress=False)
    written = load_tensors(tmp_path / "out")
    host = load_tensors(merge.live.host_path)
    for name, value in written.items():
        if name in learned:
            assert torch.equal(value, learned[name]), name
        else:  # not learned: vision tower, projector (the host's, untouched)
            assert torch.equal(value, host[name]), name
    assert set(learned) <= set(written)


def test_vlm_only_language_side_is_learned(merge_layer):
    merge = merge_layer
    names = set(merge.params(random_w(merge)))
    vision = [n for n in merge.model.state_dict() if "vision_tower" in n or "multi_modal_projector" in n]
    assert vision and not names & set(vision)
    assert any("language_model" in n for n in names)
    before = {n: merge.model.state_dict()[n].clone() for n in vision}
    merge.load(random_w(merge, seed=9))
    assert all(torch.equal(before[n], merge.model.state_dict()[n]) for n in vision)


def test_task_vectors_are_frozen_and_base_not_copied(merge_layer):
    merge = merge_layer
    w = random_w(merge).requires_grad_(True)
    merge.params(w)
    assert all(not tau.requires_grad for item in merge.tensors for tau in item.taus)
    base = merge.plan.base
    item = next(i for i in merge.tensors if i.rows is None)
    assert item.base.data_ptr() == base.lm_tensor(item.plan.lm_name).data_ptr()  # the cached source tensor itself
