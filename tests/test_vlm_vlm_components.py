"""VLM + VLM merges: by default every component both models share merges (language, vision,
projector), each merged tensor equal to the method's formula; `components:` restricts the merge
and the rest is copied from the host; bad component names and components a model lacks are
one-line recipe errors; the plan's notes and the model card say what merged and what was copied."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from core_helpers import load_tensors, write_recipe
from vlmmerge.anatomy import Anatomy
from vlmmerge.checkpoint import Checkpoint
from vlmmerge.engine import plan_merge, run_merge
from vlmmerge.errors import RecipeError
from vlmmerge.testing.tiny import build_tiny_lm_for, build_tiny_model, finetune_like, load_model, save_model

FAMILIES = ("llava", "qwen2_vl", "idefics3")


@pytest.fixture(scope="module", params=FAMILIES)
def vlms(request, tmp_path_factory) -> dict[str, Path]:
    family = request.param
    root = tmp_path_factory.mktemp(f"vlm_vlm_{family}")
    base = build_tiny_model(family, seed=1)
    paths = {
        "family": family,
        "base": save_model(base, root / "base"),
        "a": save_model(finetune_like(base, seed=11), root / "a"),
        "b": save_model(finetune_like(base, seed=12), root / "b"),
        "lm": save_model(build_tiny_lm_for(family, seed=1), root / "lm"),
    }
    return paths


def _components(folder: Path) -> dict[str, str]:
    anatomy = Anatomy(Checkpoint(folder))
    return {name: anatomy.component(name) for name in anatomy.checkpoint.names}


def _linear(vlms, out: Path, **extra) -> Path:
    recipe = {
        "merge_method": "linear",
        "models": [
            {"model": str(vlms["a"]), "parameters": {"weight": 0.3}},
            {"model": str(vlms["b"]), "parameters": {"weight": 0.7}},
        ],
        "dtype": "float32",
        **extra,
    }
    return write_recipe(out.parent / f"{out.name}.yaml", recipe)


def _expected(name: str, kept_rows: dict[str, tuple[int, ...]], host, a, b) -> torch.Tensor:
    """0.3 a + 0.7 b; vocabulary rows of the host's special tokens (image placeholders) stay the host's."""
    expected = 0.3 * a[name] + 0.7 * b[name]
    rows = list(kept_rows.get(name, ()))
    expected[rows] = host[name][rows]
    return expected


def _kept_rows(recipe: Path) -> dict[str, tuple[int, ...]]:
    return {t.name: t.host_rows for t in plan_merge(recipe).tensors if t.host_rows}


def test_vlm_plus_vlm_merges_every_component_by_default(vlms, tmp_path: Path) -> None:
    out = tmp_path / "out"
    recipe = _linear(vlms, out)
    result = run_merge(recipe, out, progress=False)
    merged, a, b = load_tensors(out), load_tensors(vlms["a"]), load_tensors(vlms["b"])
    kinds, kept = _components(vlms["a"]), _kept_rows(recipe)
    assert kept  # the image token's rows
    seen = set()
    for name, value in merged.items():
        expected = _expected(name, kept, a, a, b)
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6, msg=name)
        seen.add(kinds[name])
    assert {"vision", "projector", "language", "embeddings"} <= seen
    assert any("components merged: language, vision, projector; copied from the host" in n and n.endswith("none")
               for n in result.notes)
    card = (out / "README.md").read_text()
    assert "Merged components: language, vision, projector" in card
    model = load_model(out)  # loads back as the family's class
    assert type(model).__name__ == type(load_model(vlms["a"])).__name__


def test_components_language_copies_vision_and_projector_from_host(vlms, tmp_path: Path) -> None:
    out = tmp_path / "out"
    recipe = _linear(vlms, out, components=["language"], host=str(vlms["b"]))
    run_merge(recipe, out, progress=False)
    merged, a, b = load_tensors(out), load_tensors(vlms["a"]), load_tensors(vlms["b"])
    kinds, kept = _components(vlms["a"]), _kept_rows(recipe)
    for name, value in merged.items():
        if kinds[name] in ("vision", "projector"):
            assert torch.equal(value, b[name]), name  # the host's, bit for bit
        else:
            torch.testing.assert_close(value, _expected(name, kept, b, a, b), rtol=1e-5, atol=1e-6, msg=name)
    card = (out / "README.md").read_text()
    assert "Merged components: language" in card
    assert f"Copied unchanged from the host `{vlms['b']}`: vision, projector" in card


def test_components_vision_only_keeps_the_language_side(vlms, tmp_path: Path) -> None:
    plan = plan_merge(_linear(vlms, tmp_path / "x", components=["vision"]))
    assert plan.components == ("vision",) and plan.copied_components == ("language", "projector")
    for tensor in plan.tensors:
        assert tensor.merged == (tensor.component == "vision"), tensor.name


def test_per_layer_weights_reach_vision_layers(vlms, tmp_path: Path) -> None:
    """A weight list interpolates over the vision encoder's own layers (t = layer / (layers - 1))."""
    recipe = {
        "merge_method": "linear",
        "models": [{"model": str(vlms["a"]), "parameters": {"weight": [0.0, 1.0]}},
                   {"model": str(vlms["b"]), "parameters": {"weight": [1.0, 0.0]}}],
    }
    plan = plan_merge(recipe)
    vision = [t for t in plan.tensors if t.component == "vision"]
    depths = {}
    for tensor in vision:
        match = re.search(r"\.(?:layers|blocks)\.(\d+)\.", tensor.name)
        if match:
            depths.setdefault(int(match.group(1)), set()).add(tensor.t)
    layers = max(depths) + 1
    assert layers >= 2
    assert all(ts == {i / (layers - 1)} for i, ts in depths.items())
    assert plan.member_params(next(t for t in vision if t.name in [v.name for v in vision]))  # resolvable


