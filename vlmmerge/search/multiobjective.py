"""Multi-objective strategies with the ask/tell shape of `CmaStrategy`, driven by `run_search`.

`NsgaStrategy`: NSGA-II from `pymoo` (its ask/tell interface). `ComoStrategy`: COMO-CMA-ES from
`comocma` (one CMA-ES kernel per front point, uncrowded hypervolume improvement). Both maximise
the objective vectors they are told (failed candidates get a value worse than every finite one),
start from the search space's initial genome, and are deterministic for a seed: pymoo draws from
its own generator, comocma / cma from a `PrivateNumpyRandom`; nothing an evaluation does to
`np.random` moves them, so a resumed run asks the same genomes and journal replay works as for
single-objective runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vlmmerge.search.optimize import PrivateNumpyRandom, cma_seed, nonnegative_seed
from vlmmerge.search.space import OptimizerConfig, SearchSpace


def penalised_matrix(values: Sequence[Sequence[float]]) -> np.ndarray:
    """Objective vectors (maximised) as a finite matrix: a failed value becomes worse than every finite
    one of its objective (the optimizers need finite numbers)."""
    matrix = np.asarray([[float(v) for v in row] for row in values], dtype=float)
    for column in range(matrix.shape[1]):
        col = matrix[:, column]
        finite = col[np.isfinite(col)]
        worst = finite.min() if finite.size else 0.0
        col[~np.isfinite(col)] = worst - 1e3 - abs(worst)
    return matrix


def source_corners(space: SearchSpace) -> list[np.ndarray]:
    """Per searched model, the genome of that model alone (its weight 1, the others' 0; other genes
    at their initial values), where `weight` is searched and its bounds hold 0 and 1."""
    init = space.initial_genome()
    corners = []
    for model in space.models:
        genome, ok = init.copy(), False
        for i, gene in enumerate(space.genes):
            if gene.param == "weight" and gene.low <= 0.0 and gene.high >= 1.0:
                genome[i] = gene.encode(1.0 if gene.model == model else 0.0)
                ok = True
        if ok:
            corners.append(genome)
    return corners


def initial_population(space: SearchSpace, size: int, seed: int, sigma: float) -> np.ndarray:
    """The first population: the space's initial genome, each searched model alone (`source_corners`),
    points on the line from each of them to the initial genome (1/4, 1/2, 3/4), then genomes drawn from
    the run's seed, alternately around the initial one as CMA-ES starts (normal, `sigma0`, clipped)
    and uniformly over the box. The first front already holds the sources and the plain merge.
    (Tried on the miniature world: only uniform genomes, or only normal ones around the initial genome,
    gave fronts with nothing between "English only" and "Japanese only".)"""
    rng = np.random.default_rng(nonnegative_seed(seed))
    init = space.initial_genome()
    corners = source_corners(space)
    structured = [init, *corners, *[c + t * (init - c) for c in corners for t in (0.25, 0.5, 0.75)]]
    rows = []
    for i in range(size):
        if i < len(structured):
            rows.append(structured[i])
        elif i % 2 == 0:
            rows.append(np.clip(init + sigma * rng.standard_normal(space.dimension), 0.0, 1.0))
        else:
            rows.append(rng.random(space.dimension))
    return np.asarray(rows, dtype=float)


class NsgaStrategy:
    """NSGA-II (`pymoo`) in the [0, 1] box; its first population holds the initial genome."""

    name = "nsga2"
    later_depends = True
    multi_objective = True

    def __init__(self, space: SearchSpace, settings: OptimizerConfig, n_objectives: int):
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.core.problem import Problem
        from pymoo.core.termination import NoTermination

        popsize = settings.population_size(space.dimension)
        self.rng = PrivateNumpyRandom(cma_seed(settings.seed))
        self.problem = Problem(n_var=space.dimension, n_obj=n_objectives, xl=0.0, xu=1.0)
        with self.rng.active():
            self.algorithm = NSGA2(pop_size=popsize, sampling=initial_population(space, popsize, settings.seed, settings.sigma0),
                                   eliminate_duplicates=True)
            self.algorithm.setup(self.problem, termination=NoTermination(), seed=cma_seed(settings.seed),
                                 verbose=False)
        self.population = None

    def ask(self) -> list[np.ndarray]:
        with self.rng.active():
            self.population = self.algorithm.ask()
        return [np.asarray(x, dtype=float) for x in self.population.get("X")]

    def tell(self, genomes: list[np.ndarray], values: list[Sequence[float]]) -> None:
        from pymoo.core.evaluator import Evaluator
        from pymoo.problems.static import StaticProblem

        with self.rng.active():
            static = StaticProblem(self.problem, F=-penalised_matrix(values))
            Evaluator().eval(static, self.population)
            self.algorithm.tell(infills=self.population)


class ComoStrategy:
    """COMO-CMA-ES (`comocma`): `popsize` kernels (default: the CMA-ES population size), each asked
    every generation ("all" kernels at once, the parallel mode), reference point just below 0 on
    every objective (scores are >= 0)."""

    name = "comocma"
    later_depends = True
    multi_objective = True

    def __init__(self, space: SearchSpace, settings: OptimizerConfig, n_objectives: int):
        import comocma

        self.comocma, self.space, self.settings = comocma, space, settings
        self.kernels = settings.popsize or max(4, settings.population_size(space.dimension) // 2)
        self.rng = PrivateNumpyRandom(cma_seed(settings.seed))
        self.restarts = 0
        starts = initial_population(space, self.kernels, settings.seed, settings.sigma0)
        with self.rng.active():  # verb_log 0: comocma and its kernels write no log files
            self.moes = comocma.Sofomore(self._solvers(starts, 0), reference_point=[1.0] * n_objectives,
                                         opts={"verb_log": 0, "verb_disp": 0})

    def _solvers(self, starts: np.ndarray, first: int) -> list:
        # scores are discrete: flat fitness and stagnation must not stop a kernel (cma's defaults would
        # stop them all within a few generations); a kernel stops only when its step size collapses
        options = [{"bounds": [0.0, 1.0], "verbose": -9, "seed": cma_seed(self.settings.seed + first + i),
                    "verb_log": 0, "verb_disp": 0, "popsize": 2, "tolflatfitness": 10**9, "tolstagnation": 10**9,
                    "tolfun": 0, "tolfunhist": 0} for i in range(len(starts))]
        return self.comocma.get_cmas([s.tolist() for s in starts], self.settings.sigma0, options,
                                     number_created_kernels=first)

    def ask(self) -> list[np.ndarray]:
        with self.rng.active():
            if not self.moes._active_indices:  # every kernel stopped: restart with fresh ones, from the seed
                self.restarts += 1
                fresh = np.random.default_rng([nonnegative_seed(self.settings.seed) % 2**32, self.restarts])
                self.moes.add(self._solvers(fresh.random((self.kernels, self.space.dimension)), len(self.moes)))
            return [np.clip(np.asarray(x, dtype=float), 0.0, 1.0) for x in self.moes.ask("all")]

    def tell(self, genomes: list[np.ndarray], values: list[Sequence[float]]) -> None:
        with self.rng.active():
            self.moes.tell(genomes, (-penalised_matrix(values)).tolist())


def make_strategy(space: SearchSpace, settings: OptimizerConfig, n_objectives: int):
    """The strategy `evolve.optimizer` names (cma / random are single-objective: `run_search` tells them the mean)."""
    from vlmmerge.search.optimize import CmaStrategy, RandomStrategy

    if settings.optimizer == "nsga2":
        return NsgaStrategy(space, settings, n_objectives)
    if settings.optimizer == "comocma":
        return ComoStrategy(space, settings, n_objectives)
    return CmaStrategy(space, settings) if settings.optimizer == "cma" else RandomStrategy(space, settings)
