"""Ask/tell search loops (CMA-ES via `cma`, and a random-search baseline) with journal replay.

Both loops are deterministic for a seed, so a resumed run replays journaled evaluations instead of
re-running them and reaches exactly the state of an uninterrupted run: the optimizer asks the same
genomes, gets the same fitness values from the journal, and continues from there.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from vlmmerge.errors import VlmMergeError
from vlmmerge.search.journal import Journal, JournalEntry
from vlmmerge.search.space import SearchSpace

# fitness function: genome -> (fitness to maximise, per-task scores, decoded parameters)
FitnessFn = Callable[[np.ndarray], tuple[float, dict[str, Any]]]

FAILED = float("-inf")


def cma_seed(seed: int) -> int:
    """`cma` treats seed 0 as 'seed from the clock'; shift so that every recipe seed is reproducible."""
    return seed + 1


def _evaluate(
    fitness_fn: FitnessFn, space: SearchSpace, genome: np.ndarray, optimizer: str, index: int, generation: int
) -> JournalEntry:
    start = time.perf_counter()
    error = None
    try:
        fitness, scores = fitness_fn(genome)
        if not math.isfinite(fitness):
            error, fitness = f"fitness is {fitness}", FAILED
    except Exception as exc:  # a broken candidate must not end a long run
        fitness, scores = FAILED, {}
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
    return JournalEntry(
        optimizer=optimizer,
        index=index,
        generation=generation,
        genome=[float(x) for x in genome],
        params=space.decode(genome),
        fitness=float(fitness),
        scores=scores,
        seconds=time.perf_counter() - start,
        error=error,
    )


def _replayed(journal: Journal, optimizer: str, index: int, genome: np.ndarray) -> JournalEntry | None:
    entry = journal.get(optimizer, index)
    if entry is None:
        return None
    if not np.allclose(entry.genome, genome, atol=1e-9, rtol=0):
        raise VlmMergeError(
            f"{journal.path}: evaluation {optimizer}#{index} in the journal has a different genome than this run "
            "asks for; the run folder belongs to a different recipe or seed (use a new --out)"
        )
    return entry


def _penalised(values: list[float]) -> list[float]:
    """Failed candidates get a loss worse than every finite one (cma needs finite numbers)."""
    finite = [v for v in values if math.isfinite(v)]
    worst = max(finite) if finite else 0.0
    return [v if math.isfinite(v) else worst + 1e3 + abs(worst) for v in values]


def run_cma(
    space: SearchSpace, fitness_fn: FitnessFn, journal: Journal, progress: bool = True
) -> list[JournalEntry]:
    import cma

    config = space.config
    popsize = config.population_size(space.dimension)
    options = {
        "seed": cma_seed(config.seed),
        "popsize": popsize,
        "bounds": [0.0, 1.0],
        "verbose": -9,
        "maxfevals": config.budget,
    }
    strategy = cma.CMAEvolutionStrategy(space.initial_genome().tolist(), config.sigma0, options)
    entries: list[JournalEntry] = []
    bar = tqdm(total=config.budget, desc="CMA-ES", unit="eval", disable=not progress)
    generation = 0
    while len(entries) < config.budget:
        genomes = [np.asarray(x) for x in strategy.ask()]
        losses = []
        for genome in genomes:
            if len(entries) >= config.budget:
                break
            index = len(entries)
            entry = _replayed(journal, "cma", index, genome)
            if entry is None:
                entry = _evaluate(fitness_fn, space, genome, "cma", index, generation)
                journal.append(entry)
            entries.append(entry)
            losses.append(-entry.fitness)
            bar.update(1)
            bar.set_postfix(best=f"{max(e.fitness for e in entries):.4g}")
        if len(losses) == len(genomes):
            strategy.tell(genomes, _penalised(losses))
        generation += 1
    bar.close()
    return entries


def run_random(
    space: SearchSpace, fitness_fn: FitnessFn, journal: Journal, progress: bool = True
) -> list[JournalEntry]:
    config = space.config
    rng = np.random.default_rng(config.seed)
    popsize = config.population_size(space.dimension)
    genomes = rng.random((config.budget, space.dimension))
    entries = []
    bar = tqdm(total=config.budget, desc="random search", unit="eval", disable=not progress)
    for index, genome in enumerate(genomes):
        entry = _replayed(journal, "random", index, genome)
        if entry is None:
            entry = _evaluate(fitness_fn, space, genome, "random", index, index // popsize)
            journal.append(entry)
        entries.append(entry)
        bar.update(1)
        bar.set_postfix(best=f"{max(e.fitness for e in entries):.4g}")
    bar.close()
    return entries


def best_entry(entries: list[JournalEntry]) -> JournalEntry:
    ok = [e for e in entries if not e.failed]
    if not ok:
        raise VlmMergeError("every candidate failed; see the journal for the errors")
    return max(ok, key=lambda e: (e.fitness, -e.index))


def evaluations_to_reach(entries: list[JournalEntry], target: float) -> int | None:
    """1-based number of evaluations after which the best-so-far fitness is >= target."""
    best = FAILED
    for count, entry in enumerate(entries, start=1):
        best = max(best, entry.fitness)
        if best >= target:
            return count
    return None
