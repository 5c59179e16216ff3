"""`vlmmerge tune RECIPE --out RUN`: learn merge coefficients by gradient, then report on the test split.

Run folder (the layout of `vlmmerge evolve`'s):
    tune-recipe.yaml     the recipe that defined the run (a re-run must use the same one)
    journal.jsonl        one line per step (loss, coefficients, seconds); with state.pt the resume point
    state.pt             coefficients and optimizer state after the last checkpointed step
    best-recipe.yaml     the learned coefficients as a static recipe (`vlmmerge merge` reproduces the model)
    best-model/          that recipe merged to disk
    loss.png             training loss per step
    coefficients.png     the learned coefficients, model x layer group
    test/                the comparison report against the sources, untuned baselines and `compare:` recipes
    summary.json         settings, coefficient space, final loss, timings, test summary
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from vlmmerge.errors import VlmMergeError
from vlmmerge.recipe import Recipe, load_recipe
from vlmmerge.search.files import atomic_write_text
from vlmmerge.search.fitness import chosen_metrics, load_ref, make_evaluator
from vlmmerge.search.optimize import nonnegative_seed
from vlmmerge.tune.config import TuneConfig, parse_tune
from vlmmerge.tune.plots import plot_coefficients, plot_loss
from vlmmerge.tune.prompts import encode_prompts
from vlmmerge.tune.trainer import TaskData, Trainer


def load_tune(recipe_path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[Recipe, Recipe, TuneConfig]:
    """(the recipe with overrides, its static template with resolved refs, the validated `tune:` section)."""
    from vlmmerge.search.evolve import resolve_refs

    raw = load_recipe(recipe_path)
    if overrides:
        raw = raw.model_copy(update={"tune": {**(raw.tune or {}), **overrides}})
    config = parse_tune(raw.tune)
    template = resolve_refs(raw).model_copy(update={"tune": None, "evolve": None})
    return raw, template, config


def build_data(merge, config: TuneConfig) -> list[TaskData]:
    """The first `examples` fitness items of every fitness task, tokenised as the evaluator does."""
    data = []
    for ref in config.fitness.tasks:
        task = load_ref(ref)
        items = task.items(config.fitness.split, config.examples)
        if not items:
            raise VlmMergeError(f"tune.fitness: task {task.name!r} has no items in split {config.fitness.split!r}")
        prompts = encode_prompts(task, items, merge.processor, config.answer_format.get(task.name))
        tokens = config.max_new_tokens or task.config.generation.max_new_tokens
        data.append(TaskData(task.name, ref.weight, prompts, tokens))
    return data


def comparison_recipes(template: Recipe, merge, config: TuneConfig, best: Recipe) -> dict[str, Recipe]:
    """Every source alone, the untuned baselines, the `compare:` recipes and the tuned merge."""
    from vlmmerge.search.evolve import reference_recipes, resolve_refs

    host = merge.live.host_ref
    learned = [e.model for e in template.models if e.model != template.base_model]
    recipes = reference_recipes(template, host, config.baselines, learned)
    for name, path in config.compare.items():
        other = resolve_refs(load_recipe(path)).model_copy(update={"evolve": None, "tune": None})
        recipes[name] = other.model_copy(update={"host": other.host or host})
    recipes["evolved"] = best  # the name the shared test report keys the paired differences on
    return recipes


def evaluate_comparisons(template: Recipe, merge, config: TuneConfig, best: Recipe, seed: int) -> tuple[dict, dict]:
    evaluator = make_evaluator(config.test, seed, "test")
    results = {}
    for name, recipe in comparison_recipes(template, merge, config, best).items():
        model, processor = merge.live.materialize(recipe)
        results[name] = evaluator.evaluate(model, processor, model_name=name)
    return results, chosen_metrics(config.test.tasks, evaluator.tasks)


def train(template: Recipe, config: TuneConfig, out_dir: Path, progress: bool = True, stop_after: int | None = None):
    """Build the differentiable merge and train it; (merge, final w, journal entries, seconds)."""
    from vlmmerge.tune.functional import DifferentiableMerge

    started = time.perf_counter()
    merge = DifferentiableMerge(template, config.granularity, config.scale, config.sparsify, config.density,
                                device=template.options.device)
    data = build_data(merge, config)
    w, entries = Trainer(merge, config, data, out_dir, progress).run(stop_after=stop_after)
    return merge, w, entries, time.perf_counter() - started


def run_tune(recipe_path: str | Path, out_dir: str | Path, progress: bool = True, overrides: dict[str, Any] | None = None,
             save_model: bool = True, stop_after: int | None = None) -> dict[str, Any]:
    """Train, then write the run folder (see the module docstring); returns summary.json's content."""
    import torch

    from vlmmerge.engine import run_merge
    from vlmmerge.search.evolve import claim_run_folder

    started = time.perf_counter()
    out_dir = Path(out_dir)
    raw, template, config = load_tune(recipe_path, overrides)
    if config.group_size is not None:
        from vlmmerge.tune.hierarchical import train_hierarchical

        claim_run_folder(out_dir, raw, "tune-recipe.yaml")
        merge, w, entries, train_seconds, stages = train_hierarchical(template, config, out_dir, progress)
    else:
        claim_run_folder(out_dir, raw, "tune-recipe.yaml")
        merge, w, entries, train_seconds = train(template, config, out_dir, progress, stop_after)
        stages = None
    best = merge.static_recipe(w)
    atomic_write_text(out_dir / "best-recipe.yaml", best.to_yaml())
    plot_loss(entries, config.method, out_dir / "loss.png")
    plot_coefficients(merge.space.values(w), merge.space.models, [g.name for g in merge.space.groups],
                      out_dir / "coefficients.png")
    tuned_seconds = time.perf_counter() - started  # trained and written as a recipe: the learned merge's wall time
    if save_model:
        run_merge(best, out_dir / "best-model", overwrite=True, progress=progress)
    summary: dict[str, Any] = {
        "recipe": str(recipe_path),
        "method": config.method,
        "settings": config.model_dump(mode="json", exclude={"fitness", "test", "baselines", "compare"}),
        "dtype": str(merge.dtype).removeprefix("torch."),
        "space": merge.space.describe(),
        "steps": len(entries),
        "final_loss": entries[-1]["loss"] if entries else None,
        "first_loss": entries[0]["loss"] if entries else None,
        "coefficients": dict(zip(merge.space.models, merge.space.values(w))),
        "train_seconds": train_seconds,
        "tune_seconds": tuned_seconds,
        "task_vector_bytes": merge.task_vector_bytes,
        "threads": torch.get_num_threads(),
    }
    if stages is not None:
        summary["hierarchical"] = stages
    if config.test is not None:
        from vlmmerge.search.report import write_test_report

        seed = nonnegative_seed(config.seed)
        results, metrics = evaluate_comparisons(template, merge, config, best, seed)
        summary["test"] = write_test_report(results, metrics, seed, out_dir / "test")
    summary["seconds"] = time.perf_counter() - started
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n")
    return summary
