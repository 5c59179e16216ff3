"""Several objectives instead of one weighted sum: `evolve.objectives`, each a task and a metric (maximised).

    evolve:
      optimizer: nsga2                       # or comocma (cma / random: one objective only)
      objectives:
        - {task: ja_caption, metric: exact_match}
        - {task: en_caption, metric: exact_match, name: en}
        - {task: ja_caption, kind: likelihood}          # mean log-probability of the references
        - {task: arc_easy, kind: lmeval, metric: acc, local_path: tasks/}   # an lm-eval task
      fitness: {split: fitness, batch_size: 100}   # tasks default to the generated objectives' tasks

Each objective has a name (default: its task, `task:likelihood` for likelihood ones) used in the
journal (`objectives` vector, in this order), `front.json`, the pictures and `--pick` rules.
The scalar `fitness` of an entry is the mean of its objectives (what progress bars show).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from vlmmerge.errors import RecipeError

FAILED = float("-inf")


class ObjectiveConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: str  # an eval set / benchmark (generated, likelihood) or an lm-eval task name (lmeval)
    metric: str | None = None  # default: the task's primary metric (lmeval: its first metric)
    name: str | None = None
    kind: Literal["generated", "likelihood", "lmeval"] = "generated"
    local_path: str | None = None  # offline copy of a benchmark; lmeval: a folder of task yamls
    limit: int | None = None  # lmeval only: first N documents

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return f"{self.task}:likelihood" if self.kind == "likelihood" else self.task


def objective_names(objectives: Sequence[ObjectiveConfig]) -> list[str]:
    names = [o.label for o in objectives]
    if len(set(names)) != len(names):
        raise RecipeError(f"evolve.objectives: names must be unique, got {names} (set `name:` on one)")
    return names


def fill_fitness_tasks(data: Any) -> Any:
    """`evolve:` data with objectives and no `fitness.tasks`: the tasks of the generated and
    likelihood objectives become the fitness tasks (split, batch size, limit stay as written)."""
    if not isinstance(data, dict) or not data.get("objectives"):
        return data
    fitness = data.get("fitness")
    fitness = dict(fitness) if isinstance(fitness, dict) else ({} if fitness is None else fitness)
    if isinstance(fitness, dict) and "tasks" not in fitness:
        tasks, seen = [], set()
        for objective in data["objectives"]:
            if not isinstance(objective, dict) or objective.get("kind", "generated") == "lmeval":
                continue
            key = (objective.get("task"), objective.get("local_path"))
            if key in seen:
                continue
            seen.add(key)
            ref = {"task": objective.get("task")}
            if objective.get("local_path"):
                ref["local_path"] = objective["local_path"]
            tasks.append(ref)
        fitness["tasks"] = tasks
    return {**data, "fitness": fitness}


def task_of(objective: ObjectiveConfig, tasks: Sequence[Any]) -> Any:
    """The evaluator's Task an objective scores (matched by reference name, then by Task.name)."""
    from vlmmerge.search.fitness import load_ref
    from vlmmerge.search.space import TaskRef

    for task in tasks:
        if task.name == objective.task:
            return task
    name = load_ref(TaskRef(task=objective.task, local_path=objective.local_path)).name
    for task in tasks:
        if task.name == name:
            return task
    raise RecipeError(f"evolve.objectives: task {objective.task!r} is not among the fitness tasks "
                      f"{[t.name for t in tasks]}")


def chosen_metric(objective: ObjectiveConfig, result: Any, task_name: str) -> str:
    metric = objective.metric or result.primary_metrics[task_name]
    scores = result.scores.get(task_name, {})
    if metric not in scores:
        raise RecipeError(f"evolve.objectives: task {task_name!r} has no metric {metric!r} (have {sorted(scores)})")
    return metric


