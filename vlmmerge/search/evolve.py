"""`vlmmerge evolve`: search merge parameters with CMA-ES on a fitness split, then report on the test split.

Run folder layout:
    evolve-recipe.yaml   the recipe that defined the run (a re-run must use the same one)
    journal.jsonl        every evaluation (cma and random), appended as it happens; the resume point
    best-recipe.yaml     the best genome as a static recipe (`vlmmerge merge best-recipe.yaml OUT`)
    best-model/          that recipe merged to disk: exactly the tensors that were scored (recipe dtype)
    fitness.png          best-so-far and population fitness per generation
    test/                the comparison report (comparison.md/html/json) and models/<slug>/ per model
    summary.json         search space, seeds, best fitness, evaluation counts, timings
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vlmmerge.engine import Source, parse_dtype, run_merge
from vlmmerge.errors import RecipeError, VlmMergeError
from vlmmerge.recipe import ModelEntry, Recipe, load_recipe
from vlmmerge.search.files import atomic_write_text, remove_stale_temporaries
from vlmmerge.search.backends import FitnessBackend, LocalBackend
from vlmmerge.search.candidates import PSMaterializer
from vlmmerge.search.fitness import ModelFitness, chosen_metrics, make_evaluator
from vlmmerge.search.journal import Journal, JournalEntry
from vlmmerge.search.optimize import best_entry, cma_seed, evaluations_to_reach, nonnegative_seed, run_cma, run_random
from vlmmerge.search.report import plot_fitness, write_test_report
from vlmmerge.search.space import EvolveConfig, FitnessConfig, SearchSpace, override_evolve, parse_evolve


def resolve_model_ref(ref: str) -> str:
    """`zoo:NAME` or `zoo:SIZE/NAME` -> the miniature-world model's folder (see `vlmmerge.zoo.refs`)."""
    from vlmmerge.zoo.refs import resolve_zoo_ref

    return resolve_zoo_ref(ref)


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
    return recipe.model_copy(update={"evolve": None}), parse_evolve(recipe.evolve)


def apply_overrides(
    recipe: Recipe, evolve: dict[str, Any] | None = None, device: str | None = None, dtype: str | None = None
) -> Recipe:
    """Command-line overrides (`--budget`, `--seed`, `--device`, `--dtype`) written into the recipe,
    so the run folder's recipe copy records what the journal's numbers were computed with."""
    update: dict[str, Any] = {}
    if evolve:
        update["evolve"] = override_evolve(recipe.evolve or {}, evolve)
    if device is not None:
        update["options"] = recipe.options.model_copy(update={"device": device})
    if dtype is not None:
        parse_dtype(dtype, "--dtype")
        update.update(dtype=dtype, out_dtype=None)
    return recipe.model_copy(update=update)


def count_layers_offline(recipe: Recipe, config: EvolveConfig) -> int | None:
    """Decoder layers of the host (else of any model) without reading weights or building anything."""
    if config.space.num_layers:
        return config.space.num_layers
    if config.space.granularity == "model":
        return 1
    for ref in dict.fromkeys([recipe.host or "", *recipe.model_refs]):
        if not ref:
            continue
        try:
            return offline_num_layers(ref)
        except Exception:
            continue
    return None


def offline_num_layers(ref: str) -> int:
    """A model's decoder layers from its config alone (a `zoo:` reference: without building the world)."""
    from transformers import AutoConfig

    from vlmmerge.zoo.refs import is_zoo_ref, zoo_ref_num_layers

    if is_zoo_ref(ref):
        return zoo_ref_num_layers(ref)
    config = AutoConfig.from_pretrained(ref)
    return int((getattr(config, "text_config", None) or config).num_hidden_layers)


