"""Hierarchical learned merging (SuperMerge, section 3.3): merge groups of k sources, then the groups' results.

Stage 1 learns each group's coefficients on the fitness examples (one group in memory at a
time: k task vectors), writes the group's static recipe and merged model to `groups/NN/`.
Stage 2 merges the group models over the same base, their coefficients learned
(`group_merge: learned`) or fixed at 1 (`static`: then theta = base + sum_g (theta_g - base) =
base + sum_i c_i tau_i, the flat merge up to float rounding). The peak memory holds max(k,
number of groups) task vectors instead of one per source. The run's `best-recipe.yaml` merges
the group models; each `groups/NN/recipe.yaml` merges its sources.
"""

from __future__ import annotations

import gc
from pathlib import Path

import torch

from vlmmerge.recipe import ModelEntry, Recipe
from vlmmerge.search.files import atomic_write_text


def source_groups(template: Recipe, size: int) -> list[list[ModelEntry]]:
    members = [e for e in template.models if e.model != template.base_model]
    return [members[i : i + size] for i in range(0, len(members), size)]


def _is_vlm(ref: str) -> bool:
    from vlmmerge.engine import Source

    return Source.open(ref).anatomy.is_vlm


def group_recipe(template: Recipe, entries: list[ModelEntry]) -> Recipe:
    """One group's recipe: its sources over the base; the host only if the group holds it."""
    refs = [e.model for e in entries]
    host = template.host if template.host in refs else None
    if host is None and any(_is_vlm(r) for r in refs):
        host = next(r for r in refs if _is_vlm(r))
    tokenizer = template.tokenizer_source if template.tokenizer_source in refs else None
    return template.model_copy(update={"models": list(entries), "host": host, "tokenizer_source": tokenizer})


def train_hierarchical(template: Recipe, config, out_dir: Path, progress: bool = True):
    """Both stages; returns (stage-2 merge, its w, its journal entries, seconds, per-stage summary)."""
    import time

    from vlmmerge.engine import run_merge
    from vlmmerge.tune.run import train

    started = time.perf_counter()
    groups = source_groups(template, config.group_size)
    stage_refs, stages = [], []
    for index, entries in enumerate(groups):
        folder = out_dir / "groups" / f"{index:02d}"
        model_dir = folder / "model"
        if len(entries) == 1:  # a lone source enters stage 2 as it is
            stage_refs.append(entries[0].model)
            stages.append({"group": index, "models": [entries[0].model], "trained": False})
            continue
        if not (folder / "done").exists():
            merge, w, journal, seconds = train(group_recipe(template, entries), config, folder, progress)
            recipe = merge.static_recipe(w)
            atomic_write_text(folder / "recipe.yaml", recipe.to_yaml())
            run_merge(recipe, model_dir, overwrite=True, progress=False)
            stages.append({"group": index, "models": [e.model for e in entries], "trained": True,
                           "seconds": seconds, "final_loss": journal[-1]["loss"]})
            atomic_write_text(folder / "done", "")
            del merge, w
            gc.collect()
        else:
            stages.append({"group": index, "models": [e.model for e in entries], "trained": True, "resumed": True})
        stage_refs.append(str(model_dir))
    def moved(ref):  # a source of a trained group now lives in that group's merged model
        for i, g in enumerate(groups):
            if len(g) > 1 and any(e.model == ref for e in g):
                return str(out_dir / "groups" / f"{i:02d}" / "model")
        return ref

    top = template.model_copy(update={
        "models": [ModelEntry(model=ref) for ref in stage_refs],
        "host": moved(template.host) if template.host else None,
        "tokenizer_source": moved(template.tokenizer_source) if template.tokenizer_source else None,
    })
    if config.group_merge == "learned":
        top_config = config.model_copy(update={"init": min(1.0, 0.999 * config.scale), "sparsify": "none"})
        merge, w, entries, _ = train(top, top_config, out_dir, progress)
    else:
        from vlmmerge.tune.functional import DifferentiableMerge

        merge = DifferentiableMerge(top, "model", 1.0, "none", device=template.options.device)
        w = torch.full(merge.space.shape, 30.0)  # tanh(30) == 1.0 in float32: every group weighs 1
        entries = []
    return merge, w, entries, time.perf_counter() - started, {"groups": stages, "group_merge": config.group_merge}
