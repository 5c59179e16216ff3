"""Journal and optimizer loops: atomic torn-line repair, schema errors naming the line, transient
failures retried once, `--retry-failed`, a private generator for CMA-ES, seeds that never mean the clock."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vlmmerge.recipe import load_recipe
from vlmmerge.search import Journal, SearchSpace, run_cma, run_random
from vlmmerge.search.evolve import split_evolve
from vlmmerge.search.journal import JournalError
from vlmmerge.search.optimize import cma_seed


def _space(budget=9, popsize=3, seed=0, compare_random=False):
    recipe = {
        "merge_method": "task_arithmetic",
        "base_model": "base",
        "models": [{"model": "a"}, {"model": "b"}],
        "evolve": {"params": ["weight"], "budget": budget, "popsize": popsize, "seed": seed,
                   "fitness": {"tasks": [{"task": "unused"}]}},
    }
    template, config = split_evolve(load_recipe(recipe))
    return SearchSpace(template, config, num_layers=2)


def smooth(genome):
    return float(-np.sum((genome - 0.3) ** 2)), {}


def test_resume_is_unaffected_by_fitness_draws_from_numpys_global_generator(tmp_path):
    space = _space(budget=9)
    calls = []

    def fitness(genome):  # deterministic in the genome, but it consumes np.random (as evaluators may)
        calls.append(genome.copy())
        np.random.rand(7)
        return smooth(genome)

    np.random.seed(123)
    full = run_cma(space, fitness, Journal(tmp_path / "full.jsonl"), progress=False)
    # cma drew nothing from the global generator: only the fitness' 9 x 7 draws happened
    after = np.random.rand()
    np.random.seed(123)
    np.random.rand(9 * 7)
    assert after == np.random.rand()

    lines = (tmp_path / "full.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "part.jsonl").write_text("".join(lines[:4]))
    calls.clear()
    np.random.seed(999)  # a resumed process starts from another global state
    resumed = run_cma(space, fitness, Journal(tmp_path / "part.jsonl"), progress=False)
    assert len(calls) == 5
    assert [e.genome for e in resumed] == [e.genome for e in full]
    assert (tmp_path / "part.jsonl").read_text().count("\n") == 9


def test_seed_minus_one_is_deterministic_and_not_the_clock(tmp_path):
    assert cma_seed(-1) == 2**32 - 1 and cma_seed(0) == 1 and cma_seed(7) == 8
    assert all(1 <= cma_seed(s) <= 2**32 - 1 for s in (-(2**40), -1, 0, 2**32 - 2, 2**32 - 1, 2**40))
    space = _space(budget=6, seed=-1)
    first = run_cma(space, smooth, Journal(tmp_path / "a.jsonl"), progress=False)
    second = run_cma(space, smooth, Journal(tmp_path / "b.jsonl"), progress=False)
    assert [e.genome for e in first] == [e.genome for e in second]
    other = run_cma(_space(budget=6, seed=0), smooth, Journal(tmp_path / "c.jsonl"), progress=False)
    assert [e.genome for e in other] != [e.genome for e in first]
    randoms = [run_random(space, smooth, Journal(tmp_path / f"r{i}.jsonl"), progress=False) for i in range(2)]
    assert [e.genome for e in randoms[0]] == [e.genome for e in randoms[1]]


def test_torn_last_line_is_repaired_atomically(tmp_path, monkeypatch):
    run_cma(_space(budget=3), smooth, Journal(tmp_path / "j.jsonl"), progress=False)
    whole = (tmp_path / "j.jsonl").read_bytes()
    torn = whole + whole.splitlines(keepends=True)[0][:25]
    (tmp_path / "j.jsonl").write_bytes(torn)

    import vlmmerge.search.files as files

    def crash(*args):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        Journal(tmp_path / "j.jsonl")
    assert (tmp_path / "j.jsonl").read_bytes() == torn  # not truncated in place
    assert [p.name for p in tmp_path.iterdir()] == ["j.jsonl"]  # no temporary left behind
    monkeypatch.undo()
    assert len(Journal(tmp_path / "j.jsonl").of("cma")) == 3
    assert (tmp_path / "j.jsonl").read_bytes() == whole


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("not json at all", "not a JSON object"),
        (json.dumps({"optimizer": "cma", "index": 1, "generation": 0}), "genome: Field required"),
        (json.dumps({"optimizer": "cma", "index": "1", "generation": 0, "genome": [], "params": {}, "fitness": 1.0}),
         "index: Input should be a valid integer"),
        (json.dumps({"optimizer": "bfgs", "index": 1, "generation": 0, "genome": [], "params": {}, "fitness": 1.0}),
         "optimizer: Input should be"),
        (json.dumps({"optimizer": "cma", "index": 1, "generation": 0, "genome": [], "params": {}, "fitness": 1.0,
                     "colour": "red"}), "colour: Extra inputs"),
    ],
)
def test_entry_that_does_not_match_the_schema_names_the_line(tmp_path, bad, message):
    run_cma(_space(budget=3), smooth, Journal(tmp_path / "j.jsonl"), progress=False)
    lines = (tmp_path / "j.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "j.jsonl").write_text(lines[0] + bad + "\n" + "".join(lines[1:]))
    with pytest.raises(JournalError, match=rf"j\.jsonl:2: .*{message}"):
        Journal(tmp_path / "j.jsonl")


def _flaky(exc_factory, fail_times, at_call=2):
    """A fitness that raises `exc_factory()` on calls at_call .. at_call + fail_times - 1."""
    count = {"n": 0}

    def fitness(genome):
        count["n"] += 1
        if at_call <= count["n"] < at_call + fail_times:
            raise exc_factory()
        return smooth(genome)

    return fitness, count


@pytest.mark.parametrize(
    ("exc_factory", "transient"),
    [
        (lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (lambda: MemoryError(), True),
        (lambda: RuntimeError("CUDA error: an illegal memory access was encountered"), True),
        (lambda: RuntimeError("Expected all tensors to be on the same device, but found cuda:0 and cpu"), False),
        (lambda: ValueError("bad candidate"), False),
    ],
)
def test_transient_failure_is_retried_once(tmp_path, exc_factory, transient):
    space = _space(budget=3)
    fitness, count = _flaky(exc_factory, fail_times=1)
    entries = run_cma(space, fitness, Journal(tmp_path / "once.jsonl"), progress=False)
    assert entries[1].failed is not transient
    assert entries[1].attempts == (2 if transient else 1)
    assert count["n"] == 3 + transient
    fitness, count = _flaky(exc_factory, fail_times=2)  # fails on the retry too: worst fitness
    entries = run_cma(space, fitness, Journal(tmp_path / "twice.jsonl"), progress=False)
    assert entries[1].failed and entries[1].fitness == float("-inf")
    assert Journal(tmp_path / "twice.jsonl").get("cma", 1).attempts == (2 if transient else 1)


def test_nan_fitness_is_not_retried(tmp_path):
    count = {"n": 0}

    def fitness(genome):
        count["n"] += 1
        return (float("nan"), {}) if count["n"] == 1 else smooth(genome)

    entries = run_cma(_space(budget=3), fitness, Journal(tmp_path / "j.jsonl"), progress=False)
    assert entries[0].failed and entries[0].attempts == 1 and count["n"] == 3


def test_retry_failed_reruns_journaled_failures_and_their_consequences(tmp_path):
    space = _space(budget=9, popsize=3)
    healthy = run_cma(space, smooth, Journal(tmp_path / "healthy.jsonl"), progress=False)
    broken, _ = _flaky(lambda: ValueError("disk on fire"), fail_times=1, at_call=2)  # index 1, generation 0
    path = tmp_path / "j.jsonl"
    first = run_cma(space, broken, Journal(path), progress=False)
    assert first[1].failed and [e.genome for e in first[:3]] == [e.genome for e in healthy[:3]]
    assert [e.genome for e in first[3:]] != [e.genome for e in healthy[3:]]  # the failure steered CMA-ES

    calls = []

    def counted(genome):
        calls.append(genome.copy())
        return smooth(genome)

    assert [e.genome for e in run_cma(space, counted, Journal(path), progress=False)] == [e.genome for e in first]
    assert calls == []  # a plain resume replays the failure
    retried = run_cma(space, counted, Journal(path), progress=False, retry_failed=True)
    # the failed candidate, then every candidate of the later generations (asked anew)
    assert len(calls) == 1 + 6
    assert [(e.genome, e.fitness) for e in retried] == [(e.genome, e.fitness) for e in healthy]
    assert [(e.genome, e.fitness) for e in Journal(path).of("cma")] == [(e.genome, e.fitness) for e in healthy]
    assert path.read_text().count("\n") == 9  # stale entries were dropped, not shadowed


def test_retry_failed_in_random_search_reruns_only_the_failures(tmp_path):
    space = _space(budget=5)
    broken, _ = _flaky(lambda: ValueError("no"), fail_times=2, at_call=2)
    path = tmp_path / "j.jsonl"
    first = run_random(space, broken, Journal(path), progress=False)
    assert [e.failed for e in first] == [False, True, True, False, False]
    calls = []
    retried = run_random(space, lambda g: calls.append(g) or smooth(g), Journal(path), progress=False, retry_failed=True)
    assert len(calls) == 2 and not any(e.failed for e in retried)
    assert [e.genome for e in retried] == [e.genome for e in first]
