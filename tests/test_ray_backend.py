"""The Ray backend on a local two-CPU cluster started once for this module: a Ray run gives the
serial run's journal and best whatever order results arrive in; a dead actor is replaced and its
candidate sent again (once); a candidate whose actor dies twice gets the worst fitness; actors
that would not fit are refused before anything loads; the dry run prints the memory per actor."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
import yaml

from vlmmerge.cli import main as cli_main
from vlmmerge.errors import RecipeError
from vlmmerge.live import LiveMerge
from vlmmerge.recipe import load_recipe
from vlmmerge.search import Journal, SearchSpace, run_cma, run_evolution, run_random
from vlmmerge.search.evolve import dry_run, split_evolve
from vlmmerge.search.ray_backend import BackendConfig, RayBackend, actor_memory, check_device, check_fits



@pytest.fixture(scope="module")
def cluster():
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import tests/
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _space(budget=8, popsize=4):
    recipe = {"merge_method": "task_arithmetic", "base_model": "base", "models": [{"model": "a"}, {"model": "b"}],
              "evolve": {"params": ["weight"], "granularity": "layer", "budget": budget, "popsize": popsize,
                         "seed": 3, "fitness": {"tasks": [{"task": "unused"}]}}}
    template, config = split_evolve(load_recipe(recipe))
    return SearchSpace(template, config, num_layers=2)


def bumpy(genome):
    return float(np.sin(7 * genome).sum() - np.sum((genome - 0.4) ** 2)), {"norm": float(np.linalg.norm(genome))}


def _key(genome) -> str:
    return ",".join(f"{x:.12g}" for x in genome)


@dataclass
class FaultyFitness:
    """Factory of a fitness function whose process dies (os._exit) on the genomes `faults.json` in
    `folder` names: on their first evaluation only (`kill_once`) or every time (`kill_always`).
    Every evaluation that returns is logged to `evaluated.log` (genome key, pid)."""

    folder: str
    delay: float = 0.05

    def __call__(self):
        return self.evaluate

    def evaluate(self, genome):
        folder, key = Path(self.folder), _key(genome)
        faults = json.loads((folder / "faults.json").read_text())
        if key in faults["kill_always"]:
            os._exit(3)
        if key in faults["kill_once"]:
            marker = folder / f"killed-{hashlib.sha1(key.encode()).hexdigest()}"
            if not marker.exists():
                marker.write_text(key)
                os._exit(3)
        time.sleep(self.delay * (1 + int(key[-1]) % 3))  # finish in a shuffled order
        with open(folder / "evaluated.log", "a") as log:
            log.write(f"{key}\t{os.getpid()}\n")
        return bumpy(genome)


@pytest.fixture(scope="class")
def pool(cluster, tmp_path_factory):
    """Two actors of `FaultyFitness`, shared by the fault tests (each sets its faults)."""
    folder = tmp_path_factory.mktemp("faults")
    backend = RayBackend(FaultyFitness(str(folder)), _space(), BackendConfig(kind="ray", actors=2))
    yield backend, folder
    backend.close()


def _faults(folder: Path, kill_once=(), kill_always=()) -> None:
    (folder / "faults.json").write_text(json.dumps({"kill_once": list(kill_once), "kill_always": list(kill_always)}))
    (folder / "evaluated.log").write_text("")


def _rows(entries):
    return [(e.optimizer, e.index, e.generation, e.genome, e.fitness) for e in entries]


def _evaluations(folder: Path) -> list[tuple[str, str]]:
    return [tuple(line.split("\t")) for line in (folder / "evaluated.log").read_text().splitlines()]


class _KillBetween:
    """Kills the pool's first actor (ray.kill) before the population after `after` populations."""

    def __init__(self, backend, after):
        self.backend, self.after, self.calls = backend, after, 0

    def evaluate_many(self, candidates):
        if self.calls == self.after:
            ray.kill(self.backend.actors[0], no_restart=True)
        self.calls += 1
        return self.backend.evaluate_many(candidates)


