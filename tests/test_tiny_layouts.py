"""The tiny-model factory on disk: every family saves in every layout and format, loads back with the
Auto classes to the same tensors, and generates offline."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from tiny_helpers import assert_same_state_dict, disk_keys, greedy_new_tokens
from vlmmerge.testing import (
    FAMILIES,
    HUB_LLAVA_FAMILIES,
    MODEL_CLASS_NAMES,
    QWEN2_VL_ORIGINAL_FAMILIES,
    VLM_FAMILIES,
    build_tiny_model,
    generate_smoke,
    load_model,
    load_processor,
    save_model,
    smoke_inputs,
    tiny_config,
    tiny_processor,
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
