"""The tiny-model factory: configs, models, matching causal LMs, tokenizers and processors of every family
(saving and loading: test_tiny_layouts.py)."""

from __future__ import annotations

import pytest
import torch
import transformers

from tiny_helpers import assert_same_state_dict, greedy_new_tokens
from vlmmerge.errors import UnsupportedArchitectureError
from vlmmerge.testing import (
    FAMILIES,
    LM_FAMILIES,
    MODEL_CLASS_NAMES,
    VLM_FAMILIES,
    added_token_id,
    build_tiny_lm_for,
    build_tiny_model,
    finetune_like,
    generate_smoke,
    load_model,
    matching_lm_config,
    smoke_image,
    smoke_inputs,
    tiny_config,
    tiny_processor,
    tiny_tokenizer,
)

EXPECTED_LM_CLASS = {
    "llava": "LlamaForCausalLM",
    "llava_next": "MistralForCausalLM",
    "llava_onevision": "Qwen2ForCausalLM",
    "qwen2_vl": "Qwen2ForCausalLM",
    "qwen2_5_vl": "Qwen2ForCausalLM",
    "qwen3_vl": "Qwen3ForCausalLM",
    "idefics3": "LlamaForCausalLM",
    "smolvlm": "LlamaForCausalLM",
    "paligemma": "GemmaForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "mistral3": "MistralForCausalLM",
    "internvl": "Qwen2ForCausalLM",
}

LANGUAGE_PREFIXES = ("model.language_model.", "model.text_model.")


def language_side(vlm: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The VLM's language tensors under standalone causal-LM names."""
    out = {}
    for name, tensor in vlm.state_dict().items():
        for prefix in LANGUAGE_PREFIXES:
            if name.startswith(prefix):
                out["model." + name[len(prefix):]] = tensor
        if name.startswith("lm_head."):
            out[name] = tensor
    return out


# ---------------------------------------------------------------------------------------------
# configs


@pytest.mark.parametrize("family", FAMILIES)
def test_config_is_tiny_deterministic_and_consistent(family):
    config = tiny_config(family)
    assert config.to_dict() == tiny_config(family).to_dict()
    assert config.architectures == [MODEL_CLASS_NAMES[family]]
    text = config.get_text_config()
    assert 32 <= text.hidden_size <= 64
    assert text.num_hidden_layers == 2
    assert len(tiny_tokenizer(family)) <= text.vocab_size
    if family != "paligemma":  # PaliGemma's vocabulary holds its 1152 <loc>/<seg> tokens
        assert 300 <= text.vocab_size <= 600
    if family in VLM_FAMILIES:
        vision = config.vision_config
        assert getattr(vision, "num_hidden_layers", getattr(vision, "depth", None)) in (1, 2)
        image_token = getattr(config, "image_token_index", None) or config.image_token_id
        assert image_token < text.vocab_size
    rope = getattr(text, "rope_parameters", None) or {}
    if "mrope_section" in rope:
        assert sum(rope["mrope_section"]) == text.head_dim // 2


def test_overrides_reach_sub_configs_and_derived_values():
    config = tiny_config("qwen2_vl", text_config={"head_dim": 32, "hidden_size": 128, "num_hidden_layers": 3})
    assert config.text_config.num_hidden_layers == 3
    assert sum(config.text_config.rope_parameters["mrope_section"]) == 16
    assert config.vision_config.hidden_size == 128  # the merger writes the LM width
    paligemma = tiny_config("paligemma", text_config={"hidden_size": 48})
    assert paligemma.projection_dim == 48
    assert tiny_config("llama", num_hidden_layers=4).num_hidden_layers == 4
    assert tiny_config("mistral3", tie_word_embeddings=False).tie_word_embeddings is False
    with pytest.raises(KeyError, match="unknown tiny family"):
        tiny_config("not_a_family")


def test_build_is_seeded_float32_eval_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_tiny_model("llava", seed=0)
    assert torch.equal(torch.rand(1), before)
    b = build_tiny_model("llava", seed=0)
    c = build_tiny_model("llava", seed=1)
    assert not a.training
    assert all(p.dtype == torch.float32 for p in a.parameters())
    assert_same_state_dict(a, b)
    name = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(a.state_dict()[name], c.state_dict()[name])


# ---------------------------------------------------------------------------------------------
# matching causal LMs


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_matching_lm_has_the_language_side_names_shapes_and_function(family):
    vlm = build_tiny_model(family)
    lm_config = matching_lm_config(vlm.config)
    assert "mrope_section" not in (lm_config.rope_parameters or {})
    lm = build_tiny_lm_for(family)
    assert type(lm).__name__ == EXPECTED_LM_CLASS[family] == lm_config.architectures[0]
    vlm_language = language_side(vlm)
    lm_state = lm.state_dict()
    assert sorted(vlm_language) == sorted(lm_state)
    assert {k: v.shape for k, v in vlm_language.items()} == {k: v.shape for k, v in lm_state.items()}
    assert lm.config.tie_word_embeddings == vlm.config.tie_word_embeddings

    # With the VLM's language weights, the LM computes what the VLM computes on text alone.
    lm.load_state_dict(vlm_language, strict=True)
    ids = torch.tensor([[1, 40, 77, 101, 150, 200, 33]])
    # PaliGemma attends bidirectionally over its prefix; token_type_ids=1 marks causal (suffix) text.
    extra = {"token_type_ids": torch.ones_like(ids)} if family == "paligemma" else {}
    with torch.no_grad():
        torch.testing.assert_close(lm(input_ids=ids).logits, vlm(input_ids=ids, **extra).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "config_class",
    ["LlavaNextConfig", "Qwen2VLConfig", "Qwen3VLConfig", "Idefics3Config", "Gemma3Config", "Mistral3Config"],
)
def test_matching_lm_config_for_full_size_default_configs(config_class):
    vlm_config = getattr(transformers, config_class)()
    text = vlm_config.get_text_config()
    lm_config = matching_lm_config(vlm_config)
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "vocab_size"):
        assert getattr(lm_config, field) == getattr(text, field), field
    assert "mrope_section" not in (lm_config.rope_parameters or {})
    assert lm_config.tie_word_embeddings == vlm_config.tie_word_embeddings


