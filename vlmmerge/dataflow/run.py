"""`vlmmerge evolve` for a data-flow-space recipe (`evolve.dataflow:`): the same CMA-ES loop, journal,
resume, random baseline, fitness plot and test report as parameter-space search.

Run folder, besides the PS layout (journal.jsonl, fitness.png, test/, summary.json):
    model-a/          PS+DFS: model A, the parameter-space recipe merged once (a plain checkpoint)
    best-recipe.yaml  the best path as a `slices:` recipe with folded scales (`vlmmerge merge` reproduces it);
                      a same-size path with mixed layers: a per-layer `linear` recipe (normalize: false)
    best-model/       that recipe merged: one layer per hop, loadable by the Auto classes
    path.png          the evolved path (which layer of which model where, with the scales)
The test report's "evolved" row is the exported best-model loaded from disk, and the summary records
its re-evaluated fitness next to the journaled one: the model a search scores is the model it writes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vlmmerge.dataflow.export import check_head_tying, export_path
from vlmmerge.dataflow.materializer import DataflowFitness, DataflowMaterializer
from vlmmerge.dataflow.picture import draw_path, path_text
from vlmmerge.dataflow.runtime import load_layer_path
from vlmmerge.dataflow.spaces import DataflowSpace, named_path
from vlmmerge.engine import parse_dtype, run_merge
from vlmmerge.errors import RecipeError
from vlmmerge.recipe import ModelEntry, Recipe, load_recipe
from vlmmerge.search.backends import LocalBackend
from vlmmerge.search.files import atomic_write_text
from vlmmerge.search.fitness import ModelFitness, chosen_metrics, make_evaluator, weighted_fitness
from vlmmerge.search.journal import Journal
from vlmmerge.search.optimize import best_entry, cma_seed, evaluations_to_reach, nonnegative_seed, run_cma, run_random
from vlmmerge.search.report import plot_fitness, write_test_report


def ps_recipe(ref: str, base_dir: Path) -> Recipe:
    """A parameter-space result as a static recipe: a recipe file, or an evolve run folder's best-recipe.yaml."""
    from vlmmerge.search.evolve import resolve_refs

    path = Path(ref) if Path(ref).is_absolute() or Path(ref).exists() else base_dir / ref
    if path.is_dir():
        path = path / "best-recipe.yaml"
    if not path.is_file():
        raise RecipeError(f"evolve.dataflow: {ref!r} is neither a recipe file nor a run folder with best-recipe.yaml")
    recipe = load_recipe(path)
    if recipe.evolve:
        raise RecipeError(f"evolve.dataflow: {path} is an evolve recipe; name a static recipe or a run folder")
    return resolve_refs(recipe)


def merged_once(recipe: Recipe, out: Path, progress: bool) -> Path:
    """Merge a PS recipe to `out` unless a previous (resumed) run already did."""
    marker = out / "recipe.yaml"
    if not (marker.is_file() and (out / "config.json").is_file()):
        run_merge(recipe, out, overwrite=True, progress=progress)
    return out


def load_model(ref: str, dtype, device: str):
    from vlmmerge.evaluation import load_model_for_eval

    return load_model_for_eval(ref, device=device, dtype=dtype)


def source_models(template: Recipe, host_vlm: str | None, dtype, device: str):
    """Each source alone, as the PS demo scores it: a text LM on a VLM host goes into that host's language side."""
    from vlmmerge.checkpoint import Checkpoint
    from vlmmerge.evaluation.loading import is_vision_language_config

    for ref in dict.fromkeys(e.model for e in template.models):
        if host_vlm and not is_vision_language_config(Checkpoint(ref).config):
            from vlmmerge.live import LiveMerge

            live = LiveMerge([ref], host_vlm, device=device, dtype=dtype)
            recipe = Recipe(merge_method="linear", models=[ModelEntry(model=ref, parameters={"weight": 1.0})],
                            host=host_vlm, dtype=template.output_dtype, seed=template.seed)
            yield f"source: {Path(ref).name}", live.materialize(recipe)
        else:
            yield f"source: {Path(ref).name}", load_model(ref, dtype, device)


