"""Fitness of a candidate: the recipe's task references loaded as Tasks, and their weighted score.

Scores are looked up by `Task.name` (what the evaluator reports), never by the reference's
folder name: a local copy of a benchmark, or a set whose `task.yaml` names it differently from
its folder, scores like any other task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlmmerge.errors import RecipeError
from vlmmerge.search.space import FitnessConfig, TaskRef


def load_ref(ref: TaskRef):
    """A task reference as a Task: `task` names a set or benchmark, `local_path` its offline copy."""
    from vlmmerge.evaluation import load_task

    return load_task(ref.task, path=ref.local_path) if ref.local_path else load_task(ref.task)


def make_evaluator(fitness: FitnessConfig, seed: int, split: str | None = None):
    """The evaluator for a fitness (or test) section; its tasks are in the order of `fitness.tasks`."""
    from vlmmerge.evaluation import Evaluator

    split = split or fitness.split
    return Evaluator(
        [load_ref(ref) for ref in fitness.tasks],
        split=split,
        limit=fitness.limit,
        batch_size=fitness.batch_size,
        seed=seed,
        generation=fitness.generation,
        progress=False,
        compute_ci=split == "test",
    )


def chosen_metrics(refs: Sequence[TaskRef], tasks: Sequence[Any]) -> dict[str, str | None]:
    """Task name -> the metric its reference names (None: the task's primary metric)."""
    return {task.name: (next(iter(ref.metric)) if isinstance(ref.metric, dict) else ref.metric)
            for ref, task in zip(refs, tasks, strict=True)}


def weighted_fitness(result, fitness: FitnessConfig, tasks: Sequence[Any]) -> tuple[float, dict[str, Any]]:
    """Weighted mean over the fitness tasks of each task's chosen metric (the value CMA-ES maximises)."""
    total, weights = 0.0, 0.0
    for ref, task in zip(fitness.tasks, tasks, strict=True):
        scores = result.scores.get(task.name)
        if scores is None:
            raise RecipeError(f"evolve.fitness: no scores for task {task.name!r} (have {sorted(result.scores)})")
        metrics = ref.metric if isinstance(ref.metric, dict) else {ref.metric or result.primary_metrics[task.name]: 1.0}
        missing = [m for m in metrics if m not in scores]
        if missing:
            raise RecipeError(f"evolve.fitness: task {task.name!r} has no metric {missing[0]!r} (have {sorted(scores)})")
        value = sum(w * scores[m] for m, w in metrics.items()) / sum(metrics.values())
        total += ref.weight * value
        weights += ref.weight
    return total / weights, {"scores": result.scores}


@dataclass
class ModelFitness:
    """A fitness function (genome -> fitness, scores): materialise the candidate, evaluate it, weigh the tasks."""

    materializer: Any  # vlmmerge.search.candidates.Materializer
    evaluator: Any  # vlmmerge.evaluation.Evaluator
    config: FitnessConfig

    def __call__(self, genome: np.ndarray) -> tuple[float, dict[str, Any]]:
        model, processor = self.materializer.materialize(genome)
        result = self.evaluator.evaluate(model, processor)
        return weighted_fitness(result, self.config, self.evaluator.tasks)
