"""Component split, language mapping and compatibility, for every family."""

from __future__ import annotations

import json

import pytest

from vlmmerge.anatomy import Anatomy, compare, kept_host_rows
from vlmmerge.checkpoint import Checkpoint
from vlmmerge.errors import IncompatibleModelsError
from vlmmerge.testing.tiny import (
    LM_FAMILIES,
    VLM_FAMILIES,
    added_token_id,
    build_tiny_lm_for,
    build_tiny_model,
    save_model,
)

# Module paths of each family's parts in the transformers model, written independently of
# vlmmerge's prefix table: (vision, projectors, language backbone).
MODULES = {
    "llava": ("model.vision_tower", ["model.multi_modal_projector"], "model.language_model"),
    "llava_next": ("model.vision_tower", ["model.multi_modal_projector", "@model.image_newline"], "model.language_model"),
    "llava_onevision": ("model.vision_tower", ["model.multi_modal_projector", "@model.image_newline"], "model.language_model"),
    "qwen2_vl": ("model.visual", ["model.visual.merger"], "model.language_model"),
    "qwen2_5_vl": ("model.visual", ["model.visual.merger"], "model.language_model"),
    "qwen3_vl": ("model.visual", ["model.visual.merger", "model.visual.deepstack_merger_list"], "model.language_model"),
    "idefics3": ("model.vision_model", ["model.connector"], "model.text_model"),
    "smolvlm": ("model.vision_model", ["model.connector"], "model.text_model"),
    "paligemma": ("model.vision_tower", ["model.multi_modal_projector"], "model.language_model"),
    "gemma3": ("model.vision_tower", ["model.multi_modal_projector"], "model.language_model"),
    "mistral3": ("model.vision_tower", ["model.multi_modal_projector"], "model.language_model"),
    "internvl": ("model.vision_tower", ["model.multi_modal_projector"], "model.language_model"),
}


def _count(model, path: str) -> int:
    if path.startswith("@"):
        return model.get_parameter(path[1:]).numel()
    return sum(p.numel() for p in model.get_submodule(path).parameters())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cache = {}

    def get(family: str, **kwargs):
        key = (family, tuple(sorted(kwargs.items())))
        if key not in cache:
            model = build_tiny_model(family, seed=0, **kwargs)
            folder = save_model(model, tmp_path_factory.mktemp(family))
            cache[key] = (model, Anatomy(Checkpoint(folder)))
        return cache[key]

    return get


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_component_split_by_parameter_count(family, saved):
    model, anatomy = saved(family)
    vision_path, projector_paths, language_path = MODULES[family]
    counts = anatomy.parameter_counts()
    projector = sum(_count(model, p) for p in projector_paths)
    nested_projector = sum(_count(model, p) for p in projector_paths if p.startswith(vision_path + "."))
    assert counts["projector"] == projector
    assert counts["vision"] == _count(model, vision_path) - nested_projector
    assert counts["embeddings"] + counts["language"] == _count(model, language_path)
    assert counts.get("head", 0) == (0 if anatomy.tied else model.lm_head.weight.numel())
    assert "other" not in counts
    assert anatomy.is_vlm


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_language_side_maps_onto_standalone_lm(family, saved, tmp_path):
    _, anatomy = saved(family)
    lm = build_tiny_lm_for(family)
    lm_anatomy = Anatomy(Checkpoint(save_model(lm, tmp_path / "lm")))
    lm_shapes = {n: tuple(t.shape) for n, t in lm.state_dict().items()}
    mapped = {anatomy.to_lm_name(n): anatomy.checkpoint.info(n).shape for n in anatomy.language_names}
    if anatomy.tied:
        lm_shapes.pop("lm_head.weight", None)
    assert mapped == lm_shapes
    for name in anatomy.language_names:
        assert anatomy.from_lm_name(anatomy.to_lm_name(name)) == name
    report = compare(anatomy, lm_anatomy)
    assert report.ok, report.problems()
    assert not report.shape_mismatches