def test_matching_lm_config_rejects_text_only_and_unknown_configs():
    with pytest.raises(UnsupportedArchitectureError, match="not a VLM"):
        matching_lm_config(tiny_config("llama"))
    with pytest.raises(UnsupportedArchitectureError, match="chameleon"):
        matching_lm_config(transformers.LlavaConfig(text_config={"model_type": "chameleon"}))


def test_lm_for_vlm_with_fewer_vocabulary_rows(tiny_lm_dir_for):
    lm = build_tiny_lm_for("llava_next", vocab_size=300)
    vlm = build_tiny_model("llava_next")
    assert lm.get_input_embeddings().weight.shape == (300, vlm.config.text_config.hidden_size)
    assert vlm.get_input_embeddings().weight.shape[0] == 320
    folder = tiny_lm_dir_for("llava_next", vocab_size=300)
    assert_same_state_dict(lm, load_model(folder))
    assert generate_smoke(folder).shape == (1, 3)
    with pytest.raises(KeyError, match="not a VLM family"):
        build_tiny_lm_for("llama")


# ---------------------------------------------------------------------------------------------
# fine-tune stand-ins, tokenizers


def test_finetune_like_is_seeded_noise_on_a_copy():
    base = build_tiny_model("gemma3")
    snapshot = {k: v.clone() for k, v in base.state_dict().items()}
    a, a_again, b = finetune_like(base, seed=7), finetune_like(base, seed=7), finetune_like(base, seed=8)
    for name, tensor in base.state_dict().items():
        assert torch.equal(tensor, snapshot[name])
    assert_same_state_dict(a, a_again)
    deltas = []
    for name, param in base.named_parameters():
        tuned, other = a.get_parameter(name), b.get_parameter(name)
        assert not torch.equal(tuned, param), name
        assert not torch.equal(tuned, other), name
        deltas.append((tuned - param).flatten())
    std = torch.cat(deltas).std().item()
    assert 0.018 < std < 0.022  # N(0, 0.02^2) over ~120k values
    assert a.get_output_embeddings().weight is a.get_input_embeddings().weight  # still tied
    assert torch.allclose(finetune_like(base, seed=7, scale=0.0).state_dict()[name], param)


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_round_trips_any_text_and_keeps_special_tokens_whole(family):
    tokenizer = tiny_tokenizer(family)
    text = "日本の首都は東京です。 2+2=4?"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 0)
    if family in VLM_FAMILIES:
        placeholder = {"gemma3": "<image_soft_token>", "mistral3": "[IMG]", "internvl": "<IMG_CONTEXT>"}.get(
            family, "<|image_pad|>" if family.startswith("qwen") else "<image>"
        )
        image_id = added_token_id(family, placeholder)
        assert tokenizer(placeholder, add_special_tokens=False)["input_ids"] == [image_id]
        config = tiny_config(family)
        assert image_id == (getattr(config, "image_token_index", None) or config.image_token_id)


def test_chat_template_prompt_generates_with_an_image():
    for family in ("llava", "qwen2_vl"):
        processor = tiny_processor(family)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "何ですか?"}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert prompt.endswith("ASSISTANT:")
        inputs = processor(images=[smoke_image()], text=[prompt], return_tensors="pt")
        image_id = build_tiny_model(family).config.image_token_id
        assert int((inputs["input_ids"] == image_id).sum()) > 0
        new = greedy_new_tokens(build_tiny_model(family), dict(inputs))
        assert new.shape == (1, 3)


def test_lm_families_are_text_only():
    assert set(LM_FAMILIES).isdisjoint(VLM_FAMILIES)
    for family in LM_FAMILIES:
        inputs = smoke_inputs(family)
        assert sorted(inputs) == ["attention_mask", "input_ids"]


# ---------------------------------------------------------------------------------------------
# the package: per-family builder modules behind one public API


def test_every_family_has_exactly_one_builder_module_and_the_old_api_stays():
    import vlmmerge.testing as testing
    from vlmmerge.testing import families, tiny

    owners = [family for module in families.MODULES for family in module.FAMILIES]
    assert sorted(owners) == sorted(FAMILIES) and len(owners) == len(set(owners))
    for module in families.MODULES:
        assert hasattr(module, "config_spec")
        assert all(hasattr(module, "processor") for f in module.FAMILIES if f in VLM_FAMILIES)
    assert all(getattr(tiny, name) is getattr(testing, name) for name in testing.__all__)

