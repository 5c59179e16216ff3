"""Plans that are not one to one: a rewritten layer stack, written by the executor, loaded by transformers.

Each output tensor is checked against the tensor the plan says it reads (bit for bit for copies,
the linear formula for merges), and the config's layer count and per-layer fields against the
layers the stack takes.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from core_helpers import load_tensors, perturb
from vlmmerge.engine import MergeJob, StackedLayer, plan_job, stack_plan, write_merge
from vlmmerge.engine.layers import with_layer
from vlmmerge.errors import IncompatibleModelsError, RecipeError
from vlmmerge.testing.tiny import build_tiny_model, save_model


def _pair(root, family, **config):
    base = build_tiny_model(family, seed=5, **config)
    return (
        save_model(perturb(base, seed=31), root / f"{family}-a"),
        save_model(perturb(build_tiny_model(family, seed=5, **config), seed=32), root / f"{family}-b"),
    )


def _linear_job(a, b, wa=0.25, wb=0.75) -> MergeJob:
    return MergeJob.build({
        "merge_method": "linear",
        "models": [{"model": str(a), "parameters": {"weight": wa}}, {"model": str(b), "parameters": {"weight": wb}}],
        "dtype": "float32",
    }, progress=False)


@pytest.fixture(scope="module")
def llamas(tmp_path_factory):
    return _pair(tmp_path_factory.mktemp("llama"), "llama", num_hidden_layers=2)


def test_stack_of_merged_copied_and_scaled_layers_loads_with_the_planned_tensors(llamas, tmp_path):
    a, b = llamas
    job = _linear_job(a, b)
    plan = stack_plan(plan_job(job), [StackedLayer(1), StackedLayer(1, source=str(b), scale=0.5), StackedLayer(0, source=str(a))])
    write_merge(job, tmp_path / "out", plan=plan)

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")  # loads with no missing or unexpected keys
    assert model.config.num_hidden_layers == 3 and len(model.model.layers) == 3
    got, ta, tb = load_tensors(tmp_path / "out"), load_tensors(a), load_tensors(b)
    layer_names = [n for n in ta if ".layers.1." in n]
    assert layer_names
    for name in layer_names:
        merged = 0.25 * ta[name] + 0.75 * tb[name]
        torch.testing.assert_close(got[with_layer(name, 0)], merged, rtol=0, atol=1e-6)  # layer 0 <- merge of 1
        assert torch.equal(got[name], tb[name] * 0.5)  # layer 1 <- B's layer 1, scaled
        assert torch.equal(got[with_layer(name, 2)], ta[with_layer(name, 0)])  # layer 2 <- A's layer 0
    emb = "model.embed_tokens.weight"
    torch.testing.assert_close(got[emb], 0.25 * ta[emb] + 0.75 * tb[emb], rtol=0, atol=1e-6)
    assert not any(".layers.3." in n for n in got)
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_qwen2_sliding_window_layers_follow_the_layers_they_come_from(tmp_path):
    a, b = _pair(tmp_path, "qwen2", num_hidden_layers=4, use_sliding_window=True, max_window_layers=2, sliding_window=8)
    assert AutoConfig.from_pretrained(a).layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    job = _linear_job(a, b)
    layers = [StackedLayer(0), StackedLayer(1, source=str(b)), StackedLayer(3), StackedLayer(2, source=str(a)), StackedLayer(0)]
    write_merge(job, tmp_path / "out", plan=stack_plan(plan_job(job), layers))
    config = AutoConfig.from_pretrained(tmp_path / "out")
    assert config.num_hidden_layers == 5
    assert config.layer_types == ["full_attention", "full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    assert config.max_window_layers == 2
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert [layer.self_attn.sliding_window for layer in model.model.layers] == [None, None, 8, 8, None]


def test_gemma3_layer_types_and_an_untied_head_from_the_plan(tmp_path):
    a, b = _pair(tmp_path, "gemma3_text", num_hidden_layers=2)
    types = AutoConfig.from_pretrained(a).layer_types
    assert types == ["sliding_attention", "full_attention"] and AutoConfig.from_pretrained(a).tie_word_embeddings
    job = _linear_job(a, b)
    plan = stack_plan(plan_job(job), [StackedLayer(1), StackedLayer(1), StackedLayer(0, source=str(b))], head_from=str(b))
    write_merge(job, tmp_path / "out", plan=plan)
    config = AutoConfig.from_pretrained(tmp_path / "out")
    assert config.layer_types == ["full_attention", "full_attention", "sliding_attention"]
    assert config.num_hidden_layers == 3 and config.tie_word_embeddings is False
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tb = load_tensors(b)
    assert torch.equal(model.lm_head.weight, tb["model.embed_tokens.weight"])  # b is tied: its head is its embedding
    assert not torch.equal(model.model.embed_tokens.weight, model.lm_head.weight)


def test_bad_stacks_fail_before_writing_naming_the_layer_or_source(llamas, tmp_path):
    a, b = llamas
    plan = plan_job(_linear_job(a, b))
    with pytest.raises(RecipeError, match="reads layer 7"):
        stack_plan(plan, [StackedLayer(7)])
    with pytest.raises(RecipeError, match="not one of the recipe's models"):
        stack_plan(plan, [StackedLayer(0, source="elsewhere")])
    with pytest.raises(RecipeError, match="no layers"):
        stack_plan(plan, [])


def test_a_copied_layer_of_another_shape_is_refused(llamas, tmp_path):
    a, _ = llamas
    wide = save_model(build_tiny_model("llama", seed=5, num_hidden_layers=2, intermediate_size=24), tmp_path / "wide")
    job = MergeJob.build({"merge_method": "linear", "models": [{"model": str(a), "parameters": {"weight": 1.0}}],
                          "tokenizer_source": str(wide), "dtype": "float32"})
    with pytest.raises(IncompatibleModelsError, match=r"mlp\..*_proj\.weight.*has shape"):
        stack_plan(plan_job(job), [StackedLayer(0, source=str(wide))])
