"""Evolutionary search: genome mapping, live candidates equal static merges, journal resume, failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from core_helpers import load_tensors, make_evolve_world
from vlmmerge.cli import main as cli_main
from vlmmerge.engine import run_merge
from vlmmerge.errors import RecipeError, VlmMergeError
from vlmmerge.evaluation import EvalResult, paired_bootstrap_diff
from vlmmerge.live import LiveMerge
from vlmmerge.recipe import load_recipe
from vlmmerge.search import EvolveConfig, Journal, SearchSpace, dry_run, layer_groups, run_cma
from vlmmerge.search.evolve import split_evolve
from vlmmerge.search.report import slug

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_evolve_world(tmp_path_factory.mktemp("search"))


def _recipe(world, **evolve):
    return {
        "merge_method": "dare_ties",
        "base_model": str(world["base"]),
        "models": [{"model": str(world["vlm"])}, {"model": str(world["ft_a"])}],
        "dtype": "float32",
        "seed": 5,
        "evolve": {
            "budget": 6,
            "popsize": 3,
            "granularity": 1,
            "fitness": {"tasks": [{"task": str(world["set"])}], "limit": 3, "batch_size": 4},
            **evolve,
        },
    }


def test_layer_groups():
    assert [g.name for g in layer_groups(4, "model")] == ["all"]
    groups = layer_groups(5, 2)
    assert [g.filters for g in groups] == [
        ("model.layers.0.", "model.layers.1."),
        ("model.layers.2.", "model.layers.3."),
        ("model.layers.4.",),
        (),
    ]
    assert len(layer_groups(3, "layer")) == 4


def test_genome_maps_to_parameters_and_back(world):
    template, config = split_evolve(load_recipe(_recipe(world, bounds={"weight": [0.0, 2.0]})))
    space = SearchSpace(template, config, num_layers=2)
    # 2 models x 2 params x (2 layers + non-layer group)
    assert space.dimension == 12
    genome = np.linspace(0.0, 1.0, 12)
    decoded = space.decode(genome)
    vlm = str(world["vlm"])
    assert decoded[vlm]["weight"]["layers 0"] == pytest.approx(0.0)
    assert decoded[vlm]["weight"]["layers 1"] == pytest.approx(2.0 / 11)
    assert decoded[vlm]["density"]["layers 0"] == pytest.approx(0.1 + 0.9 * 3 / 11)
    np.testing.assert_allclose(space.encode(decoded), genome, atol=1e-12)
    recipe = space.to_recipe(genome)
    # The static recipe resolves back to the decoded values for every tensor.
    from vlmmerge.engine import resolve_model_params
    from vlmmerge.methods import get_method

    method = get_method("dare_ties")
    entry = recipe.models[0]
    layer1 = resolve_model_params(recipe, method, entry, "model.layers.1.mlp.up_proj.weight", 1.0)
    assert layer1["weight"] == pytest.approx(decoded[vlm]["weight"]["layers 1"], abs=1e-7)
    emb = resolve_model_params(recipe, method, entry, "model.embed_tokens.weight", 0.0)
    assert emb["density"] == pytest.approx(decoded[vlm]["density"]["embeddings/norm/head"], abs=1e-7)
    assert recipe.evolve is None and yaml.safe_load(recipe.to_yaml())["merge_method"] == "dare_ties"


def test_unknown_search_parameter_is_named(world):
    template, _ = split_evolve(load_recipe(_recipe(world)))
    config = EvolveConfig.model_validate({**_recipe(world)["evolve"], "params": ["weight", "slope"]})
    with pytest.raises(RecipeError, match="slope"):
        SearchSpace(template, config, 2)


def test_live_candidate_equals_static_merge_bit_for_bit(world, tmp_path):
    template, config = split_evolve(load_recipe(_recipe(world)))
    space = SearchSpace(template, config, 2)
    live = LiveMerge(template.model_refs, str(world["vlm"]))
    vision = {n: t.clone() for n, t in live.model.state_dict().items() if "vision_tower" in n}
    for seed in (0, 1):
        genome = np.random.default_rng(seed).random(space.dimension)
        recipe = space.to_recipe(genome)
        live.apply(recipe)
        run_merge(recipe, tmp_path / f"m{seed}", progress=False)
        static = load_tensors(tmp_path / f"m{seed}")
        state = live.model.state_dict()
        for name, value in static.items():
            assert torch.equal(state[name], value), name
    assert all(torch.equal(live.model.state_dict()[n], v) for n, v in vision.items())


def test_resume_repeats_nothing_and_matches_uninterrupted(world, tmp_path):
    template, config = split_evolve(load_recipe(_recipe(world, budget=9)))
    space = SearchSpace(template, config, 2)
    calls = []

    def fitness(genome):  # deterministic in the genome; draws from np.random as an evaluation may
        calls.append(genome.copy())
        np.random.standard_normal(3)
        return float(-np.sum((genome - 0.3) ** 2)), {"toy": 1.0}

    np.random.seed(0)
    full = run_cma(space, fitness, Journal(tmp_path / "full.jsonl"), progress=False)
    assert len(calls) == 9

    # Interrupted after 4 evaluations (mid-generation), with a torn last line, then resumed in a
    # process whose global generator is elsewhere (fewer evaluations have drawn from it).
    lines = (tmp_path / "full.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "part.jsonl").write_text("".join(lines[:4]) + lines[4][:20])
    calls.clear()
    np.random.seed(1)
    resumed = run_cma(space, fitness, Journal(tmp_path / "part.jsonl"), progress=False)
    assert len(calls) == 5  # only the evaluations that were missing
    assert [e.genome for e in resumed] == [e.genome for e in full]
    assert [e.fitness for e in resumed] == [e.fitness for e in full]
    assert len(Journal(tmp_path / "part.jsonl").of("cma")) == 9


def test_failing_candidates_get_worst_fitness_and_run_goes_on(world, tmp_path):
    template, config = split_evolve(load_recipe(_recipe(world)))
    space = SearchSpace(template, config, 2)
    count = {"n": 0}

    def fitness(genome):
        count["n"] += 1
        if count["n"] == 2:
            raise RuntimeError("candidate exploded")
        if count["n"] == 3:
            return float("nan"), {}
        return float(genome.sum()), {}

    entries = run_cma(space, fitness, Journal(tmp_path / "j.jsonl"), progress=False)
    assert len(entries) == config.budget
    assert entries[1].failed and "exploded" in entries[1].error
    assert entries[2].failed and entries[2].fitness == float("-inf")
    reread = Journal(tmp_path / "j.jsonl").of("cma")
    assert reread[1].fitness == float("-inf")


def test_journal_of_another_recipe_is_refused(world, tmp_path):
    template, config = split_evolve(load_recipe(_recipe(world)))
    space = SearchSpace(template, config, 2)
    run_cma(space, lambda g: (float(g.sum()), {}), Journal(tmp_path / "j.jsonl"), progress=False)
    other = SearchSpace(template, config.model_copy(update={"search": config.search.model_copy(update={"seed": 99})}), 2)
    with pytest.raises(VlmMergeError, match="different genome"):
        run_cma(other, lambda g: (float(g.sum()), {}), Journal(tmp_path / "j.jsonl"), progress=False)


def test_evolve_end_to_end_with_resume(world, tmp_path):
    recipe_path = tmp_path / "evolve.yaml"
    # the test task names a metric other than the task's primary one: the comparison must use it
    recipe = _recipe(world, compare_random=True, test={"tasks": [{"task": str(world["set"]), "metric": "concepts"}], "limit": 4})
    recipe_path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    assert cli_main(["evolve", str(recipe_path), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluations"] == {"cma": 6, "random": 6}
    for name in ("fitness.png", "best-recipe.yaml", "journal.jsonl", "test/comparison.md", "test/comparison.html"):
        assert (out / name).exists(), name
    with Image.open(out / "fitness.png") as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100
        plotted = np.asarray(image.convert("RGB"))
    assert len(np.unique(plotted.reshape(-1, 3), axis=0)) > 2  # a drawing, not a blank canvas
    table = (out / "test" / "comparison.md").read_text()
    for row in ("evolved", "TIES (untuned)", "DARE-TIES (untuned)", "source: vlm", "source: ft_a"):
        assert row in table
    assert "Evolved against every other model" in table
    scores = summary["test"]["scores"]["toy_caption"]
    assert {entry["metric"] for entry in scores.values()} == {"concepts"}
    assert set(summary["test"]["evolved_vs"]["toy_caption"]) == set(scores) - {"evolved"}
    # one paired-difference table, rendered with the rest, and it holds the summary's numbers,
    # which are the paired bootstrap of the saved per-item scores (an independent recomputation)
    page = (out / "test" / "comparison.html").read_text()
    assert table.count("against every other model") == 1 and page.count("against every other model") == 1
    assert "Paired bootstrap differences against" not in table and page.rstrip().endswith("</body></html>")
    evolved = EvalResult.load(out / "test" / "models" / "evolved").per_item("toy_caption", "concepts")
    for name, comparison in summary["test"]["evolved_vs"]["toy_caption"].items():
        other = EvalResult.load(out / "test" / "models" / slug(name)).per_item("toy_caption", "concepts")
        diff = paired_bootstrap_diff(evolved, other, seed=0)
        assert comparison["diff"] == pytest.approx(diff.mean_diff) and comparison["ci"] == pytest.approx([diff.lo, diff.hi])
        assert f"| toy_caption | concepts | evolved − {name} | {diff.mean_diff:+.2f} | [{diff.lo:+.2f}, {diff.hi:+.2f}] |" in table
    # The static best recipe reproduces the saved best model bit for bit.
    run_merge(out / "best-recipe.yaml", tmp_path / "again", progress=False)
    saved, again = load_tensors(out / "best-model"), load_tensors(tmp_path / "again")
    assert all(torch.equal(saved[n], again[n]) for n in saved)
    # Running again on the same folder evaluates nothing new and gives the same best.
    journal_before = (out / "journal.jsonl").read_text()
    shutil.rmtree(out / "best-model")
    assert cli_main(["evolve", str(recipe_path), "--out", str(out), "--quiet", "--no-model"]) == 0
    assert (out / "journal.jsonl").read_text() == journal_before
    with Image.open(out / "fitness.png") as image:  # the same journal draws the same picture
        assert np.array_equal(np.asarray(image.convert("RGB")), plotted)
    assert json.loads((out / "summary.json").read_text())["best"] == summary["best"]


@pytest.mark.parametrize("name", ["evovlm-jp.yaml", "evollm-jp.yaml"])
def test_real_recipes_pass_dry_run(name, capsys):
    path = REPO / "configs" / name
    report = dry_run(path)
    assert report["dimension"] > 0 and report["budget"] > 0
    assert cli_main(["evolve", str(path), "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["population"] == report["population"]
