"""`vlmmerge evolve`: search merge parameters with CMA-ES on a fitness split, then report on the test split.

Run folder layout:
    evolve-recipe.yaml   the recipe that defined the run (a re-run must use the same one)
    journal.jsonl        every evaluation (cma and random), appended as it happens; the resume point
    best-recipe.yaml     the best genome as a static recipe (`vlmmerge merge best-recipe.yaml OUT`)
    best-model/          that recipe merged to disk
    fitness.png          best-so-far and population fitness per generation
    test/                per-model test-split results and the comparison report (report.md/html)
    summary.json         search space, seeds, best fitness, evaluation counts, timings
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vlmmerge.engine import Source, run_merge
from vlmmerge.errors import RecipeError, VlmMergeError
from vlmmerge.recipe import ModelEntry, Recipe, load_recipe
from vlmmerge.search.journal import Journal, JournalEntry
from vlmmerge.search.optimize import best_entry, evaluations_to_reach, run_cma, run_random
from vlmmerge.search.space import EvolveConfig, FitnessConfig, SearchSpace


def resolve_model_ref(ref: str) -> str:
    """`zoo:NAME` or `zoo:SIZE/NAME` -> the cached miniature-world model (built on first use)."""
    if not ref.startswith("zoo:"):
        return ref
    spec = ref[len("zoo:"):]
    size, _, name = spec.rpartition("/")
    from vlmmerge.zoo import ensure_zoo

    paths = ensure_zoo(size or "demo", 0)
    try:
        return str(getattr(paths, name))
    except AttributeError:
        raise RecipeError(f"{ref}: the miniature world has no model {name!r}") from None


def resolve_refs(recipe: Recipe) -> Recipe:
    mapping = {ref: resolve_model_ref(ref) for ref in recipe.model_refs + [recipe.host or ""] if ref}
    models = [ModelEntry(model=mapping[e.model], parameters=e.parameters) for e in recipe.models]
    update: dict[str, Any] = {"models": models}
    if recipe.base_model:
        update["base_model"] = mapping[recipe.base_model]
    if recipe.host:
        update["host"] = mapping[recipe.host]
    if recipe.tokenizer_source:
        update["tokenizer_source"] = resolve_model_ref(recipe.tokenizer_source)
    return recipe.model_copy(update=update)


def split_evolve(recipe: Recipe) -> tuple[Recipe, EvolveConfig]:
    if not recipe.evolve:
        raise RecipeError("recipe has no `evolve:` section")
    try:
        config = EvolveConfig.model_validate(recipe.evolve)
    except Exception as exc:
        raise RecipeError(f"evolve: {exc}") from None
    return recipe.model_copy(update={"evolve": None}), config


def count_layers_offline(recipe: Recipe, config: EvolveConfig) -> int | None:
    if config.num_layers:
        return config.num_layers
    if config.granularity == "model":
        return 1
    from transformers import AutoConfig

    for ref in recipe.model_refs:
        try:
            cfg = AutoConfig.from_pretrained(ref)
        except Exception:
            continue
        text = getattr(cfg, "text_config", None) or cfg
        return int(text.num_hidden_layers)
    return None


def dry_run(recipe_path: str | Path) -> dict[str, Any]:
    """Validate a recipe and size its search without reading any weights."""
    from vlmmerge.engine import validate_parameter_names
    from vlmmerge.methods import get_method

    template, config = split_evolve(load_recipe(recipe_path))
    method = get_method(template.merge_method)
    if method.needs_base and not template.base_model:
        raise RecipeError(f"base_model: merge_method {method.name} needs a `base_model`")
    validate_parameter_names(template, method)
    layers = count_layers_offline(template, config)
    if layers is None:
        raise RecipeError(
            "evolve.num_layers: cannot read any model config offline to count layers; set evolve.num_layers"
        )
    space = SearchSpace(template, config, layers)
    return {"recipe": str(recipe_path), "merge_method": method.name, "models": template.model_refs, **space.describe()}


def weighted_fitness(result, fitness: FitnessConfig) -> tuple[float, dict[str, Any]]:
    total, weights = 0.0, 0.0
    for ref in fitness.tasks:
        name = task_name(ref.task)
        metric = ref.metric or result.primary_metrics[name]
        total += ref.weight * result.scores[name][metric]
        weights += ref.weight
    return total / weights, {"scores": result.scores}


def task_name(task: str) -> str:
    return Path(task).name if ("/" in task or Path(task).exists()) else task


@dataclass
class EvolveRun:
    template: Recipe
    config: EvolveConfig
    out_dir: Path
    progress: bool = True
    live: Any = field(init=False, default=None)
    space: SearchSpace = field(init=False)

    def __post_init__(self) -> None:
        from vlmmerge.engine import choose_host

        sources = {ref: Source.open(ref) for ref in self.template.model_refs}
        host = choose_host(self.template, sources)
        self.host_ref = host.ref
        self.space = SearchSpace(self.template, self.config, host.anatomy.num_layers)

    def start_live(self):
        if self.live is None:
            from vlmmerge.live import LiveMerge

            self.live = LiveMerge(self.template.model_refs, self.host_ref)
        return self.live

    def evaluator(self, fitness: FitnessConfig, split: str | None = None):
        from vlmmerge.evaluation import Evaluator, load_task

        tasks = [load_task(t.local_path or t.task) for t in fitness.tasks]
        return Evaluator(
            tasks,
            split=split or fitness.split,
            limit=fitness.limit,
            batch_size=fitness.batch_size,
            seed=self.config.seed,
            progress=False,
            compute_ci=split == "test",
        )

    def fitness_fn(self):
        live = self.start_live()
        evaluator = self.evaluator(self.config.fitness)

        def evaluate(genome: np.ndarray) -> tuple[float, dict[str, Any]]:
            live.apply(self.space.to_recipe(genome))
            result = evaluator.evaluate(live.model, live.processor)
            return weighted_fitness(result, self.config.fitness)

        return evaluate

    def search(self) -> dict[str, list[JournalEntry]]:
        journal = Journal(self.out_dir / "journal.jsonl")
        fitness = self.fitness_fn()
        runs = {"cma": (run_cma if self.config.optimizer == "cma" else run_random)(self.space, fitness, journal, self.progress)}
        if self.config.compare_random and self.config.optimizer == "cma":
            runs["random"] = run_random(self.space, fitness, journal, self.progress)
        return runs

    def comparison_recipes(self, best: Recipe) -> dict[str, Recipe]:
        """Every source alone, the untuned baselines, and the evolved merge, for the test split."""
        template = self.template
        recipes: dict[str, Recipe] = {}
        for ref in dict.fromkeys(e.model for e in template.models):
            recipes[f"source: {Path(ref).name}"] = Recipe(
                merge_method="linear", models=[ModelEntry(model=ref, parameters={"weight": 1.0})], host=self.host_ref,
                dtype=template.dtype, seed=template.seed,
            )
        searched = self.space.models
        for baseline in self.config.baselines:
            entries = [
                ModelEntry(model=e.model, parameters={"weight": baseline.weight, "density": baseline.density})
                if e.model in searched else e
                for e in template.models
            ]
            recipes[baseline.name] = template.model_copy(update={"merge_method": baseline.merge_method, "models": entries})
        recipes["evolved"] = best
        return recipes


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower()


def run_evolution(
    recipe_path: str | Path, out_dir: str | Path, progress: bool = True, overrides: dict[str, Any] | None = None,
    save_model: bool = True,
) -> dict[str, Any]:
    started = time.perf_counter()
    out_dir = Path(out_dir)
    raw = load_recipe(recipe_path)
    if overrides:
        raw = raw.model_copy(update={"evolve": {**(raw.evolve or {}), **overrides}})
    template, config = split_evolve(resolve_refs(raw))
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe_copy = out_dir / "evolve-recipe.yaml"
    recipe_text = yaml.safe_dump(raw.model_dump(mode="json", exclude_none=True), sort_keys=False, allow_unicode=True)
    if recipe_copy.exists() and recipe_copy.read_text(encoding="utf-8") != recipe_text:
        raise VlmMergeError(f"{out_dir} holds a run of a different recipe; choose another --out")
    recipe_copy.write_text(recipe_text, encoding="utf-8")

    run = EvolveRun(template, config, out_dir, progress)
    runs = run.search()
    best = best_entry(runs["cma"])
    best_recipe = run.space.to_recipe(np.asarray(best.genome))
    (out_dir / "best-recipe.yaml").write_text(best_recipe.to_yaml(), encoding="utf-8")
    if save_model:
        run_merge(best_recipe, out_dir / "best-model", overwrite=True, progress=progress)

    from vlmmerge.search.report import plot_fitness, write_test_report

    plot_fitness(runs, run.space.config.population_size(run.space.dimension), out_dir / "fitness.png")
    summary: dict[str, Any] = {
        "recipe": str(recipe_path),
        "seed": config.seed,
        "cma_seed": config.seed + 1,
        "space": run.space.describe(),
        "best": {"index": best.index, "fitness": best.fitness, "params": best.params, "genome": best.genome},
        "evaluations": {name: len(entries) for name, entries in runs.items()},
        "failed": {name: sum(e.failed for e in entries) for name, entries in runs.items()},
    }
    if "random" in runs:
        random_best = max(e.fitness for e in runs["random"])
        reach = evaluations_to_reach(runs["cma"], random_best)
        summary["random_best_fitness"] = random_best
        summary["cma_evaluations_to_reach_random_best"] = reach
        summary["cma_reaches_random_best_in_half_budget"] = reach is not None and reach <= len(runs["random"]) / 2
    if config.test is not None:
        summary["test"] = write_test_report(run, best_recipe, out_dir / "test")
    summary["seconds"] = time.perf_counter() - started
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n")
    return summary


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