class TestDeadActors:
    """One pool of two actors for these tests, closed before the next tests ask the cluster for theirs."""

    def test_actor_deaths_are_replaced_and_retried_once_journal_exact(self, pool, tmp_path):
        backend, folder = pool
        space = _space()
        serial = run_cma(space, bumpy, Journal(tmp_path / "serial.jsonl"), progress=False)
        genomes = [_key(e.genome) for e in serial]
        _faults(folder, kill_once=[genomes[1]])
        pids = {str(pid) for pid in ray.get([a.ready.remote() for a in backend.actors])}
        replaced = backend.replaced
        journal = Journal(tmp_path / "ray.jsonl")
        # an actor killed from outside while idle, between two populations: its next candidate is sent again
        entries = run_cma(space, _KillBetween(backend, after=1), journal, progress=False)
        assert backend.replaced - replaced == 2  # each death replaced by a fresh actor
        assert _rows(entries) == _rows(serial)  # the same run: genomes and fitness, in the optimizer's order
        assert [e.attempts for e in entries][:2] == [1, 2] and max(e.attempts for e in entries[2:]) <= 2
        assert sum(e.attempts for e in entries) == 8 + 2 and not any(e.failed for e in entries)
        scored = _evaluations(folder)
        assert sorted(k for k, _ in scored) == sorted(genomes)  # every candidate scored once: none lost, none twice
        assert {pid for _, pid in scored} - pids  # some were scored by the replacement actors
        lines = [json.loads(line) for line in journal.path.read_text().splitlines()]
        assert sorted((r["index"], r["fitness"]) for r in lines) == [(e.index, e.fitness) for e in serial]

    def test_a_candidate_whose_actor_dies_twice_gets_the_worst_fitness_and_the_run_goes_on(self, pool, tmp_path):
        backend, folder = pool
        space = _space()
        serial = run_random(space, bumpy, Journal(tmp_path / "serial.jsonl"), progress=False)
        doomed = _key(serial[2].genome)
        _faults(folder, kill_always=[doomed])
        entries = run_random(space, backend, Journal(tmp_path / "ray.jsonl"), progress=False)
        assert len(entries) == 8 and entries[2].failed and entries[2].fitness == float("-inf")
        assert entries[2].attempts == 2 and "died twice" in entries[2].error
        assert _rows(entries[:2] + entries[3:]) == _rows(serial[:2] + serial[3:])
        assert doomed not in [k for k, _ in _evaluations(folder)] and len(_evaluations(folder)) == 7
        journal = Journal(tmp_path / "ray.jsonl")
        assert journal.get("random", 2).failed and len(journal.of("random")) == 8


def test_actors_that_would_not_fit_are_refused_before_loading(cluster):
    space = _space()
    never = FaultyFitness("/nonexistent")  # would fail if any actor ran it
    too_many = BackendConfig(kind="ray", actors=3)
    with pytest.raises(RecipeError, match=r"3 actor\(s\) of 1 CPU.*do not fit the Ray cluster \(room for 2"):
        RayBackend(never, space, too_many)
    with pytest.raises(RecipeError, match=r"do not fit the Ray cluster \(room for 0"):
        RayBackend(never, space, BackendConfig(kind="ray"), memory_bytes=10**15)  # 1 PB per actor
    with pytest.raises(RecipeError, match=r"memory_per_actor_gb: one actor needs 2 GiB.*limit of 1.5 GiB"):
        check_fits(BackendConfig(kind="ray", memory_per_actor_gb=1.5), 2 * 1024**3)
    with pytest.raises(RecipeError, match=r"gpus_per_actor: options.device is 'cuda' but the actors get no GPU"):
        check_device(BackendConfig(kind="ray"), "cuda")
    with pytest.raises(RecipeError, match=r"gpus_per_actor: 1 GPU per actor but options.device is 'cpu'"):
        check_device(BackendConfig(kind="ray", gpus_per_actor=1), "cpu")
    check_device(BackendConfig(kind="ray", gpus_per_actor=0.5), "cuda:0")


