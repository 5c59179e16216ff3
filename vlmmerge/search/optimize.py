"""One ask/tell search loop (CMA-ES via `cma`, and a random-search baseline) with journal replay.

Both strategies are deterministic for a seed, so a resumed run replays journaled evaluations instead
of re-running them and reaches exactly the state of an uninterrupted run: the optimizer asks the same
genomes, gets the same fitness values from the journal, and continues from there. Results are keyed
by (optimizer, index), so a backend may answer a population in any order. CMA-ES draws
from a generator of its own (nothing an evaluation does to `np.random` moves it), and every seed,
-1 included, maps to a fixed cma seed (never cma's "seed from the clock").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from tqdm.auto import tqdm

from vlmmerge.errors import VlmMergeError
from vlmmerge.search.backends import FitnessBackend, as_backend
from vlmmerge.search.candidates import FAILED, Candidate, FitnessFn
from vlmmerge.search.journal import Journal, JournalEntry
from vlmmerge.search.space import OptimizerConfig, SearchSpace

__all__ = [
    "FAILED", "FitnessFn", "best_entry", "cma_seed", "evaluations_to_reach", "nonnegative_seed", "run_cma", "run_random",
    "run_search",
]


def cma_seed(seed: int) -> int:
    """A recipe seed as a seed `cma` uses: in [1, 2**32 - 1] (cma reads 0 as 'seed from the clock').
    Seeds 0 .. 2**32 - 2 map to seed + 1; negative seeds wrap around, deterministically."""
    return seed % (2**32 - 1) + 1


def nonnegative_seed(seed: int) -> int:
    """A recipe seed for NumPy / torch / bootstrap generators, which need one >= 0 (< 2**64);
    non-negative seeds are unchanged, negative ones wrap around."""
    return seed % 2**64


class PrivateNumpyRandom:
    """`cma` samples from NumPy's global generator. Every cma call runs inside `active()`, which
    swaps in this run's own state and puts the caller's back afterwards: whatever a fitness
    evaluation draws from `np.random` cannot change the genomes cma asks for."""

    def __init__(self, seed: int):
        self.state = np.random.RandomState(seed).get_state()

    @contextmanager
    def active(self) -> Iterator[None]:
        outside = np.random.get_state()
        np.random.set_state(self.state)
        try:
            yield
        finally:
            self.state = np.random.get_state()
            np.random.set_state(outside)


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
    finite = [v for v in values if np.isfinite(v)]
    worst = max(finite) if finite else 0.0
    return [v if np.isfinite(v) else worst + 1e3 + abs(worst) for v in values]


class CmaStrategy:
    """CMA-ES (`cma`) in the [0, 1] box, drawing from a generator of its own."""

    name = "cma"
    later_depends = True  # a changed fitness changes every later population

    def __init__(self, space: SearchSpace, settings: OptimizerConfig):
        import cma

        seed = cma_seed(settings.seed)
        options = {"seed": seed, "popsize": settings.population_size(space.dimension), "bounds": [0.0, 1.0],
                   "verbose": -9, "maxfevals": settings.budget}
        self.rng = PrivateNumpyRandom(seed)
        with self.rng.active():
            self.strategy = cma.CMAEvolutionStrategy(space.initial_genome().tolist(), settings.sigma0, options)

    def ask(self) -> list[np.ndarray]:
        with self.rng.active():
            return [np.asarray(x) for x in self.strategy.ask()]

    def tell(self, genomes: list[np.ndarray], fitness: list[float]) -> None:
        with self.rng.active():
            self.strategy.tell(genomes, _penalised([-f for f in fitness]))


class RandomStrategy:
    """Uniform random genomes, all drawn up front from the run's seed, handed out a population at a time."""

    name = "random"
    later_depends = False

    def __init__(self, space: SearchSpace, settings: OptimizerConfig):
        rng = np.random.default_rng(nonnegative_seed(settings.seed))
        self.genomes = rng.random((settings.budget, space.dimension))
        self.popsize = settings.population_size(space.dimension)
        self.asked = 0

    def ask(self) -> list[np.ndarray]:
        population = list(self.genomes[self.asked : self.asked + self.popsize])
        self.asked += len(population)
        return population

    def tell(self, genomes: list[np.ndarray], fitness: list[float]) -> None:
        pass


