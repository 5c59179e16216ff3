"""The README's demo numbers are what the shipped world produces today.

The recorded demo (`docs/results/demo-shipped*.json*`, written by `vlmmerge demo --write-readme`)
keeps both searches' journals. Replaying them through the demo recipes makes the optimizers ask
every recorded genome again (a different genome is an error), and everything after the search
(best recipe, the test report of every source, baseline and the evolved merge, the world table)
is computed afresh on the shipped world and must equal the recorded results; the best candidate's
fitness is re-evaluated as well. A change to the world, the recipes, the merge code, the
evaluation or the search that moves a README number fails here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def replayed(tmp_path_factory, monkeypatch_module):
    from vlmmerge.zoo.refs import WORLD_ENV
    from vlmmerge.zoo.refs import SHIPPED_SPEC
    from vlmmerge.zoo.study import study_world

    out = tmp_path_factory.mktemp("demo")
    for case in ("vlm", "llm"):
        (out / case).mkdir()
        shutil.copyfile(RESULTS / f"demo-shipped-{case}-journal.jsonl", out / case / "journal.jsonl")
    monkeypatch_module.setenv(WORLD_ENV, "shipped")
    result = study_world(SHIPPED_SPEC, out, REPO / "configs", progress=False)
    return out, result


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_replayed_demo_equals_the_recorded_results(replayed):
    out, result = replayed
    recorded = json.loads((RESULTS / "demo-shipped.json").read_text(encoding="utf-8"))
    for case, expected in recorded["cases"].items():
        got = result["cases"][case]
        journal = [json.loads(line) for line in (out / case / "journal.jsonl").read_text().splitlines() if line]
        assert len(journal) == expected["budget"] * 2, f"{case}: the replay evaluated new candidates"
        for key in ("scores", "evolved_vs", "other_tasks", "best_fitness", "random_best_fitness", "cma_reach",
                    "cma_curve", "random_curve", "claims"):
            assert got[key] == expected[key], f"{case}: {key}"
    assert result["world_table"] == recorded["world_table"]


def test_best_candidate_fitness_is_reevaluated_exactly(replayed):
    from vlmmerge.engine import Source, choose_host
    from vlmmerge.live import LiveMerge
    from vlmmerge.recipe import load_recipe
    from vlmmerge.search.fitness import make_evaluator, weighted_fitness
    from vlmmerge.search.space import EvolveConfig

    out, result = replayed
    for case in ("vlm", "llm"):
        best = load_recipe(out / case / "best-recipe.yaml")
        config = EvolveConfig.model_validate(load_recipe(REPO / "configs" / f"demo-{case}.yaml").evolve)
        host = choose_host(best, {ref: Source.open(ref) for ref in best.model_refs})
        live = LiveMerge(best.model_refs, host.ref)
        evaluator = make_evaluator(config.fitness, config.seed)
        model, processor = live.materialize(best)
        fitness, _ = weighted_fitness(evaluator.evaluate(model, processor), config.fitness, evaluator.tasks)
        assert round(fitness, 2) == result["cases"][case]["best_fitness"], case
