"""Several objectives: the front is non-dominated (against a brute-force check), hypervolume matches
the rectangle formula, NSGA-II / COMO-CMA-ES are deterministic and resume exactly from the journal,
`--pick` rules, and an end-to-end run writes a front whose recipes `vlmmerge merge` reproduces."""

from __future__ import annotations

import json
from itertools import product

import numpy as np
import pytest
import torch
import yaml

from core_helpers import load_tensors, make_evolve_world
from vlmmerge.cli import main as cli_main
from vlmmerge.engine import run_merge
from vlmmerge.errors import RecipeError, VlmMergeError
from vlmmerge.recipe import load_recipe
from vlmmerge.search import Journal, JournalEntry, SearchSpace, run_search
from vlmmerge.search.evolve import split_evolve
from vlmmerge.search.front import hypervolume, non_dominated
from vlmmerge.search.journal import dump_line, parse_line
from vlmmerge.search.multiobjective import ComoStrategy, NsgaStrategy
from vlmmerge.search.objectives import ObjectiveBackend
from vlmmerge.search.pick import parse_rule, pick


def _entry(index, vector, **kw):
    return JournalEntry("nsga2", index, 0, [0.0], {}, float(np.mean(vector)), objectives=list(vector), **kw)


def test_front_is_exactly_the_non_dominated_set():
    rng = np.random.default_rng(3)
    vectors = rng.integers(0, 6, size=(60, 2)).astype(float).tolist()
    entries = [_entry(i, v) for i, v in enumerate(vectors)]
    entries.append(_entry(60, [99.0, 99.0], error="boom"))  # failed: never on the front
    front = non_dominated(entries)
    # brute force: v is on the front iff no w is >= everywhere and > somewhere
    expected = {tuple(v) for v in vectors
                if not any(all(a >= b for a, b in zip(w, v)) and w != v for w in vectors)}
    assert {tuple(e.objectives) for e in front} == expected
    assert len(front) == len(expected)  # one member per distinct vector
    for a, b in product(front, front):
        assert not (all(x >= y for x, y in zip(a.objectives, b.objectives)) and a.objectives != b.objectives)


def test_hypervolume_matches_the_rectangle_formula():
    points = [[1.0, 5.0], [3.0, 4.0], [4.0, 1.0], [2.0, 2.0]]  # the last is dominated
    # staircase above reference 0: 1*5 + (3-1)*4 + (4-3)*1
    assert hypervolume(points) == pytest.approx(5 + 8 + 1)
    assert hypervolume([[2.0, 3.0]], reference=[1.0, 1.0]) == pytest.approx(2.0)
    assert hypervolume([]) == 0.0


def test_pick_rules():
    names = ["ja", "en"]
    members = [{"ja": 10.0, "en": 90.0}, {"ja": 40.0, "en": 60.0}, {"ja": 45.0, "en": 20.0}]
    assert pick(members, parse_rule("ja>=40, en max", names)) == 1
    assert pick(members, parse_rule("ja max", names)) == 2
    assert pick(members, parse_rule("en >= 50, ja max", names)) == 1
    assert pick(members, parse_rule("ja<40", names)) == 0  # no order: best mean objective
    with pytest.raises(VlmMergeError, match="no front member meets"):
        pick(members, parse_rule("ja>=50", names))
    with pytest.raises(VlmMergeError, match="'fr' is not an objective"):
        parse_rule("fr max", names)
    with pytest.raises(VlmMergeError, match="cannot read"):
        parse_rule("ja => 3", names)


def test_journal_keeps_objective_vectors_and_reads_old_lines():
    entry = _entry(4, [1.5, float("-inf")], stages=[{"items": 3, "kept": False}])
    back = parse_line(dump_line(entry).decode(), "x")
    assert back.objectives == [1.5, float("-inf")] and back.stages == [{"items": 3, "kept": False}]
    old = '{"optimizer": "cma", "index": 0, "generation": 0, "genome": [0.1], "params": {}, "fitness": 1.0}'
    assert parse_line(old, "x").objectives is None
    plain = JournalEntry("cma", 0, 0, [0.1], {}, 1.0)
    assert "objectives" not in json.loads(dump_line(plain))  # single-objective lines unchanged


def _space(optimizer, budget=24):
    recipe = {"merge_method": "task_arithmetic", "base_model": "base", "models": [{"model": "a"}, {"model": "b"}],
              "evolve": {"params": ["weight"], "granularity": "layer", "budget": budget, "popsize": 6, "seed": 4,
                         "optimizer": optimizer,
                         "objectives": [{"task": "t1"}, {"task": "t2"}]}}
    template, config = split_evolve(load_recipe(recipe))
    return SearchSpace(template, config, num_layers=2)


def two_goals(genome):
    np.random.random(5)  # an evaluation that draws from the global generator must not move the optimizer
    a, b = float(-np.sum((genome - 0.2) ** 2)), float(-np.sum((genome - 0.8) ** 2))
    return (a + b) / 2, {"objectives": [a, b]}