def _replayed_population(
    journal: Journal, candidates: list[Candidate], retry_failed: bool
) -> tuple[dict[int, JournalEntry], list[Candidate]]:
    """The journaled entries of a population (by index) and the candidates still to evaluate."""
    done, todo = {}, []
    for candidate in candidates:
        entry = _replayed(journal, candidate.optimizer, candidate.index, candidate.genome)
        if entry is None or (entry.failed and retry_failed):
            todo.append(candidate)
        else:
            done[candidate.index] = entry
    return done, todo


def _record(journal: Journal, entry: JournalEntry, later_depends: bool) -> None:
    """Journal a new result. A re-evaluated failure (`--retry-failed`) replaces its old line; when that
    changes its fitness and later populations depend on it, their entries are stale and are dropped
    in the same atomic rewrite."""
    old = journal.get(entry.optimizer, entry.index)
    if old is None:
        journal.append(entry)
        return
    changed = later_depends and entry.fitness != old.fitness
    journal.replace(entry, drop=lambda e: changed and e.optimizer == entry.optimizer and e.generation > entry.generation)


def _collect(backend: FitnessBackend, todo: list[Candidate], journal: Journal, later_depends: bool,
             on_result: Callable[[JournalEntry], None]) -> dict[int, JournalEntry]:
    """Evaluate `todo` through the backend, journaling each result as it arrives (in any order)."""
    expected = {(c.optimizer, c.index) for c in todo}
    results: dict[int, JournalEntry] = {}
    for entry in backend.evaluate_many(todo):
        key = (entry.optimizer, entry.index)
        if key not in expected or entry.index in results:
            raise VlmMergeError(f"fitness backend returned {entry.optimizer}#{entry.index}, which was not asked for "
                                "(or twice)")
        _record(journal, entry, later_depends)
        results[entry.index] = entry
        on_result(entry)
    missing = [c.index for c in todo if c.index not in results]
    if missing:
        raise VlmMergeError(f"fitness backend returned no result for evaluations {missing}")
    return results


def run_search(
    strategy: CmaStrategy | RandomStrategy, space: SearchSpace, fitness: FitnessFn | FitnessBackend, journal: Journal,
    budget: int, progress: bool = True, retry_failed: bool = False,
) -> list[JournalEntry]:
    """Ask a population, replay what the journal holds, evaluate the rest through the backend, tell.

    The optimizer is told in the order it asked, whatever order the backend answered in, so the
    run (and a resumed run) is the same for every backend.
    """
    backend = as_backend(fitness, space)
    entries: list[JournalEntry] = []
    desc = {"cma": "CMA-ES", "random": "random search", "nsga2": "NSGA-II", "comocma": "COMO-CMA-ES"}
    bar = tqdm(total=budget, desc=desc.get(strategy.name, strategy.name), unit="eval",
               disable=not progress)

    def advance(entry: JournalEntry) -> None:
        bar.update(1)
        bar.set_postfix(best=f"{max(e.fitness for e in [*entries, entry]):.4g}")

    generation = 0
    while len(entries) < budget:
        genomes = strategy.ask()
        asked = genomes[: budget - len(entries)]
        candidates = [Candidate(strategy.name, len(entries) + i, generation, g) for i, g in enumerate(asked)]
        done, todo = _replayed_population(journal, candidates, retry_failed)
        for entry in done.values():
            advance(entry)
        done.update(_collect(backend, todo, journal, strategy.later_depends, advance))
        population = [done[c.index] for c in candidates]
        entries.extend(population)
        if len(population) == len(genomes):  # multi-objective strategies are told the objective vectors
            multi = getattr(strategy, "multi_objective", False)
            strategy.tell(genomes, [e.objectives if multi else e.fitness for e in population])
        generation += 1
    bar.close()
    return entries


def run_cma(
    space: SearchSpace, fitness: FitnessFn | FitnessBackend, journal: Journal, progress: bool = True,
    retry_failed: bool = False,
) -> list[JournalEntry]:
    settings = space.config.search
    return run_search(CmaStrategy(space, settings), space, fitness, journal, settings.budget, progress, retry_failed)


def run_random(
    space: SearchSpace, fitness: FitnessFn | FitnessBackend, journal: Journal, progress: bool = True,
    retry_failed: bool = False,
) -> list[JournalEntry]:
    settings = space.config.search
    return run_search(RandomStrategy(space, settings), space, fitness, journal, settings.budget, progress, retry_failed)


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
