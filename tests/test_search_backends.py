"""Fitness backends and materializers: a backend may answer a population in any order and the run,
its journal and its resume stay exact; the evolve section parses flat or nested to one config."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlmmerge.errors import RecipeError, VlmMergeError
from vlmmerge.recipe import load_recipe
from vlmmerge.search import Journal, SearchSpace, run_cma, run_random
from vlmmerge.search.backends import LocalBackend
from vlmmerge.search.candidates import PSMaterializer
from vlmmerge.search.evolve import apply_overrides, split_evolve
from vlmmerge.search.fitness import ModelFitness
from vlmmerge.search.space import EvolveConfig


def _recipe(**evolve):
    return {
        "merge_method": "task_arithmetic",
        "base_model": "base",
        "models": [{"model": "a"}, {"model": "b"}],
        "evolve": {"params": ["weight"], "granularity": "layer", "budget": 10, "popsize": 4, "seed": 2,
                   "fitness": {"tasks": [{"task": "unused"}]}, **evolve},
    }


def _space(**evolve):
    template, config = split_evolve(load_recipe(_recipe(**evolve)))
    return SearchSpace(template, config, num_layers=2)


def bumpy(genome):
    return float(np.sin(7 * genome).sum() - np.sum((genome - 0.4) ** 2)), {"norm": float(np.linalg.norm(genome))}


class Interrupted(Exception):
    """Stands in for a kill: raised by the backend part way through a population."""


class ShuffledBackend(LocalBackend):
    """Evaluates a whole population, then answers in a seeded random order (as a pool may);
    with `stop_after`, dies after that many answers in total."""

    def __init__(self, fitness_fn, space, seed=0, stop_after=None):
        super().__init__(fitness_fn, space)
        self.rng = np.random.default_rng(seed)
        self.stop_after = stop_after
        self.answered = 0
        self.orders = []

    def evaluate_many(self, candidates):
        results = list(super().evaluate_many(candidates))
        order = self.rng.permutation(len(results))
        self.orders.append([results[i].index for i in order])
        for i in order:
            if self.stop_after is not None and self.answered >= self.stop_after:
                raise Interrupted
            self.answered += 1
            yield results[i]


def _content(path):
    """The journal as a set keyed by (optimizer, index): order of lines does not matter."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {(r["optimizer"], r["index"]): (r["generation"], tuple(r["genome"]), r["fitness"]) for r in rows}


@pytest.mark.parametrize("run", [run_cma, run_random])
def test_out_of_order_backend_gives_the_same_run_and_journal(tmp_path, run):
    space = _space()
    serial = run(space, bumpy, Journal(tmp_path / "serial.jsonl"), progress=False)
    backend = ShuffledBackend(bumpy, space, seed=1)
    shuffled = run(space, backend, Journal(tmp_path / "shuffled.jsonl"), progress=False)
    assert any(order != sorted(order) for order in backend.orders)  # some population really came back shuffled
    lines = [json.loads(line)["index"] for line in (tmp_path / "shuffled.jsonl").read_text().splitlines()]
    assert lines != sorted(lines)  # journaled as they arrived
    assert _content(tmp_path / "shuffled.jsonl") == _content(tmp_path / "serial.jsonl")
    assert [(e.index, e.genome, e.fitness) for e in shuffled] == [(e.index, e.genome, e.fitness) for e in serial]
    assert max(e.fitness for e in shuffled) == max(e.fitness for e in serial)


def test_resume_after_a_kill_in_the_middle_of_a_shuffled_population(tmp_path):
    space = _space()
    reference = run_cma(space, bumpy, Journal(tmp_path / "reference.jsonl"), progress=False)
    path = tmp_path / "killed.jsonl"
    with pytest.raises(Interrupted):  # 6 answers: population 0 whole, 2 of population 1 in random order
        run_cma(space, ShuffledBackend(bumpy, space, seed=3, stop_after=6), Journal(path), progress=False)
    journaled = {index for _, index in _content(path)}
    assert len(journaled) == 6 and journaled != set(range(6))  # a gap in the middle of population 1

    calls = []
    resumed = run_cma(space, lambda g: calls.append(g) or bumpy(g), Journal(path), progress=False)
    assert len(calls) == 10 - 6  # only the missing evaluations
    assert [(e.genome, e.fitness) for e in resumed] == [(e.genome, e.fitness) for e in reference]
    assert _content(path) == _content(tmp_path / "reference.jsonl")