def test_vlm_plus_llm_stays_language_only_and_vision_request_is_refused(vlms, tmp_path: Path) -> None:
    recipe = {
        "merge_method": "linear",
        "models": [{"model": str(vlms["a"]), "parameters": {"weight": 0.5}},
                   {"model": str(vlms["lm"]), "parameters": {"weight": 0.5}}],
    }
    plan = plan_merge(recipe)
    assert plan.components == ("language",) and plan.copied_components == ("vision", "projector")
    assert all(not t.merged for t in plan.tensors if t.component in ("vision", "projector"))
    with pytest.raises(RecipeError, match=r"^components: 'vision' cannot merge: .*lm has no vision component"):
        plan_merge({**recipe, "components": ["language", "vision"]})


@pytest.mark.parametrize(("components", "message"), [
    (["language", "visoin"], r"^components: unknown component 'visoin'; choose from language, vision, projector$"),
    ([], r"^components: empty"),
])
def test_bad_components_are_one_line_errors(vlms, tmp_path: Path, components, message) -> None:
    with pytest.raises(RecipeError, match=message):
        plan_merge(_linear(vlms, tmp_path / "x", components=components))


def test_llava_and_qwen2_vl_vision_do_not_merge(tmp_path: Path) -> None:
    llava = save_model(build_tiny_model("llava", seed=1), tmp_path / "llava")
    qwen = save_model(build_tiny_model("qwen2_vl", seed=1), tmp_path / "qwen")
    with pytest.raises(RecipeError, match=r"components: 'projector' cannot merge: .*qwen_vl model and the host is llava"):
        plan_merge({"merge_method": "linear", "models": [{"model": str(llava)}, {"model": str(qwen)}],
                    "components": ["projector"], "parameters": {"weight": 0.5}}, check_compatibility=False)


def test_live_merge_writes_merged_vision_tensors_as_the_merge_does(vlms, tmp_path: Path) -> None:
    """LiveMerge overwrites every merged tensor, vision and projector included: the live model
    holds what `vlmmerge merge` writes for the same recipe."""
    from vlmmerge.live import LiveMerge
    from vlmmerge.recipe import load_recipe

    out = tmp_path / "out"
    recipe_path = _linear(vlms, out)
    run_merge(recipe_path, out, progress=False)
    live = LiveMerge([str(vlms["a"]), str(vlms["b"])], str(vlms["a"]), load_processor=False)
    live.apply(load_recipe(recipe_path))
    written = load_tensors(out)
    state = live.state_of()
    for name, value in written.items():
        assert torch.equal(state[name], value), name


def test_evolve_candidates_of_vlm_pairs_merge_vision_with_the_catch_all_group(vlms, tmp_path: Path) -> None:
    """An evolve search keeps the merge's default (every shared component) so that its best recipe
    run by `vlmmerge merge` reproduces the candidate: vision tensors match no `model.layers.N.`
    filter and take the catch-all group's value; `components: [language]` is carried into every
    candidate recipe."""
    import numpy as np

    from vlmmerge.recipe import load_recipe
    from vlmmerge.search.space import SearchSpace, parse_evolve

    template = {
        "merge_method": "linear",
        "models": [{"model": str(vlms["a"])}, {"model": str(vlms["b"])}],
    }
    evolve = parse_evolve({"params": ["weight"], "granularity": "layer", "fitness": {"tasks": [{"task": "x"}]}})

    for components in (None, ["language"]):
        recipe = load_recipe({**template, **({"components": components} if components else {})})
        space = SearchSpace(recipe, evolve, num_layers=2)
        genome = np.linspace(0.1, 0.9, space.dimension)
        candidate = space.to_recipe(genome)
        assert candidate.components == components
        plan = plan_merge(candidate)
        decoded = space.decode(genome)
        catch_all = decoded[str(vlms["a"])]["weight"]["embeddings/norm/head"]
        vision = [t for t in plan.tensors if t.component == "vision"]
        assert all(t.merged == (components is None) for t in vision)
        if components is None:
            weights = [plan.member_params(t)[0]["weight"] for t in vision]
            assert weights == pytest.approx([round(catch_all, 8)] * len(vision), abs=1e-8)