REPO = Path(__file__).resolve().parents[1]


def _demo_recipe(name="demo-llm.yaml", **backend):
    """A shipped miniature-world config, cut to a few candidates on part of the fitness split."""
    recipe = yaml.safe_load((REPO / "configs" / name).read_text())
    evolve = recipe["evolve"]
    evolve.update(budget=6, popsize=3, compare_random=False, baselines=[])
    evolve.pop("test", None)
    evolve["fitness"].update(limit=12, batch_size=12)
    if backend:
        evolve["backend"] = backend
    return recipe


def _write(folder: Path, recipe: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "evolve.yaml").write_text(yaml.safe_dump(recipe))
    return folder / "evolve.yaml"


def test_ray_run_of_live_models_equals_the_serial_run(cluster, tmp_path, monkeypatch):
    monkeypatch.delenv("VLMMERGE_WORLD", raising=False)
    serial = run_evolution(_write(tmp_path / "a", _demo_recipe()), tmp_path / "serial", progress=False,
                           save_model=False)
    pooled = run_evolution(_write(tmp_path / "b", _demo_recipe(kind="ray", actors=2)), tmp_path / "ray",
                           progress=False, save_model=False)

    def journal(run):
        return sorted((r["index"], r["generation"], r["genome"], r["fitness"], r["scores"]) for r in
                      map(json.loads, (tmp_path / run / "journal.jsonl").read_text().splitlines()))

    assert journal("ray") == journal("serial") and len(journal("ray")) == 6
    assert len({row[3] for row in journal("serial")}) > 1  # the fitness really varies between candidates
    assert pooled["best"] == serial["best"]
    assert (tmp_path / "ray" / "best-recipe.yaml").read_text() == (tmp_path / "serial" / "best-recipe.yaml").read_text()
    # the Ray run's folder resumes on the local backend: the journal is replayed, nothing evaluated again
    before = (tmp_path / "ray" / "journal.jsonl").read_text()
    resumed = run_evolution(tmp_path / "a" / "evolve.yaml", tmp_path / "ray", progress=False, save_model=False)
    assert (tmp_path / "ray" / "journal.jsonl").read_text() == before and resumed["best"] == serial["best"]


DFS_RECIPE = {
    "name": "dfs on ray", "merge_method": "passthrough",
    "models": [{"model": "zoo:ja_lm"}, {"model": "zoo:math_lm"}], "tokenizer_source": "zoo:ja_lm", "dtype": "float32",
    "evolve": {
        "dataflow": {"variant": "hop_scales", "repeats": 1, "max_path_length": 5, "scale_bounds": [0.5, 1.5]},
        "sigma0": 0.2, "popsize": 4, "budget": 8,
        "fitness": {"tasks": [{"task": "ja_math", "metric": "accuracy_in_language"}], "limit": 8, "batch_size": 8},
    },
}


def test_dataflow_candidates_go_through_the_same_pool(cluster, tmp_path, monkeypatch):
    """Data-flow paths on Ray: each actor loads the layer-path runtime once; same journal as serial."""
    monkeypatch.delenv("VLMMERGE_WORLD", raising=False)
    pooled_recipe = {**DFS_RECIPE, "evolve": {**DFS_RECIPE["evolve"], "backend": {"kind": "ray", "actors": 2}}}
    serial = run_evolution(_write(tmp_path / "a", DFS_RECIPE), tmp_path / "serial", progress=False, save_model=False)
    pooled = run_evolution(_write(tmp_path / "b", pooled_recipe), tmp_path / "ray", progress=False, save_model=False)

    def journal(run):
        return sorted((r["index"], r["genome"], r["fitness"], r["error"]) for r in
                      map(json.loads, (tmp_path / run / "journal.jsonl").read_text().splitlines()))

    assert journal("ray") == journal("serial") and len(journal("ray")) == 8
    assert pooled["best"] == serial["best"] and pooled["path"] == serial["path"]


