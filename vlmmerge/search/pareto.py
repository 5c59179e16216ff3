"""`vlmmerge evolve` for recipes with `evolve.objectives`, `evolve.racing` or `evolve.estimate`.

Same run folder as a single-objective run (evolve-recipe.yaml, journal.jsonl, test/, summary.json),
plus, for a multi-objective optimizer (nsga2, comocma):
    front.json           the non-dominated set: fitness-split vector, test-split scores with intervals
    front/NN/recipe.yaml each member as a static recipe (`vlmmerge merge front/03/recipe.yaml OUT`)
    front.png            front members (test split) with the sources and the untuned baselines
    hypervolume.png      hypervolume of the front per generation (fitness split)
    test/                every front member, source and baseline on every objective (intervals);
                         "evolved" there is the picked member (`--pick`), else the best mean objective
    picked/              with --pick: the member's recipe.yaml, its model (model/) and test report (test/)
and, with `estimate`, anchors.json (the anchor items chosen once per run).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlmmerge.errors import RecipeError, VlmMergeError
from vlmmerge.search.files import atomic_write_text
from vlmmerge.search.journal import Journal, JournalEntry
from vlmmerge.search.objectives import (ObjectiveBackend, ObjectiveConfig, ObjectiveFitness, attach_objectives,
                                        generated_values, make_scorers, objective_names)
from vlmmerge.search.optimize import nonnegative_seed, run_search

MULTI = ("nsga2", "comocma")


def objectives_of(config: Any) -> list[ObjectiveConfig]:
    """`evolve.objectives`, or (racing / estimate of a plain fitness) one objective per fitness task."""
    if config.objectives:
        return list(config.objectives)
    return [ObjectiveConfig(task=ref.task, local_path=ref.local_path,
                            metric=ref.metric if isinstance(ref.metric, str) else None) for ref in config.fitness.tasks]


def choose_run_anchors(run: Any, objectives: list[ObjectiveConfig], out_dir: Path, materializer: Any) -> tuple[dict, int]:
    """Anchors per fitness task (anchors.json, or chosen now from sources, baselines and probe genomes)."""
    from vlmmerge.search.estimate import Anchors, choose_anchors
    from vlmmerge.search.objectives import task_of

    path = out_dir / "anchors.json"
    if path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
        return {t: Anchors.from_json(a) for t, a in data["anchors"].items()}, int(data["generated_items"])
    settings = run.config.estimate
    evaluator = run.fitness_evaluator
    live = run.start_live()
    models = [r for name, r in run.comparison_recipes(run.space.to_recipe(run.space.initial_genome())).items()
              if name != "evolved"]
    rng = np.random.default_rng(nonnegative_seed(run.config.seed) + 7)
    around = run.space.initial_genome() + run.config.search.sigma0 * rng.standard_normal((settings.probes, run.space.dimension))
    probes = [run.space.to_recipe(g) for g in np.clip(around, 0.0, 1.0)]
    rows: dict[str, list[list[float]]] = {}
    generated = 0
    for recipe in [*models, *probes]:
        model, processor = live.materialize(recipe)
        result = evaluator.evaluate(model, processor)
        generated += sum(len(v) for v in evaluator.items.values())
        for objective in objectives:
            task = task_of(objective, evaluator.tasks)
            rows.setdefault(task.name, []).append(generated_values(result, [objective], evaluator.tasks)[objective.label][1])
    anchors = {t: choose_anchors(np.asarray(m), settings.anchors, nonnegative_seed(run.config.seed)) for t, m in rows.items()}
    atomic_write_text(path, json.dumps({"anchors": {t: a.to_json() for t, a in anchors.items()},
                                        "generated_items": generated, "matrix": rows}) + "\n")
    return anchors, generated


def make_backend(run: Any, objectives: list[ObjectiveConfig], journal: Journal, multi: bool) -> tuple[Any, int]:
    """The backend for the run's fitness (full, raced or estimated) and the items generated up front."""
    from vlmmerge.search.candidates import PSMaterializer

    config = run.config
    names = objective_names(objectives)
    evaluator = run.fitness_evaluator
    if config.racing and config.estimate:
        raise RecipeError("evolve: use either racing or estimate, not both")
    if (config.racing or config.estimate) and config.backend.kind != "local":
        raise RecipeError("evolve.backend: racing and subset estimation run on the local backend (their decisions "
                          "depend on the candidates before; a pool would change them); use backend kind local")
    if config.racing:
        from vlmmerge.search.racing import RacingBackend

        materializer = PSMaterializer(run.start_live(), run.space)
        return RacingBackend(materializer, evaluator, objectives, run.space, journal, config.racing,
                             nonnegative_seed(config.seed), multi), 0
    if config.estimate:
        from vlmmerge.search.estimate import EstimatedFitness

        materializer = PSMaterializer(run.start_live(), run.space)
        anchors, upfront = choose_run_anchors(run, objectives, run.out_dir, materializer)
        return ObjectiveBackend(EstimatedFitness(materializer, evaluator, objectives, anchors), run.space, names), upfront
    if config.backend.kind == "ray":  # each actor rebuilds the same objective fitness
        from vlmmerge.search.ray_backend import RayBackend, actor_memory, check_device

        check_device(config.backend, run.template.options.device)
        pool = RayBackend(ObjectiveRunFitness(run.template, config, objectives), run.space, config.backend,
                          actor_memory(run.template, run.host_ref).total)
        return PooledObjectives(pool, names), 0
    return ObjectiveBackend(run_objective_fitness(run, objectives), run.space, names), 0


