"""`vlmmerge evolve` with `evolve.dataflow:` on the shipped miniature world (a small budget, few items).

The model a search scores is the model it writes: the exported best-model, loaded from disk and
scored by a fresh evaluator, has the journaled best fitness; `vlmmerge merge best-recipe.yaml`
writes the same tensors; an over-long path is a journaled failure, not a crash; a second run on the
same folder replays the journal and evaluates nothing new.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from core_helpers import load_tensors
from vlmmerge.cli import main as cli_main

pytestmark = pytest.mark.slow

RECIPE = {
    "name": "dfs test", "merge_method": "passthrough",
    "models": [{"model": "zoo:ja_lm"}, {"model": "zoo:math_lm"}], "tokenizer_source": "zoo:ja_lm",
    "dtype": "float32",
    "evolve": {
        "dataflow": {"variant": "hop_scales", "repeats": 1, "max_path_length": 5, "scale_bounds": [0.5, 1.5]},
        "sigma0": 0.2, "popsize": 4, "budget": 8, "compare_random": True,
        "fitness": {"tasks": [{"task": "ja_math", "metric": "accuracy_in_language"}], "limit": 12, "batch_size": 12},
        "test": {"tasks": [{"task": "ja_math", "metric": "accuracy_in_language"}], "limit": 12, "batch_size": 12},
    },
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from vlmmerge.search import run_evolution

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("dfs")
    (root / "r.yaml").write_text(yaml.safe_dump(RECIPE))
    summary = run_evolution(root / "r.yaml", root / "run", progress=False)
    return root, summary


def test_exported_best_model_has_the_journaled_fitness(run):
    from vlmmerge.evaluation import load_model_for_eval
    from vlmmerge.search.fitness import make_evaluator, weighted_fitness
    from vlmmerge.search.space import parse_evolve

    root, summary = run
    config = parse_evolve(RECIPE["evolve"])
    evaluator = make_evaluator(config.fitness, config.seed)
    model, tokenizer = load_model_for_eval(root / "run" / "best-model")
    fitness, _ = weighted_fitness(evaluator.evaluate(model, tokenizer), config.fitness, evaluator.tasks)
    journal = [json.loads(line) for line in (root / "run" / "journal.jsonl").read_text().splitlines()]
    best = max((e for e in journal if e["optimizer"] == "cma" and e["error"] is None), key=lambda e: e["fitness"])
    assert fitness == best["fitness"] == summary["best"]["fitness"] == summary["exported_fitness"]
    assert model.config.num_hidden_layers == summary["best"]["params"]["length"] == len(summary["path"])
    assert summary["test"]["scores"]["ja_math"]["evolved"]["ci"] is not None
    assert {"source: ja_lm", "source: math_lm", "evolved"} <= set(summary["test"]["scores"]["ja_math"])
    assert (root / "run" / "path.png").stat().st_size > 1000 and (root / "run" / "fitness.png").is_file()
    assert summary["path_text"] in (root / "run" / "test" / "path.txt").read_text()


def test_best_recipe_merges_to_the_same_tensors(run, tmp_path):
    root, _ = run
    assert cli_main(["merge", str(root / "run" / "best-recipe.yaml"), str(tmp_path / "again"), "--quiet"]) == 0
    ours, again = load_tensors(root / "run" / "best-model"), load_tensors(tmp_path / "again")
    assert sorted(ours) == sorted(again)
    assert all(torch.equal(ours[n], again[n]) for n in ours)


def test_invalid_paths_are_journaled_failures_and_a_rerun_replays(run):
    from vlmmerge.search import run_evolution

    root, summary = run
    journal = [json.loads(line) for line in (root / "run" / "journal.jsonl").read_text().splitlines()]
    assert len(journal) == 16
    failed = [e for e in journal if e["error"]]
    assert failed and all("InvalidPath" in e["error"] and e["params"]["invalid"] for e in failed)
    assert summary["failed"]["cma"] + summary["failed"]["random"] == len(failed)
    before = (root / "run" / "journal.jsonl").read_text()
    again = run_evolution(root / "r.yaml", root / "run", progress=False, save_model=False)
    assert (root / "run" / "journal.jsonl").read_text() == before
    assert again["best"] == summary["best"]
