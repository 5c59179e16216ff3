"""The end of an objectives run: the best (one objective) or the front (several) written, merged and
tested on the test split against the sources and the untuned baselines (`vlmmerge.search.pareto`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vlmmerge.errors import VlmMergeError
from vlmmerge.search.files import atomic_write_text
from vlmmerge.search.front import hypervolume_curve, non_dominated, plot_front, plot_hypervolume, usable, write_front
from vlmmerge.search.optimize import nonnegative_seed
from vlmmerge.search.racing import dominates
from vlmmerge.search.report import plot_fitness, write_test_report


def _test_evaluator(run: Any):
    return run.test_evaluator or run.evaluator(run.config.fitness, split="test")


def _metrics(run: Any, evaluator: Any) -> dict[str, str | None]:
    from vlmmerge.search.fitness import chosen_metrics

    refs = run.config.test.tasks if run.config.test else run.config.fitness.tasks
    return chosen_metrics(refs, evaluator.tasks)


def _reference_results(run: Any, evaluator: Any) -> dict[str, Any]:
    """Test results of every source alone and the untuned baselines."""
    live = run.start_live()
    results = {}
    recipes = run.comparison_recipes(run.space.to_recipe(run.space.initial_genome()))
    for name, recipe in recipes.items():
        if name == "evolved":
            continue
        model, processor = live.materialize(recipe)
        results[name] = evaluator.evaluate(model, processor, model_name=name)
    return results


def finish_single(run: Any, entries: list, objectives: list, out_dir: Path, save_model: bool, progress: bool) -> dict:
    from vlmmerge.engine import run_merge

    ok = [e for e in entries if usable(e)]
    if not ok:
        raise VlmMergeError("every candidate failed (or was raced out); see the journal")
    best = max(ok, key=lambda e: (e.fitness, -e.index))
    recipe = run.space.to_recipe(np.asarray(best.genome))
    atomic_write_text(out_dir / "best-recipe.yaml", recipe.to_yaml())
    if save_model:
        run_merge(recipe, out_dir / "best-model", overwrite=True, progress=progress)
    plot_fitness({run.config.search.optimizer: entries}, run.config.population_size(run.space.dimension),
                 out_dir / "fitness.png")
    out: dict[str, Any] = {"best": {"index": best.index, "fitness": best.fitness, "params": best.params,
                                    "genome": best.genome}}
    if run.config.test is not None:
        results, metrics = run.evaluate_comparisons(recipe)
        out["test"] = write_test_report(results, metrics, nonnegative_seed(run.config.seed), out_dir / "test")
    return out


def finish_multi(run: Any, entries: list, objectives: list, names: list[str], out_dir: Path, pick: str | None,
                 save_model: bool, progress: bool) -> dict:
    from vlmmerge.search.pareto import test_vector
    from vlmmerge.search.pick import parse_rule
    from vlmmerge.search.pick import pick as choose

    front = non_dominated(entries)
    if not front:
        raise VlmMergeError("every candidate failed; see the journal for the errors")
    curve = hypervolume_curve(entries)
    plot_hypervolume(curve, out_dir / "hypervolume.png", names)
    fitness_values = [dict(zip(names, e.objectives)) for e in front]
    rule = parse_rule(pick, names) if pick else None
    chosen, pick_error = int(np.argmax([np.mean(e.objectives) for e in front])), None
    if rule is not None:
        try:
            chosen = choose(fitness_values, rule)
        except VlmMergeError as exc:  # the front is still written and reported; the run then fails
            rule, pick_error = None, str(exc)

    evaluator = _test_evaluator(run)
    results = _reference_results(run, evaluator)
    live = run.start_live()
    member_results = {}
    for number, entry in enumerate(front):
        model, processor = live.materialize(run.space.to_recipe(np.asarray(entry.genome)))
        member_results[number] = evaluator.evaluate(model, processor, model_name=f"front {number:02d}")
    tests = {e.index: test_vector(member_results[i], objectives, evaluator.tasks) for i, e in enumerate(front)}
    members = write_front(front, names, run.space, out_dir, tests)
    metrics = _metrics(run, evaluator)
    seed = nonnegative_seed(run.config.seed)
    report_results = dict(results)
    for number, result in member_results.items():
        report_results["evolved" if number == chosen else f"front {number:02d}"] = result
    figures = [("Front (test split) with the sources and untuned baselines", "../front.png"),
               ("Hypervolume of the front per generation", "../hypervolume.png")]
    test = write_test_report(report_results, metrics, seed, out_dir / "test", figures=figures)

    references = {name: test_vector(r, objectives, evaluator.tasks) for name, r in results.items()}
    points = {f"front {i:02d}": {"values": {k: v["value"] for k, v in tests[e.index].items()},
                                 "ci": {k: v["ci"] for k, v in tests[e.index].items()}, "kind": "front"}
              for i, e in enumerate(front)}
    for name, vector in references.items():
        points[name] = {"values": {k: v["value"] for k, v in vector.items()}, "ci": {k: v["ci"] for k, v in vector.items()},
                        "kind": "source" if name.startswith("source") else "baseline"}
    tested = [n for n in names if all(n in p["values"] for p in points.values())]
    if len(tested) >= 1:
        plot_front(points, tested, out_dir / "front.png", "Front (test split) with sources and untuned baselines")
    dominated = {name: [i for i, e in enumerate(front)
                        if dominates([tests[e.index][n]["value"] for n in tested], [vector[n]["value"] for n in tested])]
                 for name, vector in references.items()}
    out: dict[str, Any] = {
        "front": members, "chosen": chosen, "pick": pick, "pick_error": pick_error, "hypervolume": curve, "test": test,
        "reference_test": references, "dominated_by_front": dominated,
        "front_dominates_all": all(bool(v) for v in dominated.values()),
        "front_png": str(out_dir / "front.png"), "hypervolume_png": str(out_dir / "hypervolume.png"),
    }
    if rule is not None:
        out["picked"] = write_picked(run, front[chosen], member_results[chosen], results, metrics, seed,
                                     out_dir / "picked", save_model, progress)
    return out


def write_picked(run: Any, entry: Any, result: Any, references: dict, metrics: dict, seed: int, folder: Path,
                 save_model: bool, progress: bool) -> dict:
    """The picked member: its static recipe, its merged model and its test report vs sources and baselines."""
    from vlmmerge.engine import run_merge

    recipe = run.space.to_recipe(np.asarray(entry.genome))
    atomic_write_text(folder / "recipe.yaml", recipe.to_yaml())
    if save_model:
        run_merge(recipe, folder / "model", overwrite=True, progress=progress)
    test = write_test_report({**references, "evolved": result}, metrics, seed, folder / "test")
    return {"index": entry.index, "recipe": str(folder / "recipe.yaml"), "params": entry.params, "test": test}
