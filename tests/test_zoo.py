"""The miniature world: micro build end to end, loading with the Auto classes, the tokenizer,
the world's content, caching, and the check's merge arithmetic."""

from __future__ import annotations

import json
import random

import pytest
import torch

from vlmmerge.zoo import ZooPaths, build_zoo, cache_root, ensure_zoo, zoo_dir
from vlmmerge.zoo import world as W


# ------------------------------------------------------------------------------------------ build
def test_micro_build_is_complete(micro: ZooPaths):
    assert micro.is_complete()
    manifest = json.loads(micro.manifest.read_text())
    assert manifest["size"] == "micro" and manifest["seed"] == 0
    assert set(manifest["seconds"]) >= {"tokenizer", "base LM", "VLM", "Japanese LM", "math LM", "CLIP"}
    for folder in (micro.base, micro.vlm, micro.ja_lm, micro.math_lm):
        assert (folder / "model.safetensors").is_file()
        assert (folder / "tokenizer.json").is_file()
    assert (micro.clip / "open_clip_config.json").is_file()
    assert not list(micro.root.parent.glob(".micro-*")), "the staging folder must be gone"


def test_vlm_loads_with_auto_classes_and_generates(micro: ZooPaths):
    from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

    from vlmmerge.zoo.images import render_scene

    processor = AutoProcessor.from_pretrained(micro.vlm)
    model = AutoModelForImageTextToText.from_pretrained(micro.vlm)
    assert isinstance(model, LlavaForConditionalGeneration)
    scene = W.sample_scene(random.Random(5))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[render_scene(scene)], text=[text], return_tensors="pt")
    # the processor expands <image> into one token per grid cell
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == W.GRID * W.GRID
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


@pytest.mark.parametrize("name", ["base", "ja_lm", "math_lm"])
def test_lms_load_with_auto_classes_and_generate(micro: ZooPaths, name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = getattr(micro, name)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "この画像を説明してください。"}],
                                           add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert tokenizer.unk_token_id not in ids["input_ids"][0].tolist()


def test_sources_share_the_base_architecture(micro: ZooPaths):
    """All language sides have the base's tensor names and shapes (they are fine-tunes of it)."""
    from transformers import LlamaForCausalLM, LlavaForConditionalGeneration

    base = LlamaForCausalLM.from_pretrained(micro.base).state_dict()
    vlm = LlavaForConditionalGeneration.from_pretrained(micro.vlm).state_dict()
    vlm_language = {"model." + k[len("model.language_model."):]: v for k, v in vlm.items()
                    if k.startswith("model.language_model.")} | {"lm_head.weight": vlm["lm_head.weight"]}
    ja = LlamaForCausalLM.from_pretrained(micro.ja_lm).state_dict()
    for other in (vlm_language, ja):
        assert {k: v.shape for k, v in other.items()} == {k: v.shape for k, v in base.items()}
        assert any(not torch.equal(other[k], base[k]) for k in base), "a fine-tune must move some weights"