@pytest.mark.parametrize("strategy", [NsgaStrategy, ComoStrategy])
def test_multiobjective_run_is_deterministic_and_resumes_exactly(tmp_path, strategy):
    space = _space(strategy.name)
    settings = space.config.search

    def run(path, budget=settings.budget):
        backend = ObjectiveBackend(two_goals, space, ["t1", "t2"])
        return run_search(strategy(space, settings, 2), space, backend, Journal(path), budget, progress=False)

    full = run(tmp_path / "a.jsonl")
    assert len(full) == settings.budget and all(len(e.objectives) == 2 for e in full)
    assert full[0].genome == pytest.approx(space.initial_genome().tolist())
    again = run(tmp_path / "b.jsonl")
    assert [e.genome for e in again] == [e.genome for e in full]
    # a run killed after 10 evaluations, resumed: the same genomes, nothing evaluated twice
    run(tmp_path / "c.jsonl", budget=10)
    lines_before = (tmp_path / "c.jsonl").read_text().splitlines()
    resumed = run(tmp_path / "c.jsonl")
    assert [e.genome for e in resumed] == [e.genome for e in full]
    assert (tmp_path / "c.jsonl").read_text().splitlines()[:10] == lines_before
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == settings.budget
    # the search moves toward the trade-off: the front improves on the first population's
    first = non_dominated(full[:6])
    assert hypervolume([e.objectives for e in non_dominated(full)], [-3, -3]) > \
        hypervolume([e.objectives for e in first], [-3, -3])


def test_multiobjective_optimizer_needs_two_objectives():
    recipe = {"merge_method": "task_arithmetic", "base_model": "base", "models": [{"model": "a"}],
              "evolve": {"optimizer": "nsga2", "objectives": [{"task": "x"}, {"task": "x"}]}}
    _, config = split_evolve(load_recipe(recipe))
    from vlmmerge.search.objectives import objective_names

    with pytest.raises(RecipeError, match="names must be unique"):
        objective_names(config.objectives)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_evolve_world(tmp_path_factory.mktemp("pareto"))


def test_pareto_run_end_to_end_with_pick_and_resume(world, tmp_path):
    task = str(world["set"])
    recipe = {
        "merge_method": "task_arithmetic", "base_model": str(world["base"]),
        "models": [{"model": str(world["vlm"])}, {"model": str(world["ft_a"])}], "dtype": "float32", "seed": 5,
        "evolve": {"optimizer": "nsga2", "params": ["weight"], "budget": 6, "popsize": 3, "seed": 1,
                   "objectives": [{"task": task, "metric": "rougeL", "name": "rouge"},
                                  {"task": task, "metric": "concepts", "name": "concepts"}],
                   "fitness": {"limit": 3, "batch_size": 4},
                   "test": {"tasks": [{"task": task}], "limit": 4}},
    }
    path = tmp_path / "pareto.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    assert cli_main(["evolve", str(path), "--out", str(out), "--quiet", "--pick", "concepts max"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    front = json.loads((out / "front.json").read_text())
    assert front["objectives"] == ["rouge", "concepts"]
    journal = Journal(out / "journal.jsonl").of("nsga2")
    assert len(journal) == 6 and all(len(e.objectives) == 2 for e in journal)
    vectors = [[m["fitness"]["rouge"], m["fitness"]["concepts"]] for m in front["members"]]
    assert sorted(map(tuple, vectors)) == sorted(tuple(e.objectives) for e in non_dominated(journal))
    for name in ("front.png", "hypervolume.png", "test/comparison.md", "picked/recipe.yaml", "picked/test/comparison.md"):
        assert (out / name).exists(), name
    table = (out / "test" / "comparison.md").read_text()
    for row in ("evolved", "TIES (untuned)", "source: vlm", "source: ft_a"):
        assert row in table
    for member in front["members"]:  # every member on every objective, with an interval
        assert set(member["test"]) == {"rouge", "concepts"}
        assert all(v["ci"] is not None for v in member["test"].values())
    best_concepts = max(v[1] for v in vectors)
    picked = summary["front"][summary["chosen"]]
    assert picked["fitness"]["concepts"] == best_concepts
    # the picked member's recipe is a static recipe `vlmmerge merge` turns into exactly its model
    run_merge(out / "picked" / "recipe.yaml", tmp_path / "again", progress=False)
    saved, again = load_tensors(out / "picked" / "model"), load_tensors(tmp_path / "again")
    assert all(torch.equal(saved[n], again[n]) for n in saved)
    assert (out / "picked" / "recipe.yaml").read_text() == (out / "front" / f"{summary['chosen']:02d}" / "recipe.yaml").read_text()
    from vlmmerge.search.front_report import demo_front_block

    block = demo_front_block(summary, str(out))
    assert all(f"**front {m['member']:02d}**" in block for m in front["members"]) and "source: vlm" in block
    assert str(out / "front.png") in block
    # running again replays the journal: nothing re-evaluated, the same front
    before = (out / "journal.jsonl").read_text()
    assert cli_main(["evolve", str(path), "--out", str(out), "--quiet", "--no-model"]) == 0
    assert (out / "journal.jsonl").read_text() == before
    assert json.loads((out / "front.json").read_text())["members"] == front["members"]


def test_comocma_keeps_asking_when_scores_are_flat(tmp_path):
    """Discrete scores are often all equal: the kernels must not all stop (that ended a real run)."""
    space = _space("comocma", budget=200)
    backend = ObjectiveBackend(lambda g: (0.0, {"objectives": [0.0, 0.0]}), space, ["t1", "t2"])
    entries = run_search(ComoStrategy(space, space.config.search, 2), space, backend, Journal(tmp_path / "j.jsonl"),
                         200, progress=False)
    assert len(entries) == 200 and len({tuple(e.genome) for e in entries}) > 100