def generated_values(result: Any, objectives: Sequence[ObjectiveConfig], tasks: Sequence[Any]
                     ) -> dict[str, tuple[float, list[float]]]:
    """Objective name -> (mean, per-item values) for the generated objectives of an EvalResult."""
    values = {}
    for objective in objectives:
        if objective.kind != "generated":
            continue
        task = task_of(objective, tasks)
        metric = chosen_metric(objective, result, task.name)
        items = [0.0 if v is None else float(v) for v in result.per_item(task.name, metric)]
        values[objective.label] = (float(result.scores[task.name][metric]), items)
    return values


@dataclass
class ObjectiveFitness:
    """A fitness function (genome -> (mean objective, scores)) whose scores carry the objective vector
    (`scores["objectives"]`), per-item values of generated objectives (`scores["items"]`) and the
    number of generated items (`scores["generated_items"]`)."""

    materializer: Any  # vlmmerge.search.candidates.Materializer
    evaluator: Any  # vlmmerge.evaluation.Evaluator on the fitness split (None: no generated objectives)
    objectives: list[ObjectiveConfig]
    scorers: dict[str, Any] = field(default_factory=dict)  # name -> scorer(model, processor) -> float

    def __post_init__(self) -> None:
        self.names = objective_names(self.objectives)
        self.generated = [o for o in self.objectives if o.kind == "generated"]

    def __call__(self, genome: np.ndarray) -> tuple[float, dict[str, Any]]:
        model, processor = self.materializer.materialize(genome)
        return self.score_model(model, processor)

    def score_model(self, model: Any, processor: Any) -> tuple[float, dict[str, Any]]:
        values: dict[str, float] = {}
        extra: dict[str, Any] = {"generated_items": 0}
        if self.generated:
            result = self.evaluator.evaluate(model, processor)
            generated = generated_values(result, self.generated, self.evaluator.tasks)
            values.update({name: mean for name, (mean, _) in generated.items()})
            extra["items"] = {name: items for name, (_, items) in generated.items()}
            extra["generated_items"] = sum(len(self.evaluator.items[t.name]) for t in self.evaluator.tasks)
            extra["scores"] = result.scores
        for objective in self.objectives:
            if objective.kind != "generated":
                values[objective.label] = float(self.scorers[objective.label](model, processor))
        vector = [values[name] for name in self.names]
        return mean_objective(vector), {**extra, "objectives": vector}


def mean_objective(vector: Sequence[float]) -> float:
    finite = [v for v in vector if math.isfinite(v)]
    return float(sum(finite) / len(finite)) if len(finite) == len(vector) and vector else FAILED


def make_scorers(objectives: Sequence[ObjectiveConfig], evaluator: Any, seed: int) -> dict[str, Any]:
    """Scorers of the likelihood and lm-eval objectives (generated ones go through the evaluator)."""
    scorers: dict[str, Any] = {}
    for objective in objectives:
        if objective.kind == "likelihood":
            from vlmmerge.evaluation.likelihood import LikelihoodScorer

            scorers[objective.label] = LikelihoodScorer(task_of(objective, evaluator.tasks), evaluator.items)
        elif objective.kind == "lmeval":
            from vlmmerge.evaluation.lmeval import LmEvalScorer

            scorers[objective.label] = LmEvalScorer(objective.task, objective.metric, objective.local_path,
                                                    limit=objective.limit, seed=seed)
    return scorers


def attach_objectives(entry: Any, names: Sequence[str]) -> Any:
    """A journal entry with `objectives` taken out of its scores (every objective failed: -inf)."""
    vector = entry.scores.pop("objectives", None) if isinstance(entry.scores, dict) else None
    if entry.failed or vector is None:
        vector = [FAILED] * len(names)
    entry.objectives = [float(v) for v in vector]
    return entry


class ObjectiveBackend:
    """Serial evaluation through an objective fitness; each entry gets its objective vector."""

    def __init__(self, fitness_fn: Any, space: Any, names: Sequence[str]):
        self.fitness_fn, self.space, self.names = fitness_fn, space, list(names)

    def evaluate_many(self, candidates):
        from vlmmerge.search.candidates import evaluate_candidate

        for candidate in candidates:
            yield attach_objectives(evaluate_candidate(self.fitness_fn, self.space, candidate), self.names)
