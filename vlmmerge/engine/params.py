"""Per-tensor method parameters from a recipe (mergekit's rules: scalar, per-layer list, filters)."""

from __future__ import annotations

from typing import Any

from vlmmerge.errors import RecipeError
from vlmmerge.methods import MergeMethod
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


def validate_parameter_names(recipe: Recipe, method: MergeMethod) -> None:
    known_model = set(method.model_params)
    known_global = set(method.global_params) | known_model | {"int8_mask"}
    for key in recipe.parameters:
        if key not in known_global:
            raise RecipeError(
                f"parameters.{key}: unknown parameter for merge_method {method.name} "
                f"(known: {sorted(known_global)})"
            )
    for index, entry in enumerate(recipe.models):
        for key in entry.parameters:
            if key not in known_model:
                raise RecipeError(
                    f"models[{index}].parameters.{key} ({entry.model}): unknown per-model parameter for "
                    f"merge_method {method.name} (known: {sorted(known_model)})"
                )
