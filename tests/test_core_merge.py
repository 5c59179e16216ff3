"""Static merges end to end: formulas, per-layer parameters, VLM + LLM, outputs that load and generate."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from core_helpers import load_tensors, make_world, write_recipe
from vlmmerge.cli import main as cli_main
from vlmmerge.engine import run_merge
from vlmmerge.errors import IncompatibleModelsError, MergeNumericsError, RecipeError, CheckpointError
from vlmmerge.testing.tiny import generate_smoke, save_model, build_tiny_lm_for

LAYER0 = "model.layers.0.self_attn.q_proj.weight"
LAYER1 = "model.layers.1.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), "llava")


@pytest.fixture(scope="module")
def lm_tensors(world):
    return {key: load_tensors(world[key]) for key in ("base", "ft_a", "ft_b")}


def _merge(tmp_path, recipe: dict, name="out"):
    out = tmp_path / name
    run_merge(recipe, out, progress=False)
    return out, load_tensors(out)


def test_linear_normalised_weights(world, lm_tensors, tmp_path):
    recipe = {
        "merge_method": "linear",
        "models": [
            {"model": str(world["ft_a"]), "parameters": {"weight": 3.0}},
            {"model": str(world["ft_b"]), "parameters": {"weight": 1.0}},
        ],
        "dtype": "float32",
    }
    _, merged = _merge(tmp_path, recipe)
    a, b = lm_tensors["ft_a"], lm_tensors["ft_b"]
    for name in (LAYER0, "model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        torch.testing.assert_close(merged[name], (3 * a[name] + b[name]) / 4, rtol=0, atol=1e-6)


def test_task_arithmetic_with_per_layer_list_and_filters(world, lm_tensors, tmp_path):
    recipe = {
        "merge_method": "task_arithmetic",
        "base_model": str(world["base"]),
        "models": [
            {"model": str(world["ft_a"]), "parameters": {"weight": [0.2, 0.8]}},
            {
                "model": str(world["ft_b"]),
                "parameters": {"weight": [{"filter": "self_attn", "value": 0.3}, {"value": 0.6}]},
            },
        ],
        "parameters": {"lambda": 1.5},
        "dtype": "float32",
    }
    _, merged = _merge(tmp_path, recipe)
    base, a, b = lm_tensors["base"], lm_tensors["ft_a"], lm_tensors["ft_b"]

    def expected(name, wa, wb):
        return base[name] + 1.5 * (wa * (a[name] - base[name]) + wb * (b[name] - base[name]))

    torch.testing.assert_close(merged[LAYER0], expected(LAYER0, 0.2, 0.3), rtol=0, atol=1e-6)
    torch.testing.assert_close(merged[LAYER1], expected(LAYER1, 0.8, 0.3), rtol=0, atol=1e-6)
    mlp1 = "model.layers.1.mlp.up_proj.weight"
    torch.testing.assert_close(merged[mlp1], expected(mlp1, 0.8, 0.6), rtol=0, atol=1e-6)
    emb = "model.embed_tokens.weight"  # non-layer tensors take t = 0
    torch.testing.assert_close(merged[emb], expected(emb, 0.2, 0.6), rtol=0, atol=1e-6)


def _ties_reference(base, tensors, weights, densities):
    """TIES written independently: per-model magnitude top-k, weighted sign vote, weighted disjoint mean."""
    deltas = []
    for t, d in zip(tensors, densities):
        delta = (t - base).flatten()
        k = int(d * delta.numel())
        keep = torch.zeros_like(delta, dtype=torch.bool)
        if k > 0:
            keep[delta.abs().argsort(descending=True)[:k]] = True
        deltas.append(torch.where(keep, delta, torch.zeros_like(delta)))
    deltas = torch.stack(deltas)
    w = torch.tensor(weights).unsqueeze(1)
    weighted = deltas * w
    sign = torch.sign(weighted.sum(0))
    sign[sign == 0] = 1
    agree = torch.sign(weighted) == sign
    num = (weighted * agree).sum(0)
    den = (w * agree).sum(0)
    den[den.abs() < 1e-8] = 1
    return base + (num / den).reshape(base.shape)


def test_ties_against_independent_formula(world, lm_tensors, tmp_path):
    recipe = {
        "merge_method": "ties",
        "base_model": str(world["base"]),
        "models": [
            {"model": str(world["ft_a"]), "parameters": {"weight": 0.7, "density": 0.5}},
            {"model": str(world["ft_b"]), "parameters": {"weight": 0.4, "density": 0.3}},
        ],
        "dtype": "float32",
    }
    _, merged = _merge(tmp_path, recipe)
    base, a, b = lm_tensors["base"], lm_tensors["ft_a"], lm_tensors["ft_b"]
    for name in (LAYER0, "model.layers.1.mlp.down_proj.weight"):
        want = _ties_reference(base[name], [a[name], b[name]], [0.7, 0.4], [0.5, 0.3])
        torch.testing.assert_close(merged[name], want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear", "della"])
def test_random_methods_are_seeded(method, world, lm_tensors, tmp_path):
    def recipe(seed):
        return {
            "merge_method": method,
            "base_model": str(world["base"]),
            "models": [
                {"model": str(world["ft_a"]), "parameters": {"weight": 0.6, "density": 0.4}},
                {"model": str(world["ft_b"]), "parameters": {"weight": 0.6, "density": 0.4}},
            ],
            "dtype": "float32",
            "seed": seed,
        }

    _, first = _merge(tmp_path, recipe(7), "a")
    _, again = _merge(tmp_path, recipe(7), "b")
    _, other = _merge(tmp_path, recipe(8), "c")
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not torch.equal(first[LAYER0], other[LAYER0])
    # About 40% of each task vector survives: the merged delta is sparse-ish, not the plain average.
    delta = first[LAYER0] - lm_tensors["base"][LAYER0]
    assert 0.2 < (delta != 0).float().mean().item() < 0.9


def test_vlm_plus_llm_merges_language_only(tmp_path_factory, tmp_path):
    root = tmp_path_factory.mktemp("vocab")

    world = make_world(root, "llava", lm_vocab=None)
    vlm_tensors = load_tensors(world["vlm"])
    vocab = vlm_tensors["model.language_model.embed_tokens.weight"].shape[0]
    # A Japanese-like LM with fewer vocabulary rows than the VLM (LLaVA-1.6 vs Mistral).
    small_lm = build_tiny_lm_for("llava", seed=1, vocab_size=vocab - 16)
    small = save_model(small_lm, root / "small_lm")
    small_base = save_model(build_tiny_lm_for("llava", seed=1, vocab_size=vocab - 16), root / "small_base")
    recipe = {
        "merge_method": "task_arithmetic",
        "base_model": str(small_base),
        "models": [
            {"model": str(world["vlm"]), "parameters": {"weight": 1.0}},
            {"model": str(small), "parameters": {"weight": 0.5}},
        ],
        "dtype": "float32",
    }
    out, merged = _merge(tmp_path, recipe)
    lm = load_tensors(small)
    base = load_tensors(small_base)
    for name, value in vlm_tensors.items():
        if name.startswith(("model.vision_tower.", "model.multi_modal_projector.")):
            assert torch.equal(merged[name], value), name
    shared = vocab - 16
    emb = "model.language_model.embed_tokens.weight"
    lm_emb = "model.embed_tokens.weight"
    want = base[lm_emb] + (vlm_tensors[emb][:shared] - base[lm_emb]) + 0.5 * (lm[lm_emb] - base[lm_emb])
    image_token = json.loads((world["vlm"] / "config.json").read_text())["image_token_index"]
    rows = [r for r in range(shared) if r != image_token]
    torch.testing.assert_close(merged[emb][rows], want[rows], rtol=0, atol=1e-6)
    assert torch.equal(merged[emb][shared:], vlm_tensors[emb][shared:])  # extra rows from the host
    assert image_token < shared  # a shared row, kept from the host rather than merged
    assert torch.equal(merged[emb][image_token], vlm_tensors[emb][image_token])
    layer = "model.language_model.layers.1.mlp.gate_proj.weight"
    lm_layer = "model.layers.1.mlp.gate_proj.weight"
    want_layer = vlm_tensors[layer] + 0.5 * (lm[lm_layer] - base[lm_layer])
    torch.testing.assert_close(merged[layer], want_layer, rtol=0, atol=1e-6)
    # The output is a complete VLM folder: processor files from the host, loads and generates with an image.
    assert (out / "preprocessor_config.json").exists() or (out / "processor_config.json").exists()
    assert (out / "recipe.yaml").exists() and "task_arithmetic" in (out / "README.md").read_text()
    tokens = generate_smoke(out, max_new_tokens=3)
    assert tokens.shape[-1] == 3


@pytest.mark.parametrize("family", ["qwen2_vl", "idefics3", "gemma3"])
def test_vlm_merge_other_families_load_and_generate(family, tmp_path):
    world = make_world(tmp_path / "w", family)
    recipe = {
        "merge_method": "ties",
        "base_model": str(world["base"]),
        "models": [
            {"model": str(world["vlm"]), "parameters": {"weight": 1.0, "density": 0.8}},
            {"model": str(world["ft_a"]), "parameters": {"weight": 0.5, "density": 0.5}},
        ],
        "dtype": "bfloat16",
    }
    out, merged = _merge(tmp_path, recipe)
    vlm = load_tensors(world["vlm"])
    for name, value in vlm.items():
        if not (name.startswith("lm_head") or ".language_model." in name or ".text_model." in name):
            assert torch.equal(merged[name], value.to(torch.bfloat16)), name
    assert all(t.dtype == torch.bfloat16 for t in merged.values() if t.is_floating_point())
    assert generate_smoke(out, max_new_tokens=2).shape[-1] == 2


def test_llm_only_merge_keeps_base_tokenizer_or_named_one(world, tmp_path):
    recipe = {
        "merge_method": "slerp",
        "base_model": str(world["ft_a"]),
        "models": [{"model": str(world["ft_a"])}, {"model": str(world["ft_b"])}],
        "parameters": {"t": [0.0, 1.0]},
        "dtype": "float32",
    }
    out, merged = _merge(tmp_path, recipe)
    a, b = load_tensors(world["ft_a"]), load_tensors(world["ft_b"])
    assert torch.equal(merged[LAYER0], a[LAYER0])  # t = 0 at layer 0
    torch.testing.assert_close(merged[LAYER1], b[LAYER1], rtol=0, atol=1e-5)  # t = 1 at the last layer
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert (out / "tokenizer.json").read_bytes() == (world["ft_a"] / "tokenizer.json").read_bytes()
    assert generate_smoke(out, max_new_tokens=2).shape[-1] == 2


def test_sharded_output_and_cli(world, tmp_path):
    recipe = write_recipe(
        tmp_path / "r.yaml",
        {
            "merge_method": "linear",
            "models": [{"model": str(world["ft_a"]), "parameters": {"weight": 1.0}}, {"model": str(world["ft_b"]), "parameters": {"weight": 1.0}}],
        },
    )
    assert cli_main(["merge", str(recipe), str(tmp_path / "out"), "--max-shard-size", "50KB", "--quiet"]) == 0
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    assert len(list((tmp_path / "out").glob("model-*.safetensors"))) > 1
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    a, b = load_tensors(world["ft_a"]), load_tensors(world["ft_b"])
    torch.testing.assert_close(model.state_dict()[LAYER0], (a[LAYER0] + b[LAYER0]) / 2, rtol=0, atol=1e-6)
    assert yaml.safe_load((tmp_path / "out" / "recipe.yaml").read_text())["merge_method"] == "linear"


def test_inspect_cli_json(world, capsys):
    code = cli_main(["inspect", str(world["vlm"]), "--against", str(world["ft_a"]), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["is_vlm"] and report["family"] == "llava"
    assert report["parameters"]["vision"] > 0 and report["parameters"]["projector"] > 0
    assert report["against"][0]["ok"] is True
    assert any("'<image>'" in note for note in report["against"][0]["notes"])  # kept from the VLM
    assert report["language_mapping"]["runtime_prefix"] == "model.language_model."


# --- bad input: a clear error naming what is at fault, and no output folder -------------------------


def _assert_fails(tmp_path, recipe, error, pattern):
    out = tmp_path / "out"
    with pytest.raises(error, match=pattern):
        run_merge(recipe, out, progress=False)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]


def test_error_missing_path(world, tmp_path):
    recipe = {"merge_method": "linear", "models": [{"model": str(tmp_path / "missing"), "parameters": {"weight": 1}}]}
    _assert_fails(tmp_path, recipe, CheckpointError, "missing")


def test_error_unknown_method_and_parameter(world, tmp_path):
    models = [{"model": str(world["ft_a"]), "parameters": {"weight": 1}}]
    _assert_fails(tmp_path, {"merge_method": "magic", "models": models}, RecipeError, "unknown merge method 'magic'")
    bad = [{"model": str(world["ft_a"]), "parameters": {"weight": 1, "densty": 0.5}}]
    _assert_fails(tmp_path, {"merge_method": "linear", "models": bad}, RecipeError, "densty")
    _assert_fails(
        tmp_path, {"merge_method": "linear", "models": models, "parameters": {"lamda": 2}}, RecipeError, "lamda"
    )


def test_error_missing_base_model(world, tmp_path):
    recipe = {"merge_method": "ties", "models": [{"model": str(world["ft_a"]), "parameters": {"weight": 1}}]}
    _assert_fails(tmp_path, recipe, RecipeError, "base_model")


def test_error_missing_required_weight(world, tmp_path):
    recipe = {"merge_method": "linear", "models": [{"model": str(world["ft_a"])}]}
    _assert_fails(tmp_path, recipe, RecipeError, "'weight'")


def test_error_shape_mismatch(world, tmp_path):
    lm = build_tiny_lm_for("llava")
    lm.config.intermediate_size += 8
    wide = save_model(type(lm)(lm.config), tmp_path / "wide")
    recipe = {
        "merge_method": "linear",
        "models": [{"model": str(world["ft_a"]), "parameters": {"weight": 1}}, {"model": str(wide), "parameters": {"weight": 1}}],
    }
    _assert_fails(tmp_path, recipe, IncompatibleModelsError, r"model\.layers\.0\.mlp\.\w+_proj\.weight: shape")


def test_error_vocabulary_beyond_extra_rows(world, tmp_path):
    rows = load_tensors(world["vlm"])["model.language_model.embed_tokens.weight"].shape[0]
    big = save_model(build_tiny_lm_for("llava", vocab_size=rows + 4), tmp_path / "big")
    recipe = {
        "merge_method": "linear",
        "models": [{"model": str(world["vlm"]), "parameters": {"weight": 1}}, {"model": str(big), "parameters": {"weight": 1}}],
    }
    _assert_fails(tmp_path, recipe, IncompatibleModelsError, "vocabulary rows")


def test_error_nan_in_merged_tensor(world, tmp_path):
    from safetensors.torch import load_file, save_file

    poisoned = tmp_path / "poisoned_src"
    import shutil

    shutil.copytree(world["ft_b"], poisoned)
    weights = load_file(poisoned / "model.safetensors")
    weights[LAYER1][0, 0] = float("nan")
    save_file(weights, poisoned / "model.safetensors", metadata={"format": "pt"})
    recipe = {
        "merge_method": "linear",
        "models": [{"model": str(world["ft_a"]), "parameters": {"weight": 1}}, {"model": str(poisoned), "parameters": {"weight": 1}}],
    }
    _assert_fails(tmp_path, recipe, MergeNumericsError, LAYER1.replace(".", r"\."))


def test_cli_reports_errors_cleanly(world, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", {"merge_method": "ties", "models": [{"model": str(world["ft_a"])}]})
    assert cli_main(["merge", str(recipe), str(tmp_path / "out")]) == 2
    assert "base_model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