def run_objective_fitness(run: Any, objectives: list[ObjectiveConfig]) -> ObjectiveFitness:
    """An evolve run's candidates scored on every objective (live merge, fitness evaluator, scorers)."""
    from vlmmerge.search.candidates import PSMaterializer

    scorers = make_scorers(objectives, run.fitness_evaluator, nonnegative_seed(run.config.seed))
    return ObjectiveFitness(PSMaterializer(run.start_live(), run.space), run.fitness_evaluator, objectives, scorers)


@dataclass
class ObjectiveRunFitness:
    """A picklable fitness factory for Ray actors: the run's objective fitness, rebuilt in the actor."""

    template: Any  # Recipe, model references resolved
    config: Any  # EvolveConfig
    objectives: list[ObjectiveConfig]

    def __call__(self) -> ObjectiveFitness:
        import os

        from vlmmerge.search.evolve import EvolveRun

        return run_objective_fitness(EvolveRun(self.template, self.config, Path(os.devnull), progress=False),
                                     self.objectives)


@dataclass
class PooledObjectives:
    """A Ray pool's entries with their objective vectors taken out of the scores, as the serial backend does."""

    pool: Any
    names: list[str]

    def evaluate_many(self, candidates):
        for entry in self.pool.evaluate_many(candidates):
            yield attach_objectives(entry, self.names)

    def close(self) -> None:
        self.pool.close()


def test_vector(result: Any, objectives: list[ObjectiveConfig], tasks: list[Any]) -> dict[str, Any]:
    """Test-split values and intervals of the generated objectives."""
    from vlmmerge.search.objectives import chosen_metric, task_of

    out: dict[str, Any] = {}
    for objective in objectives:
        if objective.kind != "generated":
            continue
        task = task_of(objective, tasks)
        metric = chosen_metric(objective, result, task.name)
        out[objective.label] = {"value": result.scores[task.name][metric],
                                "ci": list(result.ci.get(task.name, {}).get(metric, []) or []) or None}
    return out


def run_objective_search(raw: Any, template: Any, config: Any, out_dir: Path, recipe_path: Any, progress: bool = True,
                         save_model: bool = True, retry_failed: bool = False, pick: str | None = None) -> dict[str, Any]:
    from vlmmerge.search.evolve import EvolveRun, claim_run_folder

    started = time.perf_counter()
    objectives = objectives_of(config)
    names = objective_names(objectives)
    multi = config.search.optimizer in MULTI
    if pick:
        if not multi:
            raise RecipeError("--pick chooses a front member: it needs evolve.optimizer nsga2 or comocma")
        from vlmmerge.search.pick import parse_rule

        parse_rule(pick, names)  # a bad rule fails before any evaluation
    if multi and len(objectives) < 2:
        raise RecipeError(f"evolve.optimizer: {config.search.optimizer} needs at least two evolve.objectives")
    run = EvolveRun(template, config, out_dir, progress)
    claim_run_folder(out_dir, raw)
    journal = Journal(out_dir / "journal.jsonl")
    backend, upfront = make_backend(run, objectives, journal, multi)
    from vlmmerge.search.multiobjective import make_strategy

    strategy = make_strategy(run.space, config.search, len(objectives))
    try:
        entries = run_search(strategy, run.space, backend, journal, config.budget, progress, retry_failed)
    finally:
        getattr(backend, "close", lambda: None)()  # a Ray pool's actors
    summary: dict[str, Any] = {
        "recipe": str(recipe_path), "seed": config.seed, "optimizer": config.search.optimizer, "objectives": names,
        "space": run.space.describe(), "evaluations": len(entries), "failed": sum(e.failed for e in entries),
        "fitness_items": cost(entries, run.fitness_evaluator, upfront),
    }
    if config.racing:
        summary["racing"] = {"settings": config.racing.model_dump(),
                             "dropped": sum(1 for e in entries if e.stages and not e.stages[-1].get("complete"))}
        if config.racing.likelihood is not None:  # likelihood first stage: forward passes, no generation
            summary["racing"]["likelihood_dropped"] = sum(1 for e in entries if e.stages and len(e.stages) == 1
                                                          and e.stages[0].get("kind") == "likelihood")
            summary["racing"]["likelihood_items"] = sum(int(e.scores.get("likelihood_items", 0)) for e in entries)
    from vlmmerge.search.report_front import finish_multi, finish_single

    if multi:
        summary.update(finish_multi(run, entries, objectives, names, out_dir, pick, save_model, progress))
    else:
        summary.update(finish_single(run, entries, objectives, out_dir, save_model, progress))
    summary["seconds"] = time.perf_counter() - started
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n")
    if summary.get("pick_error"):
        raise VlmMergeError(f"{summary['pick_error']}; the front is in {out_dir / 'front.json'} (run again with "
                            "another --pick: the journal is replayed)")
    return summary


def cost(entries: list[JournalEntry], evaluator: Any, upfront: int) -> dict[str, Any]:
    """Generated fitness items: spent (candidates + anchor choice) vs every candidate on the full split."""
    full_per_candidate = sum(len(v) for v in evaluator.items.values())
    spent = upfront + sum(int(e.scores.get("generated_items", full_per_candidate)) for e in entries)
    full = full_per_candidate * len(entries)
    return {"generated": spent, "upfront": upfront, "full_split_equivalent": full,
            "ratio": spent / full if full else None}
