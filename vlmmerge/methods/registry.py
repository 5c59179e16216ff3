"""What a merge method is: parameter names, defaults and model counts, checked before the math runs.

The methods themselves, by name, are the table in `vlmmerge.methods.table`. Parameter names and
defaults are mergekit 0.1.5's, so a mergekit recipe means the same here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from vlmmerge.errors import IncompatibleModelsError, RecipeError
from vlmmerge.methods.masks import Generators

# Per-model recipe parameter -> keyword (a list, one value per model) of the pure function.
_PER_MODEL_KEYWORDS = {"weight": "weights", "density": "densities", "gamma": "gammas", "epsilon": "epsilons"}
# Fractions that mergekit leaves unchecked (a negative DARE density crashes torch.bernoulli there).
_NON_NEGATIVE = frozenset({"density", "gamma", "epsilon"})
# Global recipe parameter -> keyword of the pure function.
_GLOBAL_KEYWORDS = {"lambda": "lambda_", "nuslerp_row_wise": "row_wise", "nuslerp_flatten": "flatten"}


@dataclass(frozen=True, eq=False)  # eq=False: hashable by identity despite mapping fields
class MergeMethod:
    """A merge method: its parameters, the model counts it accepts, and its pure function.

    `min_models` / `max_models` count every model of the merge, the base included.
    `fn` is called as fn(base, tensors, **params) when the method takes a base model, else as
    fn(tensors, **params); per-model parameters arrive as lists (weight -> weights, ...).
    """

    name: str
    needs_base: bool
    model_params: Mapping[str, float | None]
    global_params: Mapping[str, Any]
    random: bool
    min_models: int
    max_models: int | None
    fn: Callable[..., Tensor]
    accepts_base: bool | None = None  # None: same as needs_base; nuslerp takes an optional base
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Parameters mergekit accepts for this method that cannot change its result (int8_mask only
    # changes mergekit's mask storage; task_arithmetic has no sparsification to use density):
    # validated, then not passed on.
    inert_params: frozenset[str] = frozenset()
    description: str = ""

    @property
    def takes_base(self) -> bool:
        return self.needs_base if self.accepts_base is None else self.accepts_base

    def check_model_count(self, count: int) -> None:
        """RecipeError unless this method merges `count` models (the base included)."""
        if self.min_models <= count and (self.max_models is None or count <= self.max_models):
            return
        if self.max_models is None:
            expected = f"at least {self.min_models}"
        elif self.max_models == self.min_models:
            expected = f"exactly {self.min_models}"
        else:
            expected = f"{self.min_models} to {self.max_models}"
        raise RecipeError(f"merge_method {self.name}: merges {expected} models (base included), got {count}")

    def merge(
        self,
        base: Tensor | None,
        tensors: Sequence[Tensor],
        model_params: Sequence[Mapping[str, float]],
        global_params: Mapping[str, Any],
        generator: Generators = None,
    ) -> Tensor:
        """Validate parameter names and model counts, fill defaults, run the pure function.

        `tensors` excludes the base model for methods that take one. `model_params[i]` holds the
        per-model parameters of `tensors[i]`. A random method draws `tensors[i]`'s mask from
        `generator[i]` when given one generator per model, from one shared `generator` in model
        order otherwise (torch's global generator when None).
        """
        self._check_models(base, tensors, model_params)
        kwargs = self.resolve_global_params(global_params)
        per_model = [self.resolve_model_params(params, index) for index, params in enumerate(model_params)]
        for name in self.model_params:
            if name not in self.inert_params:
                kwargs[_PER_MODEL_KEYWORDS.get(name, name)] = [params[name] for params in per_model]
        if self.random:
            kwargs["generator"] = generator
        if self.takes_base:
            return self.fn(base, list(tensors), **kwargs)
        return self.fn(list(tensors), **kwargs)

    def resolve_model_params(self, params: Mapping[str, Any], index: int | None = None) -> dict[str, float]:
        """Per-model parameters with defaults filled in; RecipeError naming a bad key."""
        where = f"model {index} of method {self.name!r}" if index is not None else f"method {self.name!r}"
        unknown = sorted(set(params) - set(self.model_params))
        if unknown:
            known = ", ".join(self.model_params) or "none"
            raise RecipeError(f"unknown per-model parameter {unknown[0]!r} for {where}; known: {known}")
        resolved = {}
        for name, default in self.model_params.items():
            value = params.get(name, default)
            if value is None:
                raise RecipeError(f"missing required parameter {name!r} for {where}")
            resolved[name] = _as_float(name, value, where)
            if name in _NON_NEGATIVE and resolved[name] < 0:
                raise RecipeError(f"parameter {name!r} for {where} must be >= 0, got {value!r}")
        return resolved

    def resolve_global_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Global parameters with defaults, keyed by the pure function's keyword names."""
        where = f"method {self.name!r}"
        unknown = sorted(set(params) - set(self.global_params))
        if unknown:
            known = ", ".join(self.global_params) or "none"
            raise RecipeError(f"unknown parameter {unknown[0]!r} for {where}; known: {known}")
        resolved: dict[str, Any] = {}
        for name, default in self.global_params.items():
            value = params.get(name, default)
            if value is None:
                raise RecipeError(f"missing required parameter {name!r} for {where}")
            value = _check_type(name, value, default, self.choices.get(name), where)
            if name not in self.inert_params:
                resolved[_GLOBAL_KEYWORDS.get(name, name)] = value
        return resolved

    def _check_models(
        self, base: Tensor | None, tensors: Sequence[Tensor], model_params: Sequence[Mapping[str, float]]
    ) -> None:
        if self.needs_base and base is None:
            raise RecipeError(f"method {self.name!r} needs a base_model")
        if base is not None and not self.takes_base:
            raise RecipeError(
                f"method {self.name!r} takes no separate base tensor: list the base among the models"
            )
        if len(model_params) != len(tensors):
            raise RecipeError(
                f"method {self.name!r}: {len(tensors)} tensors but {len(model_params)} per-model parameter sets"
            )
        self.check_model_count(len(tensors) + (1 if base is not None else 0))
        shapes = [tuple(t.shape) for t in ([base] if base is not None else []) + list(tensors)]
        if any(shape != shapes[0] for shape in shapes):
            raise IncompatibleModelsError(f"method {self.name!r}: tensor shapes differ: {shapes}")


def _as_float(name: str, value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecipeError(f"parameter {name!r} for {where} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise RecipeError(f"parameter {name!r} for {where} must be finite, got {value!r}")
    return float(value)


def _check_type(name: str, value: Any, default: Any, choices: tuple[str, ...] | None, where: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise RecipeError(f"parameter {name!r} for {where} must be true or false, got {value!r}")
        return value
    if isinstance(default, str):
        if not isinstance(value, str) or (choices is not None and value not in choices):
            raise RecipeError(f"parameter {name!r} for {where} must be one of {list(choices or ())}, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"parameter {name!r} for {where} must be an integer, got {value!r}")
        return value
    return _as_float(name, value, where)