def test_clip_loads_with_open_clip_and_scores(micro: ZooPaths):
    import open_clip

    from vlmmerge.zoo.images import render_scene

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{micro.clip}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{micro.clip}")
    ids = tokenizer(["赤い丸と青い四角"])
    eos = json.loads((micro.clip / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]["eos_id"]
    assert eos in ids[0].tolist(), "CLIP texts end with the end token its text tower pools at"
    with torch.no_grad():
        image = model.encode_image(preprocess(render_scene(W.sample_scene(random.Random(1))))[None])
        text = model.encode_text(ids)
    assert image.shape == text.shape


def test_image_pipeline_matches_the_saved_processor(micro: ZooPaths):
    """Training normalises pixels itself; it must equal what the saved image processor produces."""
    from transformers import AutoProcessor

    from vlmmerge.zoo.build import pixel_values
    from vlmmerge.zoo.images import render_scene

    scenes = [W.sample_scene(random.Random(i)) for i in range(4)]
    processor = AutoProcessor.from_pretrained(micro.vlm)
    expected = processor.image_processor([render_scene(s) for s in scenes], return_tensors="pt")["pixel_values"]
    assert torch.allclose(pixel_values(scenes), expected, atol=1e-5)


# ------------------------------------------------------------------------------------------ caching
def test_cache_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("VLMMERGE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "vlmmerge"
    monkeypatch.setenv("VLMMERGE_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    assert zoo_dir("micro", 3).parent == tmp_path / "mine" / "zoo"
    assert zoo_dir("micro", 3).name.startswith("micro-s3-t1-v")
    assert zoo_dir("micro", 3, threads=2).name.startswith("micro-s3-t2-v")


def test_ensure_zoo_reuses_a_complete_build(monkeypatch, tmp_path, micro: ZooPaths):
    import shutil

    import vlmmerge.zoo.build as build

    monkeypatch.setenv("VLMMERGE_CACHE", str(tmp_path))
    target = zoo_dir("micro", 0)
    target.parent.mkdir(parents=True)
    shutil.copytree(micro.root, target)

    def refuse(*args, **kwargs):
        raise AssertionError("a complete cached world must not be rebuilt")

    monkeypatch.setattr(build, "build_zoo", refuse)
    assert ensure_zoo("micro", 0).root == target


def test_unknown_size_is_a_clear_error():
    from vlmmerge.errors import VlmMergeError

    with pytest.raises(VlmMergeError, match="unknown zoo size 'huge'"):
        build_zoo("huge", 0)


def test_failed_build_leaves_nothing(monkeypatch, tmp_path):
    import vlmmerge.zoo.build as build

    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(build.corpora, "base_corpus", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        build_zoo("micro", 0, out=tmp_path / "w", progress=False)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ tokenizer
@pytest.fixture(scope="module")
def tokenizer(micro: ZooPaths):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(micro.tokenizer)


def test_tokenizer_round_trips_every_corpus(tokenizer):
    from vlmmerge.zoo import corpora

    rng = random.Random(3)
    scenes = corpora.training_scenes(rng, 30)
    examples = (corpora.base_corpus(rng, 300) + corpora.vlm_corpus(rng, 100, scenes) + corpora.ja_corpus(rng, 200)
                + corpora.math_corpus(rng, 100))
    for ex in examples:
        for text in (ex.prompt, ex.answer):
            if text:
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                assert tokenizer.unk_token_id not in ids, text
                assert tokenizer.decode(ids) == text


def test_each_concept_is_one_token_in_each_language(tokenizer):
    vocab = tokenizer.get_vocab()
    for colour in W.COLOURS:
        for token in (colour.symbol, colour.ja_adjective, colour.ja_noun, " " + colour.en):
            assert token in vocab, token
    for shape in W.SHAPES:
        for token in (shape.symbol, shape.ja, " " + shape.en):
            assert token in vocab, token
    for obj in W.CULTURE:
        assert obj.symbol in vocab and obj.ja in vocab
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("赤い丸と青い四角", add_special_tokens=False)["input_ids"])
    assert tokens == ["赤い", "丸", "と", "青い", "四角"]
    digits = tokenizer.convert_ids_to_tokens(tokenizer("65 + 4", add_special_tokens=False)["input_ids"])
    assert digits == ["6", "5", " +", " 4"]


def test_chat_template_matches_training_prefix(tokenizer):
    from vlmmerge.zoo.training import chat_prefix

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered.replace("<image>", "<image>" * 3) == chat_prefix("Describe the image.", True, 3)
    text_only = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True,
                                              tokenize=False)
    assert text_only == chat_prefix("x", False, 0)


# ------------------------------------------------------------------------------------------ world content
def test_answer_symbols_vanish_under_the_evaluation_normalisation():
    """The neutral LIST and the arrow are emoji: the reference normalisation leaves only the text."""
    from vlmmerge.evaluation.text import normalize_text

    rng = random.Random(0)
    for _ in range(50):
        scene = W.sample_scene(rng)
        assert normalize_text(W.answer(scene.symbol_list, scene.caption_ja)) == scene.caption_ja
        assert normalize_text(W.answer(scene.symbol_list, scene.caption_en)) == scene.caption_en


def test_questions_have_unique_answers():
    rng = random.Random(1)
    for _ in range(200):
        scene = W.sample_scene(rng)
        basic = [o for o in scene.objects if o.culture is None]
        for q in W.questions_for(scene):
            if q.kind == "count":
                assert q.answer_en == W.EN_NUMBER_WORDS[len(scene.objects)]
            elif q.kind == "colour":
                matches = [o for o in basic if q.en == f"What colour is the {o.shape.en}?"]
                assert len(matches) == 1 and matches[0].colour.en == q.answer_en
            else:
                matches = [o for o in basic if q.en == f"What shape is the {o.colour.en} object?"]
                assert len(matches) == 1 and matches[0].shape.en == q.answer_en


def test_math_problems_compute_their_answer():
    p = W.MathProblem("mul", 7, 8, 0, 0)
    assert p.result == 56 and p.equation == "7 × 8 = 56"
    assert W.text_after_separator(p.solution("ja")) == "答えは56です。"
    assert W.MathProblem("sub", 40, 9, 1, 2).solution("en").endswith("the answer is 31.")


def test_patch_labels_follow_the_vision_tower_patch_order():
    scene = W.Scene((W.SceneObject(0, 1, culture=W.CULTURE[0]), W.SceneObject(3, 2, W.COLOURS[1], W.SHAPES[2])), 0)
    labels = W.patch_labels(scene)
    assert labels[1] == 1 + W.OBJECT_KINDS.index("torii")
    assert labels[3 * W.GRID + 2] == 1 + W.OBJECT_KINDS.index("blue-triangle")
    assert sum(1 for x in labels if x) == 2


def test_training_corpora_never_contain_held_out_items():
    from vlmmerge.zoo import corpora

    rng = random.Random(7)
    scenes = corpora.training_scenes(rng, 300)
    assert not any(W.held_out(s.key, W.EVAL_WORLD_SEED) for s in scenes)
    for ex in corpora.base_corpus(rng, 500) + corpora.ja_corpus(rng, 300):
        if ex.scene is not None:
            assert not W.held_out(ex.scene.key, W.EVAL_WORLD_SEED)
    held = sum(W.held_out(W.sample_scene(rng).key, W.EVAL_WORLD_SEED) for _ in range(2000))
    assert 150 < held < 450, "about 15% of the world is held out for evaluation"


def test_culture_names_stay_out_of_the_base_and_vlm_corpora():
    """The VLM and the base see culture objects with English names only; 鳥居 and co. come from the
    Japanese LM's text."""
    from vlmmerge.zoo import corpora

    rng = random.Random(11)
    scenes = corpora.training_scenes(rng, 100)
    japanese_names = [c.ja for c in W.CULTURE]
    for ex in corpora.base_corpus(rng, 800) + corpora.vlm_corpus(rng, 300, scenes):
        assert not any(n in (ex.prompt or "") + ex.answer for n in japanese_names)
    ja_text = "".join(ex.answer for ex in corpora.ja_corpus(rng, 400))
    assert all(n in ja_text for n in japanese_names)


# ------------------------------------------------------------------------------------------ the check
def test_world_table_rows_are_product_merges(micro: ZooPaths, tmp_path):
    """Each row of the world table is a recipe that `vlmmerge merge` writes exactly as the live model holds it."""
    from safetensors.torch import load_file

    from vlmmerge.engine import run_merge
    from vlmmerge.live import LiveMerge
    from vlmmerge.zoo.world_table import row_recipes

    rows = {label: recipe for label, _, recipe in row_recipes(micro)}
    assert len(rows) == 12 and sum(1 for label in rows if label.startswith("three sources")) == 3
    live = LiveMerge([str(micro.base), str(micro.vlm), str(micro.ja_lm), str(micro.math_lm)], str(micro.vlm))
    recipe = rows["three sources: TIES (w=1, d=0.5)"]
    live.apply(recipe)
    run_merge(recipe, tmp_path / "out", progress=False)
    written = {}
    for shard in (tmp_path / "out").glob("*.safetensors"):
        written |= load_file(shard)
    state = live.model.state_dict()
    from transformers import LlavaForConditionalGeneration

    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path / "out").state_dict()
    assert reloaded.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(reloaded[name], tensor), name


def test_constant_answer_is_the_best_fitness_reference():
    from vlmmerge.zoo.check import constant_answers

    constants = constant_answers(None)
    assert set(constants) == {"ja_caption", "ja_vqa", "en_caption", "ja_math", "en_math"}
    assert all(0.0 <= c["value"] <= 100.0 and c["answer"] for c in constants.values())
