"""The tiny-model factory: every family builds, saves in every layout, loads back and generates offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open

from vlmmerge.errors import UnsupportedArchitectureError
from vlmmerge.testing import (
    FAMILIES,
    HUB_LLAVA_FAMILIES,
    LM_FAMILIES,
    MODEL_CLASS_NAMES,
    QWEN2_VL_ORIGINAL_FAMILIES,
    VLM_FAMILIES,
    added_token_id,
    build_tiny_lm_for,
    build_tiny_model,
    finetune_like,
    generate_smoke,
    load_model,
    load_processor,
    matching_lm_config,
    save_model,
    smoke_image,
    smoke_inputs,
    tiny_config,
    tiny_processor,
    tiny_tokenizer,
)

# What transformers 5 `save_pretrained` writes by default (the original/legacy layout), per family.
# Every key on disk starts with one of these prefixes and every prefix is used.
DEFAULT_DISK_PREFIXES: dict[str, tuple[str, ...]] = {
    "llava": ("language_model.model.", "language_model.lm_head.", "vision_tower.", "multi_modal_projector."),
    "llava_next": ("language_model.model.", "language_model.lm_head.", "vision_tower.", "multi_modal_projector.",
                   "image_newline"),
    "llava_onevision": ("language_model.model.", "language_model.lm_head.", "vision_tower.",
                        "multi_modal_projector.", "image_newline"),
    "qwen2_vl": ("model.", "visual.", "lm_head."),
    "qwen2_5_vl": ("model.", "visual.", "lm_head."),
    "qwen3_vl": ("model.language_model.", "model.visual.", "lm_head."),
    "idefics3": ("model.text_model.", "model.vision_model.", "model.connector.", "lm_head."),
    "smolvlm": ("model.text_model.", "model.vision_model.", "model.connector.", "lm_head."),
    # tied heads are not written
    "paligemma": ("language_model.model.", "vision_tower.", "multi_modal_projector."),
    "gemma3": ("language_model.model.", "vision_tower.", "multi_modal_projector."),
    "mistral3": ("language_model.model.", "vision_tower.", "multi_modal_projector."),
    "internvl": ("language_model.model.", "vision_tower.", "multi_modal_projector."),
    "llama": ("model.", "lm_head."),
    "mistral": ("model.", "lm_head."),
    "qwen2": ("model.", "lm_head."),
    "qwen3": ("model.", "lm_head."),
    "gemma": ("model.",),
    "gemma3_text": ("model.",),
}

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


def disk_keys(folder: Path) -> list[str]:
    """Tensor names stored in a folder's weight files (safetensors or .bin, single or sharded)."""
    keys: list[str] = []
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as handle:
            keys.extend(handle.keys())
    for file in sorted(folder.glob("*.bin")):
        keys.extend(torch.load(file, map_location="cpu", weights_only=True).keys())
    return keys


def assert_same_state_dict(expected: torch.nn.Module, actual: torch.nn.Module) -> None:
    a, b = expected.state_dict(), actual.state_dict()
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), f"tensor {name} differs after the round trip"


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


def greedy_new_tokens(model: torch.nn.Module, inputs: dict[str, torch.Tensor], n: int = 3) -> torch.Tensor:
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[:, inputs["input_ids"].shape[1]:]


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
# default layout: save, reload with the Auto class, same tensors, generation


@pytest.mark.parametrize("family", FAMILIES)
def test_default_layout_round_trip_and_generation(family, tiny_model_dir):
    folder = tiny_model_dir(family)
    model = build_tiny_model(family, seed=0)
    loaded = load_model(folder)
    assert type(loaded).__name__ == MODEL_CLASS_NAMES[family]
    assert_same_state_dict(model, loaded)

    new_tokens = generate_smoke(folder, max_new_tokens=3)
    assert new_tokens.shape == (1, 3)
    # the same prompt and image through the in-memory model and the in-code processor
    inputs = smoke_inputs(family)
    if family in VLM_FAMILIES:
        assert "pixel_values" in inputs
    assert torch.equal(new_tokens, greedy_new_tokens(model, inputs))


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_processor_loads_with_auto_class_and_matches(family, tiny_model_dir):
    folder = tiny_model_dir(family)
    loaded = load_processor(folder)
    built = tiny_processor(family)
    if family in VLM_FAMILIES:
        assert type(loaded).__name__ == type(built).__name__
        tokenizer = loaded.tokenizer
        # the processor's tokenizer (with anything the processor adds) fits the model's vocabulary
        assert len(tokenizer) <= tiny_config(family).get_text_config().vocab_size
    else:
        # AutoTokenizer may pick the model type's own class (Qwen2Tokenizer for qwen2): same ids.
        assert isinstance(loaded, transformers.PreTrainedTokenizerFast)
        tokenizer = loaded
    text = "日本の首都は東京です。 2+2=4?"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    from_disk, in_code = smoke_inputs(family, loaded), smoke_inputs(family, built)
    assert sorted(from_disk) == sorted(in_code)
    for key in in_code:
        assert torch.equal(from_disk[key], in_code[key]), key


