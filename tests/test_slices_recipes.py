"""mergekit `slices:` recipes in `vlmmerge merge`: passthrough stacks with mergekit's semantics.

LLMs: the same tensors as mergekit-yaml (bit for bit), checked also against the formula (layer i of
the output = layer j of the slice's model times its per-tensor scale; embeddings from the first
slice's model, final norm and head from the last). VLMs: the language side is stacked, the vision
tower and projector stay the host's (mergekit cannot do this).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from core_helpers import load_tensors, perturb
from vlmmerge.cli import main as cli_main
from vlmmerge.engine.layers import with_layer
from vlmmerge.errors import RecipeError
from vlmmerge.recipe import load_recipe
from vlmmerge.testing.tiny import build_tiny_lm_for, build_tiny_model, save_model, tiny_processor

SCALE = [{"filter": "o_proj", "value": 0.5}, {"filter": "down_proj", "value": 0.25}, {"value": 1.0}]


@pytest.fixture(scope="module")
def llamas(tmp_path_factory):
    root = tmp_path_factory.mktemp("slices")
    return [save_model(perturb(build_tiny_model("llama", seed=5, num_hidden_layers=3), seed=s), root / f"m{s}")
            for s in (1, 2)]


def _recipe(a, b) -> dict:
    return {"slices": [{"sources": [{"model": str(a), "layer_range": [0, 2]}]},
                       {"sources": [{"model": str(b), "layer_range": [1, 3], "parameters": {"scale": SCALE}}]},
                       {"sources": [{"model": str(a), "layer_range": [2, 3], "parameters": {"scale": 1.5}}]},
                       {"sources": [{"model": str(b), "layer_range": [0, 1]}]}],
            "merge_method": "passthrough", "dtype": "float32"}


def _merge(recipe: dict, root: Path, name: str) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert cli_main(["merge", str(path), str(root / name), "--quiet"]) == 0
    return root / name


def test_slices_merge_matches_the_formula_and_mergekit(llamas, tmp_path):
    a, b = llamas
    recipe = _recipe(a, b)
    ours = load_tensors(_merge(recipe, tmp_path, "ours"))
    ta, tb = load_tensors(a), load_tensors(b)
    # output layer -> (source tensors, source layer, scale of o_proj, down_proj, rest)
    plan = [(ta, 0, 1, 1, 1), (ta, 1, 1, 1, 1), (tb, 1, 0.5, 0.25, 1), (tb, 2, 0.5, 0.25, 1), (ta, 2, 1.5, 1.5, 1.5),
            (tb, 0, 1, 1, 1)]
    for out, (src, layer, o, down, rest) in enumerate(plan):
        for name in [n for n in ta if ".layers.0." in n]:
            scale = o if "o_proj" in name else down if "down_proj" in name else rest
            expected = src[with_layer(name, layer)] * scale if scale != 1 else src[with_layer(name, layer)]
            assert torch.equal(ours[with_layer(name, out)], expected), (out, name)
    assert torch.equal(ours["model.embed_tokens.weight"], ta["model.embed_tokens.weight"])
    assert torch.equal(ours["model.norm.weight"], tb["model.norm.weight"])  # post weights from the last slice
    assert torch.equal(ours["lm_head.weight"], tb["lm_head.weight"])
    assert AutoConfig.from_pretrained(tmp_path / "ours").num_hidden_layers == 6
    AutoModelForCausalLM.from_pretrained(tmp_path / "ours")

    mergekit = shutil.which("mergekit-yaml") or str(Path(sys.executable).with_name("mergekit-yaml"))
    subprocess.run([mergekit, str(tmp_path / "ours.yaml"), str(tmp_path / "mk"), "--no-lazy-unpickle"], check=True,
                   capture_output=True)
    theirs = load_tensors(tmp_path / "mk")
    assert sorted(theirs) == sorted(ours)
    for name, value in theirs.items():
        assert torch.equal(ours[name], value), name


def test_the_library_entry_runs_slices_recipes_too(llamas, tmp_path):
    """`run_merge` (what evolve, tune and scripts call) plans a slices recipe as `vlmmerge merge` does."""
    from vlmmerge.engine import run_merge

    a, b = llamas
    recipe = _recipe(a, b)
    cli = load_tensors(_merge(recipe, tmp_path, "cli"))
    run_merge(recipe, tmp_path / "lib", progress=False)
    lib = load_tensors(tmp_path / "lib")
    assert sorted(lib) == sorted(cli) and all(torch.equal(lib[n], cli[n]) for n in cli)
    assert AutoConfig.from_pretrained(tmp_path / "lib").num_hidden_layers == 6


def test_vlm_slices_stack_the_language_side_only(tmp_path):
    vlm = build_tiny_model("llava", seed=3)
    lm = perturb(build_tiny_lm_for("llava", seed=4), seed=9)
    a, b = save_model(vlm, tmp_path / "vlm", processor=tiny_processor("llava")), save_model(lm, tmp_path / "lm")
    recipe = {"slices": [{"sources": [{"model": str(a), "layer_range": [0, 2]}]},
                         {"sources": [{"model": str(b), "layer_range": [0, 2], "parameters": {"scale": 0.5}}]}],
              "merge_method": "passthrough", "dtype": "float32"}
    out = load_tensors(_merge(recipe, tmp_path, "out"))
    tv, tl = load_tensors(a), load_tensors(b)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out")
    assert model.config.text_config.num_hidden_layers == 4
    state = model.state_dict()
    for name in [n for n in tl if ".layers.1." in n]:
        runtime = name.replace("model.", "model.language_model.", 1)
        assert torch.equal(state[with_layer(runtime, 3)], tl[name] * 0.5)
    vision = [n for n in state if "vision_tower" in n or "multi_modal_projector" in n]
    assert vision and all(torch.equal(state[n], vlm.state_dict()[n]) for n in vision)
    assert torch.equal(state["lm_head.weight"], tl["lm_head.weight"])  # the last slice's head
    assert out  # written


def test_bad_slices_are_refused_naming_the_key(llamas):
    a, b = llamas
    with pytest.raises(RecipeError, match=r"slices\.0\.sources\.0\.layer_range"):
        load_recipe({"slices": [{"sources": [{"model": str(a), "layer_range": [2, 1]}]}]})
    with pytest.raises(RecipeError, match="exactly 1 source"):
        load_recipe({"slices": [{"sources": [{"model": str(a), "layer_range": [0, 1]},
                                             {"model": str(b), "layer_range": [0, 1]}]}]})
    with pytest.raises(RecipeError, match="passthrough only"):
        load_recipe({"slices": [{"sources": [{"model": str(a), "layer_range": [0, 1]}]}], "merge_method": "linear"})