def host_index(wanted: str | None, aliases: list[list[str]], key: str = "evolve.dataflow.host", default: int = 0) -> int:
    """`evolve.dataflow.host` (or `key`) as an index into the sources (each known by its aliases); None: `default`."""
    if wanted is None:
        return default
    for i, names in enumerate(aliases):
        if wanted in names:
            return i
    known = ", ".join(repr(names[0]) for names in aliases)
    raise RecipeError(f"{key}: {wanted!r} is not one of the recipe's models ({known})")


def head_index(flow, aliases: list[list[str]], host: int) -> int:
    """`evolve.dataflow.head_from` as an index into the sources; None: the host."""
    return host_index(flow.head_from, aliases, key="evolve.dataflow.head_from", default=host)


def check_vlm_host(refs: list[str], host: int, wanted: str | None) -> None:
    """A VLM among the sources needs a VLM host: it supplies the vision tower and projector."""
    from vlmmerge.checkpoint import Checkpoint
    from vlmmerge.evaluation.loading import is_vision_language_config

    vlms = [r for r in refs if is_vision_language_config(Checkpoint(r).config)]
    if vlms and refs[host] not in vlms:
        raise RecipeError(f"evolve.dataflow.host: {wanted!r} is a text-only model, but {Path(vlms[0]).name} is a VLM: "
                          "the host supplies the vision tower and projector, so it must be a VLM")


def dry_run_dataflow(recipe_path, template: Recipe, config) -> dict[str, Any]:
    """A DFS recipe validated and its space sized from configs alone (PS+DFS: A has the layers of its host)."""
    from vlmmerge.search.evolve import offline_num_layers

    flow = config.dataflow
    sources = [e.model for e in template.models if e.model != template.base_model]
    aliases = [[s, Path(s).name] for s in sources]
    if flow.model_a:
        a = ps_recipe(flow.model_a, Path(recipe_path).resolve().parent)
        sources = [a.host or a.model_refs[0], *sources]
        aliases = [["A (PS)", flow.model_a], *aliases]
    host = host_index(flow.host, aliases)
    space = DataflowSpace(sources, [offline_num_layers(r) for r in sources], config, host=host,
                          head=head_index(flow, aliases, host))
    return {"recipe": str(recipe_path), "kind": "dataflow", **space.describe()}