@pytest.mark.parametrize("family", FAMILIES)
def test_default_layout_on_disk_prefixes(family, tiny_model_dir):
    keys = disk_keys(tiny_model_dir(family))
    prefixes = DEFAULT_DISK_PREFIXES[family]
    used = set()
    for key in keys:
        matching = [p for p in prefixes if key.startswith(p)]
        assert matching, f"{key} is outside the documented default layout {prefixes}"
        used.add(max(matching, key=len))
    assert used == set(prefixes)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        assert not any(k.startswith(("model.language_model.", "model.visual.")) for k in keys)
    if family in HUB_LLAVA_FAMILIES:
        # transformers 5 drops the hub's `vision_tower.vision_model.` nesting when it saves
        assert not any(k.startswith("vision_tower.vision_model.") for k in keys)
    model = build_tiny_model(family)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert len(keys) == len(model.state_dict()) - (1 if tied else 0)


# ---------------------------------------------------------------------------------------------
# other layouts and formats


@pytest.mark.parametrize("family", HUB_LLAVA_FAMILIES)
def test_hub_llava_layout_loads_to_runtime_names(family, tiny_model_dir):
    folder = tiny_model_dir(family, layout="hub_llava")
    keys = disk_keys(folder)
    assert any(k.startswith("language_model.model.layers.") for k in keys)
    assert any(k.startswith("multi_modal_projector.") for k in keys)
    assert not any(k.startswith("model.") for k in keys)
    nested = family in ("llava", "llava_next", "llava_onevision", "paligemma", "gemma3")  # CLIP / SigLIP towers
    assert all(k.startswith("vision_tower.vision_model.") == nested for k in keys if k.startswith("vision_tower."))
    model = build_tiny_model(family)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert ("language_model.lm_head.weight" in keys) == (not tied)
    assert_same_state_dict(model, load_model(folder))


@pytest.mark.parametrize("family", QWEN2_VL_ORIGINAL_FAMILIES)
def test_qwen2_vl_original_layout_loads_to_runtime_names(family, tiny_model_dir):
    folder = tiny_model_dir(family, layout="qwen2_vl_original")
    keys = set(disk_keys(folder))
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" in keys
    assert any(k.startswith("visual.blocks.0.") for k in keys)
    assert not any(k.startswith(("model.language_model.", "model.visual.")) for k in keys)
    assert_same_state_dict(build_tiny_model(family), load_model(folder))


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3", "gemma3", "gemma"])
def test_runtime_layout_holds_state_dict_names(family, tiny_model_dir):
    folder = tiny_model_dir(family, layout="runtime")
    model = build_tiny_model(family)
    assert sorted(disk_keys(folder)) == sorted(model.state_dict())
    assert_same_state_dict(model, load_model(folder))


@pytest.mark.parametrize(
    ("family", "layout", "fmt"),
    [
        ("llava", "default", "safetensors"),
        ("qwen2_vl", "runtime", "safetensors"),
        ("llava", "default", "bin"),
        ("gemma3", "hub_llava", "bin"),
        ("qwen2_5_vl", "qwen2_vl_original", "bin"),
        ("mistral", "default", "bin"),
    ],
)
def test_sharded_and_bin_round_trips(family, layout, fmt, tiny_model_dir):
    model = build_tiny_model(family)
    single = tiny_model_dir(family, layout=layout, fmt=fmt)
    sharded = tiny_model_dir(family, layout=layout, fmt=fmt, max_shard_size="150KB")
    suffix = ".safetensors" if fmt == "safetensors" else ".bin"
    index_name = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"

    assert len(list(single.glob("*" + suffix))) == 1 and not (single / index_name).exists()
    shards = sorted(sharded.glob("*" + suffix))
    assert len(shards) > 1
    index = json.loads((sharded / index_name).read_text())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    assert sorted(index["weight_map"]) == sorted(disk_keys(sharded)) == sorted(disk_keys(single))
    if fmt == "bin":
        assert not list(sharded.glob("*.safetensors")) and not list(single.glob("*.safetensors"))
    for folder in (single, sharded):
        assert_same_state_dict(model, load_model(folder))
    assert generate_smoke(sharded).shape == (1, 3)


def test_save_model_refuses_used_folder_and_unknown_layouts(tmp_path):
    model = build_tiny_model("llama")
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        save_model(model, used)
    with pytest.raises(ValueError, match="unknown layout"):
        save_model(model, tmp_path / "a", layout="sideways")
    with pytest.raises(ValueError, match="unknown weight format"):
        save_model(model, tmp_path / "b", fmt="pickle")
    with pytest.raises(ValueError, match="hub_llava"):
        save_model(build_tiny_model("qwen2_vl"), tmp_path / "c", layout="hub_llava")
    with pytest.raises(ValueError, match="qwen2_vl_original"):
        save_model(build_tiny_model("llava"), tmp_path / "d", layout="qwen2_vl_original")
    # nothing half-written is left behind, and an empty target folder is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["used"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (save_model(model, empty) / "model.safetensors").is_file()


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