class _Wrong(LocalBackend):
    def __init__(self, fitness_fn, space, mode):
        super().__init__(fitness_fn, space)
        self.mode = mode

    def evaluate_many(self, candidates):
        results = list(super().evaluate_many(candidates))
        if self.mode == "missing":
            results = results[1:]
        elif self.mode == "twice":
            results = results + results[:1]
        return results


@pytest.mark.parametrize(("mode", "message"), [("missing", r"no result for evaluations \[0\]"), ("twice", "twice")])
def test_a_backend_that_loses_or_repeats_a_candidate_is_an_error(tmp_path, mode, message):
    space = _space()
    with pytest.raises(VlmMergeError, match=message):
        run_cma(space, _Wrong(bumpy, space, mode), Journal(tmp_path / "j.jsonl"), progress=False)


def test_ps_materializer_and_model_fitness_score_the_genomes_recipe():
    space = _space()

    class FakeLive:
        recipes = []

        def materialize(self, recipe):
            self.recipes.append(recipe)
            return "model", "processor"

    class FakeEvaluator:
        tasks = [type("Task", (), {"name": "unused"})()]

        def evaluate(self, model, processor):
            assert (model, processor) == ("model", "processor")
            return type("Result", (), {"scores": {"unused": {"m": 40.0}}, "primary_metrics": {"unused": "m"}})()

    live = FakeLive()
    fitness = ModelFitness(PSMaterializer(live, space), FakeEvaluator(), space.config.fitness)
    genome = np.linspace(0.1, 0.9, space.dimension)
    assert fitness(genome) == (40.0, {"scores": {"unused": {"m": 40.0}}})
    assert live.recipes == [space.to_recipe(genome)]


def test_evolve_section_flat_and_nested_parse_to_one_config():
    flat = _recipe(bounds={"weight": [0, 2]}, sigma0=0.2, compare_random=True)["evolve"]
    nested = {
        "space": {"params": ["weight"], "granularity": "layer", "bounds": {"weight": [0, 2]}},
        "search": {"budget": 10, "popsize": 4, "seed": 2, "sigma0": 0.2, "compare_random": True},
        "fitness": flat["fitness"],
    }
    config = EvolveConfig.model_validate(flat)
    assert config == EvolveConfig.model_validate(nested)
    assert config.space.bound("weight") == (0, 2) and config.search.sigma0 == 0.2
    assert config.budget == 10 and config.seed == 2 and config.population_size(99) == 4
    assert config.space.bound("density") == (0.1, 1.0)  # defaults stay per parameter


@pytest.mark.parametrize(
    ("evolve", "message"),
    [
        ({"granularity": 0}, r"^evolve\.granularity: Value error, granularity must be"),
        ({"bounds": {"weight": [2, 1]}}, r"^evolve: Value error, bounds\.weight: lower bound 2"),
        ({"budget": 0}, r"^evolve\.budget: Input should be greater than or equal to 1"),
        ({"bogus": 1}, r"^evolve\.bogus: Extra inputs"),
        ({"search": {"budget": 3}}, r"budget is given both flat and under search"),
        ({"search": {"tempo": 3}}, r"^evolve\.search\.tempo: Extra inputs"),
    ],
)
def test_evolve_errors_name_the_key_as_written(evolve, message):
    with pytest.raises(RecipeError, match=message):
        split_evolve(load_recipe(_recipe(**evolve)))


def test_command_line_overrides_reach_a_nested_section():
    recipe = _recipe()
    evolve = recipe.pop("evolve")
    recipe["evolve"] = {"space": {"params": ["weight"]}, "search": {"budget": 10, "seed": 2},
                        "fitness": evolve["fitness"]}
    overridden = apply_overrides(load_recipe(recipe), {"budget": 3, "seed": 7})
    assert overridden.evolve["search"] == {"budget": 3, "seed": 7}
    _, config = split_evolve(overridden)
    assert (config.budget, config.seed) == (3, 7)