@pytest.mark.parametrize("family", LM_FAMILIES)
def test_plain_lms_are_all_language(family, saved):
    model, anatomy = saved(family)
    counts = anatomy.parameter_counts()
    assert set(counts) <= {"embeddings", "language", "head"}
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())
    assert not anatomy.is_vlm
    assert anatomy.to_lm_name("model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"


@pytest.mark.parametrize("family", ["mistral3", "internvl", "gemma3", "paligemma", "llava", "qwen2_vl"])
def test_tying_follows_the_top_level_config(family, saved):
    model, anatomy = saved(family)
    assert anatomy.tied == (model.lm_head.weight is model.get_input_embeddings().weight)
    assert anatomy.tied == bool(getattr(model.config, "tie_word_embeddings", False))


def test_vocabulary_extra_rows_and_special_tokens(saved, tmp_path):
    _, vlm = saved("llava")
    rows = vlm.vocab_rows
    smaller = Anatomy(Checkpoint(save_model(build_tiny_lm_for("llava", vocab_size=rows - 20), tmp_path / "small")))
    report = compare(vlm, smaller)
    assert report.ok
    assert (report.vocabulary.shared_rows, report.vocabulary.extra_rows) == (rows - 20, 20)
    image_token = vlm.checkpoint.config.image_token_index
    assert vlm.special_token_ids["image_token_index"] == image_token

    larger = Anatomy(Checkpoint(save_model(build_tiny_lm_for("llava", vocab_size=rows + 8), tmp_path / "large")))
    report = compare(vlm, larger)
    assert not report.ok
    with pytest.raises(IncompatibleModelsError, match=f"{rows + 8} vocabulary rows"):
        report.raise_if_incompatible()


def test_shape_mismatch_names_tensor_and_shapes(saved, tmp_path):
    _, vlm = saved("llava")
    lm = build_tiny_lm_for("llava")
    config = lm.config
    config.intermediate_size = config.intermediate_size + 8
    other = type(lm)(config)
    folder = save_model(other, tmp_path / "wide")
    report = compare(vlm, Anatomy(Checkpoint(folder)))
    assert report.shape_mismatches
    message = " ".join(report.problems())
    assert "model.layers.0.mlp.up_proj.weight" in message
    assert str(tuple(other.state_dict()["model.layers.0.mlp.up_proj.weight"].shape)) in message


def test_tokenizer_disagreement_on_shared_rows_is_reported(saved, tmp_path):
    _, vlm = saved("llava")
    folder = save_model(build_tiny_lm_for("llava"), tmp_path / "lm")
    doc = json.loads((folder / "tokenizer.json").read_text())
    vocab = doc["model"]["vocab"]
    token = next(t for t, i in vocab.items() if i == 100)
    vocab[token + "_renamed"] = vocab.pop(token)
    (folder / "tokenizer.json").write_text(json.dumps(doc))
    report = compare(vlm, Anatomy(Checkpoint(folder)))
    assert report.vocabulary.tokenizers_compared
    assert [d[0] for d in report.vocabulary.differing_tokens] == [100]
    assert "vocabularies differ" in " ".join(report.problems())


def test_host_only_tokens_are_listed_and_kept(saved, tmp_path):
    _, vlm = saved("mistral3")
    lm = Anatomy(Checkpoint(save_model(build_tiny_lm_for("mistral3"), tmp_path / "lm")))
    report = compare(vlm, lm)
    assert report.ok, report.problems()
    tokens = ("[IMG]", "[IMG_BREAK]", "[IMG_END]", "[INST]", "[/INST]")
    assert report.vocabulary.host_only_tokens == [(added_token_id("mistral3", t), t) for t in tokens]
    assert set(vlm.special_token_ids.values()) == {added_token_id("mistral3", "[IMG]")}  # no [IMG_BREAK]
    ids = [i for i, _ in report.vocabulary.host_only_tokens]
    assert kept_host_rows(vlm, [report], vlm.vocab_rows) == tuple(ids)
    assert kept_host_rows(vlm, [report], ids[2]) == tuple(ids[:2])  # only rows below the shared count
    assert kept_host_rows(vlm, [], vlm.vocab_rows) == (ids[0],)  # the config's image token alone
    assert any("[IMG_BREAK]" in note for note in report.notes())


def test_tensors_only_the_host_has_make_it_incompatible(saved, tmp_path):
    _, vlm = saved("llava")
    lm = build_tiny_lm_for("llava")
    lm.config.num_hidden_layers = 1
    report = compare(vlm, Anatomy(Checkpoint(save_model(type(lm)(lm.config), tmp_path / "shallow"))))
    assert report.only_here and all(name.startswith("model.layers.1.") for name in report.only_here)
    assert not report.ok
    assert "model.layers.1." in " ".join(report.problems())