def run_dataflow(raw: Recipe, template: Recipe, config, recipe_path, out_dir, progress: bool = True,
                 save_model: bool = True, retry_failed: bool = False) -> dict[str, Any]:
    from vlmmerge.checkpoint import Checkpoint
    from vlmmerge.evaluation.loading import is_vision_language_config
    from vlmmerge.search.evolve import claim_run_folder

    started = time.perf_counter()
    flow, out_dir = config.dataflow, Path(out_dir)
    base_dir = Path(recipe_path).resolve().parent
    dtype, device = parse_dtype(template.output_dtype), template.options.device
    sources = [e.model for e in template.models if e.model != template.base_model]
    raw_names = {e.model: r.model for e, r in zip(template.models, raw.models)}
    claim_run_folder(out_dir, raw)
    refs, names = list(sources), [Path(raw_names.get(s, s)).name for s in sources]
    aliases = [[raw_names.get(s, s), s, n] for s, n in zip(sources, names)]
    ps_row: Path | None = None
    if flow.model_a:
        ps_row = merged_once(ps_recipe(flow.model_a, base_dir), out_dir / "model-a", progress)
        refs, names = [str(ps_row), *refs], ["A (PS)", *names]
        aliases = [["A (PS)", flow.model_a], *aliases]
    elif flow.compare_ps:
        ps_row = merged_once(ps_recipe(flow.compare_ps, base_dir), out_dir / "ps-model", progress)
    host_at = host_index(flow.host, aliases)
    check_vlm_host(refs, host_at, flow.host)
    head_at = head_index(flow, aliases, host_at)
    host, head_from = refs[host_at], refs[head_at]
    check_head_tying(host, head_from, flow.variant == "same_size" and flow.same_size_mix == "weighted")
    vlms = [r for r in [template.host, *sources] if r and is_vision_language_config(Checkpoint(r).config)]
    runtime = load_layer_path(refs, names, device=device, dtype=dtype, host=host_at, head=head_at)
    space = DataflowSpace(refs, runtime.layer_counts, config, names, host=host_at, head=head_at)
    seed = nonnegative_seed(config.seed)
    evaluator = make_evaluator(config.fitness, seed)
    if config.backend.kind == "ray":  # the same path models, one per actor
        from vlmmerge.search.ray_backend import RayBackend

        backend = RayBackend(DataflowFitness(refs, names, config, dtype, device, host_at, head_at), space, config.backend)
    else:
        backend = LocalBackend(ModelFitness(DataflowMaterializer(runtime, space), evaluator, config.fitness), space)
    journal = Journal(out_dir / "journal.jsonl")
    try:
        runs = {"cma": run_cma(space, backend, journal, progress, retry_failed)}
        if config.search.compare_random:
            runs["random"] = run_random(space, backend, journal, progress, retry_failed)
    finally:
        getattr(backend, "close", lambda: None)()
    best = best_entry(runs["cma"])
    path = space.path(np.asarray(best.genome))
    hops = space.hops(np.asarray(best.genome))
    tokenizer = template.tokenizer_ref if template.tokenizer_ref in refs else None
    recipe = export_path(hops, out_dir / "best-model", host=host, dtype=template.output_dtype,
                         tokenizer_source=tokenizer, name=f"{template.name or 'dfs'} (best path)", sources=refs,
                         head_from=head_from)
    atomic_write_text(out_dir / "best-recipe.yaml", yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True))
    named = named_path(path, names)
    draw_path(named, out_dir / "path.png", title=f"{template.name or 'DFS'}: best path (fitness {best.fitness:.4g})")
    plot_fitness(runs, config.population_size(space.dimension), out_dir / "fitness.png")

    exported = load_model(str(out_dir / "best-model"), dtype, device)
    exported_fitness, _ = weighted_fitness(evaluator.evaluate(*exported), config.fitness, evaluator.tasks)
    summary: dict[str, Any] = {
        "recipe": str(recipe_path), "seed": config.seed, "cma_seed": cma_seed(config.seed),
        "dtype": str(dtype).removeprefix("torch."), "device": device, "space": space.describe(),
        "best": {"index": best.index, "fitness": best.fitness, "params": best.params, "genome": best.genome},
        "path": named, "path_text": path_text(named), "exported_fitness": exported_fitness,
        "evaluations": {name: len(entries) for name, entries in runs.items()},
        "failed": {name: sum(e.failed for e in entries) for name, entries in runs.items()},
    }
    if "random" in runs:
        random_best = max(e.fitness for e in runs["random"])
        reach = evaluations_to_reach(runs["cma"], random_best)
        summary.update(random_best_fitness=random_best, cma_evaluations_to_reach_random_best=reach)
    if config.test is not None:
        test = make_evaluator(config.test, seed, split="test")
        results = {}
        for name, (model, processor) in source_models(template, vlms[0] if vlms else None, dtype, device):
            results[name] = test.evaluate(model, processor, model_name=name)
        if ps_row is not None:
            results["PS"] = test.evaluate(*load_model(str(ps_row), dtype, device), model_name="PS")
        results["evolved"] = test.evaluate(*exported, model_name="evolved")
        summary["test"] = write_test_report(results, chosen_metrics(config.test.tasks, test.tasks), seed, out_dir / "test",
                                            figures=[(f"Evolved path: {path_text(named)}", "../path.png")])
        (out_dir / "test" / "path.txt").write_text(f"evolved path ({len(named)} hops): {path_text(named)}\n", encoding="utf-8")
    if not save_model:
        import shutil

        shutil.rmtree(out_dir / "best-model", ignore_errors=True)
    summary["seconds"] = time.perf_counter() - started
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n")
    return summary