def test_multi_objective_candidates_go_through_the_same_pool(cluster, tmp_path, monkeypatch):
    """NSGA-II on Ray: the journal (genomes, objective vectors) and the front equal the serial run's."""
    monkeypatch.delenv("VLMMERGE_WORLD", raising=False)

    def recipe(**backend):
        r = _demo_recipe("demo-vlm-pareto.yaml", **backend)
        r["evolve"].update(budget=8, popsize=4)
        r["evolve"]["fitness"].update(limit=8, batch_size=8)
        return r

    serial = run_evolution(_write(tmp_path / "a", recipe()), tmp_path / "serial", progress=False, save_model=False)
    pooled = run_evolution(_write(tmp_path / "b", recipe(kind="ray", actors=2)), tmp_path / "ray", progress=False,
                           save_model=False)

    def journal(run):
        return sorted((r["index"], r["genome"], r["objectives"], r["error"]) for r in
                      map(json.loads, (tmp_path / run / "journal.jsonl").read_text().splitlines()))

    assert journal("ray") == journal("serial") and len(journal("ray")) == 8
    assert all(len(row[2]) == 2 for row in journal("ray"))
    assert [m["genome"] for m in pooled["front"]] == [m["genome"] for m in serial["front"]]


def test_memory_per_actor_from_headers_matches_the_loaded_live_model(tmp_path, monkeypatch, capsys):
    from vlmmerge.search.evolve import resolve_refs

    monkeypatch.delenv("VLMMERGE_WORLD", raising=False)
    recipe = _demo_recipe("demo-vlm.yaml", kind="ray", actors=2)
    template, _ = split_evolve(resolve_refs(load_recipe(recipe)))
    memory = actor_memory(template, template.host)
    live = LiveMerge(template.model_refs, template.host, load_processor=False)
    models = [m.model_copy(update={"parameters": {"weight": 0.7}}) for m in template.models]
    live.materialize(template.model_copy(update={"models": models}))
    assert sum(memory.cached.values()) == live.cached_bytes  # every cached language tensor, from headers
    params = {id(p): p for p in live.model.parameters()}.values()
    assert memory.model >= sum(p.numel() * p.element_size() for p in params) > sum(memory.cached.values()) / 3
    report = dry_run(_write(tmp_path, recipe))["actor_memory"]
    assert report["actors"] == 2 and report["total_bytes"] == memory.total
    assert cli_main(["evolve", str(tmp_path / "evolve.yaml"), "--dry-run", "--backend", "ray", "--actors", "3"]) == 0
    printed = json.loads(capsys.readouterr().out)["actor_memory"]
    assert printed == {**report, "actors": 3}
    limited = _demo_recipe("demo-vlm.yaml", kind="ray", memory_per_actor_gb=memory.total / 1024**3 / 2)
    with pytest.raises(RecipeError, match="memory_per_actor_gb: one actor needs"):
        dry_run(_write(tmp_path / "limited", limited))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ray_actor_on_a_gpu_equals_the_serial_cuda_run(cluster, tmp_path, monkeypatch):
    monkeypatch.delenv("VLMMERGE_WORLD", raising=False)
    serial = run_evolution(_write(tmp_path / "a", _demo_recipe()), tmp_path / "serial", progress=False,
                           save_model=False, device="cuda")
    pooled = run_evolution(_write(tmp_path / "b", _demo_recipe(kind="ray", actors=1, gpus_per_actor=1)),
                           tmp_path / "ray", progress=False, save_model=False, device="cuda")
    assert pooled["best"] == serial["best"] and pooled["device"] == "cuda"
