"""The layer-path runtime and its export: paths of shared layers with per-hop scales, a KV slot per
hop, and the exported plain checkpoint (scales folded into o_proj / down_proj) giving the same logits.

Independent references: the runtime's logits are checked against a hand-written forward pass
(embeddings -> each hop's layer on scale * h -> final norm -> head); generation with the cache
against generation without it (full recomputation every step), batched with padding.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from core_helpers import perturb
from vlmmerge.dataflow.export import PathHop, export_path
from vlmmerge.dataflow.runtime import HopSpec, LayerPath, check_reorderable, language_model, load_layer_path
from vlmmerge.errors import RecipeError
from vlmmerge.testing.tiny import build_tiny_lm_for, build_tiny_model, save_model, smoke_inputs, tiny_processor

# a path that repeats layers (each repeat its own KV slot), mixes sources and scales every hop
HOPS = [(0, 0, 1.3), (1, 1, 0.8), (0, 0, 1.1), (1, 0, 1.0), (0, 1, 0.7)]


def _pair(root, family, vlm=False):
    if vlm:
        a = build_tiny_model(family, seed=3)
        b = perturb(build_tiny_lm_for(family, seed=4), seed=9)
        with torch.no_grad():  # hidden states of a realistic size (see below), image features included
            for model in (a, b):
                model.get_input_embeddings().weight.mul_(10)
            a.model.multi_modal_projector.linear_2.weight.mul_(10)
            a.model.multi_modal_projector.linear_2.bias.mul_(10)
        return save_model(a, root / "a", processor=tiny_processor(family)), save_model(b, root / "b")
    models = [perturb(build_tiny_model(family, seed=3, num_hidden_layers=2), seed=s) for s in (1, 2)]
    for model in models:  # hidden states of a realistic size: folding is exact up to the norms' eps (1e-6)
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(10)
    return save_model(models[0], root / "a"), save_model(models[1], root / "b")


def _hops(path: LayerPath):
    return [HopSpec(s, l, c) for s, l, c in HOPS]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def lm_path(request, tmp_path_factory):
    a, b = _pair(tmp_path_factory.mktemp(request.param), request.param)
    runtime = load_layer_path([str(a), str(b)], dtype=torch.float32)
    runtime.set_path(_hops(runtime))
    return request.param, a, b, runtime


def _manual_logits(runtime: LayerPath, input_ids: torch.Tensor) -> torch.Tensor:
    """Embeddings -> each hop's layer module on scale * h -> norm -> head, without the runtime's model forward."""
    lm = runtime.lm
    h = lm.embed_tokens(input_ids)
    position_ids = torch.arange(input_ids.shape[1])[None]
    rope = lm.rotary_emb(h, position_ids=position_ids)
    mask = torch.full((input_ids.shape[1],) * 2, float("-inf")).triu(1)[None, None]
    for hop in runtime.path:
        layer = runtime.layers[hop.source][hop.layer]
        out = layer(h * hop.scale, attention_mask=mask, position_embeddings=rope, position_ids=position_ids)
        h = out[0] if isinstance(out, tuple) else out
    return runtime.model.lm_head(lm.norm(h))


def test_runtime_runs_the_path_of_shared_layers(lm_path):
    _, _, _, runtime = lm_path
    ids = torch.tensor([[1, 5, 9, 4, 7, 3]])
    with torch.no_grad():
        got = runtime.model(input_ids=ids).logits
        expected = _manual_logits(runtime, ids)
    # the runtime runs the folded form (the exported checkpoint's arithmetic): equal up to the norms' eps
    assert runtime.foldable and all(hop.fold is not None for hop in runtime.lm.layers)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    assert len(runtime.lm.layers) == len(HOPS) and runtime.text_config.num_hidden_layers == len(HOPS)
    assert runtime.lm.layers[0].layer is runtime.lm.layers[2].layer  # shared, not copied


def test_generation_with_cache_equals_without_batched(lm_path):
    _, _, _, runtime = lm_path
    ids = torch.tensor([[0, 0, 5, 9, 4], [1, 6, 2, 8, 3]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        cached = runtime.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6,
                                        do_sample=False, use_cache=True, pad_token_id=0)
        plain = runtime.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6,
                                       do_sample=False, use_cache=False, pad_token_id=0)
        single = runtime.model.generate(input_ids=ids[1:], max_new_tokens=6, min_new_tokens=6, do_sample=False,
                                        pad_token_id=0)
    assert torch.equal(cached, plain)
    assert torch.equal(cached[1:], single)  # batched as alone


def test_export_matches_runtime_logits_and_loads_as_plain_checkpoint(lm_path, tmp_path):
    family, a, b, runtime = lm_path
    refs = [str(a), str(b)]
    export_path([PathHop(refs[s], l, c) for s, l, c in HOPS], tmp_path / "out", host=str(a), dtype="float32")
    config = AutoConfig.from_pretrained(tmp_path / "out")
    assert config.num_hidden_layers == len(HOPS)
    if family == "qwen2":
        assert len(config.layer_types) == len(HOPS)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.tensor([[1, 5, 9, 4, 7, 3, 2, 8]])
    with torch.no_grad():
        # within 1e-4 (the bound); in fact float rounding only: W x / P against (W / P) x
        torch.testing.assert_close(model(input_ids=ids).logits, runtime.model(input_ids=ids).logits, rtol=0, atol=1e-5)


def test_vlm_path_with_image_prompt_and_export(tmp_path):
    a, b = _pair(tmp_path, "llava", vlm=True)
    runtime = load_layer_path([str(a), str(b)], dtype=torch.float32)
    runtime.set_path([HopSpec(s, l, c) for s, l, c in HOPS])
    inputs = smoke_inputs("llava", runtime.processor)
    refs = [str(a), str(b)]
    export_path([PathHop(refs[s], l, c) for s, l, c in HOPS], tmp_path / "out", host=str(a), dtype="float32")
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    assert model.config.text_config.num_hidden_layers == len(HOPS)
    with torch.no_grad():
        got = runtime.model(**inputs).logits
        torch.testing.assert_close(model(**inputs).logits, got, rtol=0, atol=1e-5)
        cached = runtime.model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        plain = runtime.model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, plain)


def test_bad_paths_and_unfoldable_exports_are_refused(lm_path, tmp_path):
    _, a, b, runtime = lm_path
    with pytest.raises(RecipeError, match="no layers"):
        runtime.set_path([])
    with pytest.raises(RecipeError, match="hop 1 reads layer 5"):
        runtime.set_path([HopSpec(0, 0), HopSpec(1, 5)])
    with pytest.raises(RecipeError, match="hop 0 .* scale 0.0"):
        export_path([PathHop(str(a), 0, 0.0)], tmp_path / "x", host=str(a))
    with pytest.raises(RecipeError, match="hop 1 .* scale -0.5"):
        export_path([PathHop(str(a), 0), PathHop(str(b), 1, -0.5)], tmp_path / "x", host=str(a))
    assert not (tmp_path / "x").exists()
    gemma = save_model(build_tiny_model("gemma3_text", seed=1, num_hidden_layers=2), tmp_path / "g")
    with pytest.raises(RecipeError, match="gemma3_text: post-attention"):
        export_path([PathHop(str(gemma), 0, 1.5)], tmp_path / "y", host=str(gemma))
    runtime.set_path(_hops(runtime))


def test_families_that_inject_by_layer_position_are_refused():
    from transformers import Qwen3VLConfig

    with pytest.raises(RecipeError, match="deepstack"):
        check_reorderable(Qwen3VLConfig(), "qwen3-vl")


def test_language_model_is_found_in_lm_and_vlm():
    lm = build_tiny_model("llama", seed=0)
    assert language_model(lm) is lm.model
    vlm = build_tiny_model("llava", seed=0)
    assert language_model(vlm) is vlm.model.language_model