def dry_run(recipe_path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate a recipe and size its search without reading any weights (nor building the zoo)."""
    from vlmmerge.engine import validate_parameter_names
    from vlmmerge.methods import get_method

    template, config = split_evolve(apply_overrides(load_recipe(recipe_path), overrides))
    if config.dataflow is not None:
        from vlmmerge.dataflow.run import dry_run_dataflow

        return dry_run_dataflow(recipe_path, template, config)
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
    from vlmmerge.search.ray_backend import dry_run_memory

    return {"recipe": str(recipe_path), "merge_method": method.name, "models": template.model_refs, **space.describe(),
            "actor_memory": dry_run_memory(template, config)}


@dataclass
class EvolveRun:
    """One evolve run: the search space, the live model (recipe dtype and device) and its evaluators."""

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
        # tasks are loaded (and checked) before anything is written or any model is loaded
        self.fitness_evaluator = self.evaluator(self.config.fitness)
        self.test_evaluator = self.evaluator(self.config.test, split="test") if self.config.test else None

    def start_live(self):
        """The live model, in the dtype `vlmmerge merge` writes for the template, on `options.device`."""
        if self.live is None:
            from vlmmerge.live import LiveMerge

            self.live = LiveMerge(
                self.template.model_refs, self.host_ref, device=self.template.options.device,
                dtype=parse_dtype(self.template.output_dtype),
            )
        return self.live

    def evaluator(self, fitness: FitnessConfig, split: str | None = None):
        return make_evaluator(fitness, nonnegative_seed(self.config.seed), split)

    def fitness_fn(self):
        """Parameter-space candidates merged into the live model and scored (genome -> fitness, scores);
        a Ray actor builds the same one (`vlmmerge.search.ray_backend.EvolveRunFitness`)."""
        materializer = PSMaterializer(self.start_live(), self.space)
        return ModelFitness(materializer, self.fitness_evaluator, self.config.fitness)

    def backend(self) -> FitnessBackend:
        """`evolve.backend`: one after another here (local), or a pool of Ray actors."""
        if self.config.backend.kind == "ray":
            from vlmmerge.search.ray_backend import ray_backend_for

            return ray_backend_for(self)
        return LocalBackend(self.fitness_fn(), self.space)

    def search(self, retry_failed: bool = False, backend: FitnessBackend | None = None) -> dict[str, list[JournalEntry]]:
        journal = Journal(self.out_dir / "journal.jsonl")
        owned = backend is None
        backend = backend or self.backend()
        settings = self.config.search
        optimizer = run_cma if settings.optimizer == "cma" else run_random
        try:
            runs = {"cma": optimizer(self.space, backend, journal, self.progress, retry_failed)}
            if settings.compare_random and settings.optimizer == "cma":
                runs["random"] = run_random(self.space, backend, journal, self.progress, retry_failed)
        finally:
            if owned and hasattr(backend, "close"):
                backend.close()  # a Ray pool's actors (and the cluster it started)
        return runs

    def comparison_recipes(self, best: Recipe) -> dict[str, Recipe]:
        """Every source alone, the untuned baselines, and the evolved merge, for the test split."""
        recipes = reference_recipes(self.template, self.host_ref, self.config.baselines, self.space.models)
        recipes["evolved"] = best
        return recipes

    def evaluate_comparisons(self, best: Recipe) -> tuple[dict[str, Any], dict[str, str | None]]:
        """Test-split results of every comparison model, each materialised in the live model (the
        tensors `vlmmerge merge` writes for its recipe), and the metric each test task names."""
        evaluator = self.test_evaluator
        live = self.start_live()
        results = {}
        for name, recipe in self.comparison_recipes(best).items():
            model, processor = live.materialize(recipe)
            results[name] = evaluator.evaluate(model, processor, model_name=name)
        return results, chosen_metrics(self.config.test.tasks, evaluator.tasks)


def reference_recipes(template: Recipe, host_ref: str, baselines: list[Any], searched: list[str]) -> dict[str, Recipe]:
    """What a searched or learned merge is compared with: every source alone, and each untuned baseline
    (the template's method replaced, `searched` models at the baseline's weight and density)."""
    recipes: dict[str, Recipe] = {}
    for ref in dict.fromkeys(e.model for e in template.models):
        recipes[f"source: {Path(ref).name}"] = Recipe(
            merge_method="linear", models=[ModelEntry(model=ref, parameters={"weight": 1.0})], host=host_ref,
            dtype=template.output_dtype, seed=template.seed, options=template.options,
        )
    for baseline in baselines:
        entries = [
            ModelEntry(model=e.model, parameters={"weight": baseline.weight, "density": baseline.density})
            if e.model in searched else e
            for e in template.models
        ]
        recipes[baseline.name] = template.model_copy(update={"merge_method": baseline.merge_method, "models": entries})
    return recipes


def check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VlmMergeError(f"options.device / --device: {device!r} requested but CUDA is not available")


def claim_run_folder(out_dir: Path, raw: Recipe, copy_name: str = "evolve-recipe.yaml") -> None:
    """Record the run's recipe (overrides included) as `copy_name`; refuse a folder that holds another run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe_copy = out_dir / copy_name
    recipe_text = yaml.safe_dump(raw.model_dump(mode="json", exclude_none=True), sort_keys=False, allow_unicode=True)
    if recipe_copy.exists() and _but_backend(yaml.safe_load(recipe_copy.read_text(encoding="utf-8"))) != \
            _but_backend(yaml.safe_load(recipe_text)):  # a resumed run may use another pool (same journal)
        raise VlmMergeError(
            f"{out_dir} holds a run of a different recipe (or other --budget/--seed/--steps/--device/--dtype); "
            "choose another --out"
        )
    remove_stale_temporaries(out_dir)
    atomic_write_text(recipe_copy, recipe_text)


def _but_backend(recipe: Any) -> Any:
    if isinstance(recipe, dict) and isinstance(recipe.get("evolve"), dict):
        return {**recipe, "evolve": {k: v for k, v in recipe["evolve"].items() if k != "backend"}}
    return recipe


def run_evolution(
    recipe_path: str | Path, out_dir: str | Path, progress: bool = True, overrides: dict[str, Any] | None = None,
    save_model: bool = True, device: str | None = None, dtype: str | None = None, retry_failed: bool = False,
    pick: str | None = None,
) -> dict[str, Any]:
    """Search, then write the run folder. `overrides` replace `evolve:` keys; `device`/`dtype` the
    recipe's `options.device`/`dtype`; `retry_failed` re-evaluates the journal's failed candidates."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    raw = apply_overrides(load_recipe(recipe_path), overrides, device, dtype)
    template, config = split_evolve(resolve_refs(raw))
    check_device(template.options.device)
    if config.dataflow is not None:  # a layer-path (data-flow-space) search: vlmmerge.dataflow.run
        from vlmmerge.dataflow.run import run_dataflow

        return run_dataflow(raw, template, config, recipe_path, out_dir, progress, save_model, retry_failed)
    if config.objectives or config.racing or config.estimate or pick:  # several objectives, cheaper fitness
        from vlmmerge.search.pareto import run_objective_search

        return run_objective_search(raw, template, config, out_dir, recipe_path, progress, save_model, retry_failed, pick)
    run = EvolveRun(template, config, out_dir, progress)
    claim_run_folder(out_dir, raw)
    runs = run.search(retry_failed)
    best = best_entry(runs["cma"])
    best_recipe = run.space.to_recipe(np.asarray(best.genome))
    atomic_write_text(out_dir / "best-recipe.yaml", best_recipe.to_yaml())
    if save_model:
        run_merge(best_recipe, out_dir / "best-model", overwrite=True, progress=progress)

    plot_fitness(runs, config.population_size(run.space.dimension), out_dir / "fitness.png")
    summary: dict[str, Any] = {
        "recipe": str(recipe_path),
        "seed": config.seed,
        "cma_seed": cma_seed(config.seed),
        "dtype": str(run.start_live().dtype).removeprefix("torch."),  # of the scored and the written model
        "device": template.options.device,
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
        results, metrics = run.evaluate_comparisons(best_recipe)
        summary["test"] = write_test_report(results, metrics, nonnegative_seed(config.seed), out_dir / "test")
    summary["seconds"] = time.perf_counter() - started
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n")
    return summary
