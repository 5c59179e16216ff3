"""`vlmmerge evolve`: the scored model is the shipped model (dtype, device), local benchmark copies,
tasks named differently from their folders, and dry runs that need no world built."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from core_helpers import load_tensors, make_evolve_world
from vlmmerge.cli import main as cli_main
from vlmmerge.engine import run_merge
from vlmmerge.errors import VlmMergeError
from vlmmerge.evaluation import EvalResult, load_model_for_eval
from vlmmerge.evaluation.toy import write_benchmark_copy
from vlmmerge.live import LiveMerge
from vlmmerge.recipe import load_recipe
from vlmmerge.search import Journal, SearchSpace, dry_run, run_evolution
from vlmmerge.search.evolve import split_evolve
from vlmmerge.search.fitness import make_evaluator, weighted_fitness
from vlmmerge.search.space import FitnessConfig

REPO = Path(__file__).resolve().parents[1]
# Long enough that the random tiny models' generations differ between float32 and bfloat16 weights.
GENERATION = {"max_new_tokens": 32, "num_beams": 1}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_evolve_world(tmp_path_factory.mktemp("scored"))


def _recipe(world, dtype="float32", task=None, **evolve):
    task = task or {"task": str(world["set"])}
    return {
        "merge_method": "dare_ties",
        "base_model": str(world["base"]),
        "models": [{"model": str(world["vlm"])}, {"model": str(world["ft_a"])}],
        "dtype": dtype,
        "seed": 5,
        "evolve": {
            "budget": 2, "popsize": 2, "granularity": "model", "baselines": [],
            "fitness": {"tasks": [task], "limit": 2, "batch_size": 4, "generation": GENERATION},
            **evolve,
        },
    }


def _write(tmp_path: Path, recipe: dict) -> Path:
    path = tmp_path / "evolve.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize(
    ("dtype", "device"),
    [("bfloat16", "cpu"), ("float32", "cpu"), pytest.param("bfloat16", "cuda", marks=CUDA)],
)
def test_best_model_from_disk_reproduces_fitness_and_test_report(world, tmp_path, dtype, device):
    test = {"tasks": [{"task": str(world["set"])}], "limit": 4, "batch_size": 4, "generation": GENERATION}
    recipe = _recipe(world, dtype, test=test)
    out = tmp_path / "run"
    summary = run_evolution(_write(tmp_path, recipe), out, progress=False, device=device)
    assert summary["dtype"] == dtype and summary["device"] == device
    model, processor = load_model_for_eval(out / "best-model", device=device, dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}

    # the test report's evolved row, predictions included, is what best-model/ gives from disk
    again = make_evaluator(FitnessConfig.model_validate(test), 0, split="test").evaluate(model, processor)
    saved = EvalResult.load(out / "test" / "models" / "evolved")
    assert [s["prediction"] for s in again.samples] == [s["prediction"] for s in saved.samples]
    assert again.scores == saved.scores
    assert summary["test"]["scores"]["toy_caption"]["evolved"]["value"] == again.scores["toy_caption"]["rougeL"]

    # and the best journaled fitness is what best-model/ scores on the fitness split
    fitness_config = FitnessConfig.model_validate(recipe["evolve"]["fitness"])
    evaluator = make_evaluator(fitness_config, 0)
    fitness, _ = weighted_fitness(evaluator.evaluate(model, processor), fitness_config, evaluator.tasks)
    journal = Journal(out / "journal.jsonl").of("cma")
    assert fitness == journal[summary["best"]["index"]].fitness


def test_bfloat16_live_model_holds_the_bfloat16_merge(world, tmp_path):
    template, config = split_evolve(load_recipe(_recipe(world, "bfloat16", granularity=1)))
    space = SearchSpace(template, config, 2)
    live = LiveMerge(template.model_refs, str(world["vlm"]), dtype=torch.bfloat16)
    recipe = space.to_recipe(np.random.default_rng(3).random(space.dimension))
    live.apply(recipe)
    run_merge(recipe, tmp_path / "merged", progress=False)
    state = live.model.state_dict()
    static = load_tensors(tmp_path / "merged")
    assert {v.dtype for v in static.values() if v.is_floating_point()} == {torch.bfloat16}
    for name, value in static.items():
        assert state[name].dtype == value.dtype and torch.equal(state[name], value), name
    with pytest.raises(VlmMergeError, match="recipe writes float32 tensors but the live model holds bfloat16"):
        live.apply(recipe.model_copy(update={"dtype": "float32"}))


def test_dtype_and_device_overrides_reach_the_live_model_and_the_run_record(world, tmp_path):
    out = tmp_path / "run"
    path = _write(tmp_path, _recipe(world, "float32"))
    assert cli_main(["evolve", str(path), "--out", str(out), "--quiet", "--dtype", "bfloat16", "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dtype"] == "bfloat16" and summary["device"] == "cpu"
    assert yaml.safe_load((out / "best-recipe.yaml").read_text())["dtype"] == "bfloat16"
    assert {t.dtype for t in load_tensors(out / "best-model").values() if t.is_floating_point()} == {torch.bfloat16}
    # the journal's numbers were computed in bfloat16: resuming in float32 is another run
    with pytest.raises(VlmMergeError, match="different recipe"):
        run_evolution(path, out, progress=False, dtype="float32")
    if not torch.cuda.is_available():
        with pytest.raises(VlmMergeError, match="'cuda' requested but CUDA is not available"):
            run_evolution(path, tmp_path / "other", progress=False, device="cuda")
        assert not (tmp_path / "other").exists()


def test_seed_minus_one_runs_end_to_end_and_reproducibly(world, tmp_path):
    test = {"tasks": [{"task": str(world["set"]), "metric": "concepts"}], "limit": 2, "generation": GENERATION}
    path = _write(tmp_path, _recipe(world, test=test, budget=3))
    runs = [run_evolution(path, tmp_path / f"run{i}", progress=False, overrides={"seed": -1}, save_model=False)
            for i in range(2)]
    assert runs[0]["cma_seed"] == 2**32 - 1
    genomes = [[e.genome for e in Journal(tmp_path / f"run{i}" / "journal.jsonl").of("cma")] for i in range(2)]
    assert genomes[0] == genomes[1]
    assert runs[0]["best"] == runs[1]["best"] and runs[0]["test"]["scores"] == runs[1]["test"]["scores"]


def test_benchmark_given_by_a_local_copy(world, tmp_path):
    copy = write_benchmark_copy("ja-vg-vqa-500", tmp_path / "vg", n_test=2, n_train=2, fmt="parquet")
    recipe = _recipe(world, task={"task": "ja-vg-vqa-500", "local_path": str(copy), "metric": "rougeL"})
    summary = run_evolution(_write(tmp_path, recipe), tmp_path / "run", progress=False, save_model=False)
    assert summary["failed"] == {"cma": 0}
    entries = Journal(tmp_path / "run" / "journal.jsonl").of("cma")
    assert all(set(e.scores["scores"]) == {"ja-vg-vqa-500"} for e in entries)
    assert [e.fitness for e in entries] == [e.scores["scores"]["ja-vg-vqa-500"]["rougeL"] for e in entries]


def test_missing_task_fails_before_the_run_folder_is_made(world, tmp_path):
    recipe = _recipe(world, test={"tasks": [{"task": str(tmp_path / "no-such-set")}]})
    with pytest.raises(VlmMergeError, match="no-such-set"):
        run_evolution(_write(tmp_path, recipe), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_fitness_uses_the_task_name_not_the_folder_name(world, tmp_path):
    renamed = shutil.copytree(world["set"], tmp_path / "a-folder-named-otherwise")
    recipe = _recipe(world, task={"task": str(renamed), "metric": "concepts", "weight": 2.0})
    summary = run_evolution(_write(tmp_path, recipe), tmp_path / "run", progress=False, save_model=False)
    assert summary["failed"] == {"cma": 0}
    for entry in Journal(tmp_path / "run" / "journal.jsonl").of("cma"):
        assert entry.fitness == entry.scores["scores"]["toy_caption"]["concepts"]


def _forbid_building(monkeypatch):
    import vlmmerge.zoo.build as build
    import vlmmerge.zoo.refs as refs

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run must not build or open the miniature world")

    monkeypatch.setattr(refs, "world_paths", refuse)
    monkeypatch.setattr(build, "ensure_zoo", refuse)
    monkeypatch.setattr(build, "build_zoo", refuse)


@pytest.mark.parametrize("name", ["demo-vlm.yaml", "demo-llm.yaml"])
def test_dry_run_of_demo_configs_needs_no_world(name, monkeypatch, tmp_path, capsys):
    from vlmmerge.zoo.models import ARCHITECTURES

    _forbid_building(monkeypatch)
    monkeypatch.setenv("VLMMERGE_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("VLMMERGE_WORLD", raising=False)
    path = REPO / "configs" / name
    assert cli_main(["evolve", str(path), "--dry-run"]) == 0
    report = json.loads(capsys.readouterr().out)
    config = yaml.safe_load(path.read_text())["evolve"]
    layers = ARCHITECTURES["demo"].layers
    assert report["num_layers"] == (layers if config.get("granularity", "model") != "model" else 1)
    groups = {"model": 1, "layer": layers + 1}.get(config.get("granularity", "model"))
    assert report["dimension"] == len(report["models"]) * len(config.get("params", ["weight", "density"])) * groups
    assert json.loads(json.dumps(dry_run(path))) == report
