"""Per-tensor method parameters from a recipe (mergekit's rules: scalar, per-layer list, filters)."""

from __future__ import annotations

import difflib
from typing import Any

from vlmmerge.errors import RecipeError
from vlmmerge.methods import METHODS, MergeMethod
from vlmmerge.recipe import ModelEntry, Recipe, resolve_setting


def resolve_model_params(
    recipe: Recipe, method: MergeMethod, entry: ModelEntry, name: str, t: float
) -> dict[str, Any]:
    values = {}
    for key, default in method.model_params.items():
        if key in entry.parameters:
            value = resolve_setting(entry.parameters[key], name, t)
        elif key in recipe.parameters:
            value = resolve_setting(recipe.parameters[key], name, t)
        else:
            value = None
        if value is None:
            value = default
        if value is None:
            raise RecipeError(
                f"merge_method {method.name}: parameter {key!r} is required for model {entry.model!r} "
                f"(tensor {name})"
            )
        values[key] = value
    return values


def resolve_global_params(recipe: Recipe, method: MergeMethod, name: str, t: float) -> dict[str, Any]:
    values = {}
    for key, default in method.global_params.items():
        value = resolve_setting(recipe.parameters[key], name, t) if key in recipe.parameters else None
        values[key] = default if value is None else value
    return values


# Every parameter some mergekit 0.1.5 merge method defines. A recipe may carry one the chosen
# method does not use (mergekit ignores it), so it is reported, not refused.
MERGEKIT_PARAMETER_NAMES = frozenset({
    "alpha", "density", "eps", "epsilon", "filter_wise", "gamma", "int8_mask", "lambda", "max_iter",
    "normalize", "normalize_weights", "nuslerp_flatten", "nuslerp_row_wise", "r", "rescale", "scale",
    "select_topk", "t", "tol", "weight",
})


def validate_parameter_names(recipe: Recipe, method: MergeMethod) -> list[str]:
    """Notes naming the parameters `method` ignores; RecipeError on a name no method defines.

    Per-model entries may set only per-model parameters of the method; the global `parameters`
    block may set either kind. A name some other method defines is ignored (as mergekit does).
    """
    known_model = set(method.model_params)
    known_global = set(method.global_params) | known_model
    notes = []
    for key in recipe.parameters:
        if key not in known_global:
            notes.append(_ignored_or_raise(f"parameters.{key}", key, method, known_global))
    for index, entry in enumerate(recipe.models):
        for key in entry.parameters:
            if key not in known_model:
                notes.append(_ignored_or_raise(
                    f"models[{index}].parameters.{key} ({entry.model})", key, method, known_model, per_model=True
                ))
    return list(dict.fromkeys(notes))


def _ignored_or_raise(where: str, key: str, method: MergeMethod, known: set[str], per_model: bool = False) -> str:
    if key in MERGEKIT_PARAMETER_NAMES or any(key in _names(m) for m in METHODS.values()):
        return f"{where}: merge_method {method.name} does not use parameter {key!r}; ignored"
    kind = "per-model parameter" if per_model else "parameter"
    close = difflib.get_close_matches(key, sorted(known), n=1) or difflib.get_close_matches(
        key, sorted(MERGEKIT_PARAMETER_NAMES), n=1
    )
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise RecipeError(f"{where}: unknown {kind} for merge_method {method.name} (known: {sorted(known)}){hint}")


def _names(method: MergeMethod) -> set[str]:
    return set(method.model_params) | set(method.global_params)
