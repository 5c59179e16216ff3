"""Merge methods by name: parameter names, defaults and model counts, checked before the math runs.

Parameter names and defaults are mergekit 0.1.5's, so a mergekit recipe means the same here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import Tensor

from vlmmerge.errors import IncompatibleModelsError, RecipeError
from vlmmerge.methods import interpolation, task_vectors
from vlmmerge.methods.arcee_fusion import arcee_fusion
from vlmmerge.methods.ram import ram, ramplus_tl
from vlmmerge.methods.multislerp import multislerp
from vlmmerge.methods.nearswap import nearswap
from vlmmerge.methods.passthrough import passthrough
from vlmmerge.methods.sce import sce
from vlmmerge.methods.masks import Generators
from vlmmerge.methods.sparsify import RESCALE_NORMS

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


def _slerp_models(base: Tensor, tensors: Sequence[Tensor], t: float) -> Tensor:
    return interpolation.slerp(base, tensors[0], t)


_TASK_VECTOR_GLOBALS = {"int8_mask": False, "lambda": 1.0}
_RESCALE_CHOICES = MappingProxyType({"rescale_norm": RESCALE_NORMS})


def _task_vector_method(
    name: str,
    fn: Callable[..., Tensor],
    *,
    normalize: bool,
    rescale: bool,
    extra_model_params: Mapping[str, float] = MappingProxyType({}),
    random: bool = False,
    inert: frozenset[str] = frozenset({"int8_mask"}),
    description: str = "",
) -> MergeMethod:
    model_params: dict[str, float | None] = {"weight": None, "density": 1.0, **extra_model_params}
    global_params: dict[str, Any] = {"normalize": normalize, "rescale": rescale, **_TASK_VECTOR_GLOBALS}
    if "rescale" not in inert:
        global_params["rescale_norm"] = "l1"  # vlmmerge's extension; l1 is mergekit's only norm
    return MergeMethod(
        name=name,
        needs_base=True,
        model_params=MappingProxyType(model_params),
        global_params=MappingProxyType(global_params),
        random=random,
        min_models=1,
        max_models=None,
        fn=fn,
        choices=_RESCALE_CHOICES,
        inert_params=inert,
        description=description,
    )


def _build_methods() -> dict[str, MergeMethod]:
    methods = [
        MergeMethod(
            name="linear",
            needs_base=False,
            model_params=MappingProxyType({"weight": None}),
            global_params=MappingProxyType({"normalize": True}),
            random=False,
            min_models=1,
            max_models=None,
            fn=interpolation.linear,
            description="Weighted average of the models (the base, if any, is one of them).",
        ),
        _task_vector_method(
            "task_arithmetic", task_vectors.task_arithmetic, normalize=False, rescale=False,
            inert=frozenset({"int8_mask", "density", "rescale"}),
            description="base + lambda * sum of weighted task vectors.",
        ),
        _task_vector_method(
            "ties", task_vectors.ties, normalize=True, rescale=False,
            description="TIES: magnitude trim, sign election, disjoint mean.",
        ),
        _task_vector_method(
            "dare_linear", task_vectors.dare_linear, normalize=False, rescale=True, random=True,
            description="DARE random drop and rescale, then task arithmetic.",
        ),
        _task_vector_method(
            "dare_ties", task_vectors.dare_ties, normalize=False, rescale=True, random=True,
            description="DARE random drop and rescale, then TIES sign election.",
        ),
        _task_vector_method(
            "breadcrumbs", task_vectors.breadcrumbs, normalize=False, rescale=False,
            extra_model_params={"gamma": 0.01},
            description="Model Breadcrumbs: drop outliers and small entries, then task arithmetic.",
        ),
        _task_vector_method(
            "breadcrumbs_ties", task_vectors.breadcrumbs_ties, normalize=False, rescale=False,
            extra_model_params={"gamma": 0.01},
            description="Model Breadcrumbs sparsification with TIES sign election.",
        ),
        _task_vector_method(
            "della", task_vectors.della, normalize=True, rescale=True, random=True,
            extra_model_params={"epsilon": 0.15},
            description="DELLA: magnitude-ranked random drop, TIES sign election.",
        ),
        _task_vector_method(
            "della_linear", task_vectors.della_linear, normalize=False, rescale=True, random=True,
            extra_model_params={"epsilon": 0.15},
            description="DELLA drop, then task arithmetic.",
        ),
        MergeMethod(
            name="slerp",
            needs_base=True,
            model_params=MappingProxyType({}),
            global_params=MappingProxyType({"t": None}),
            random=False,
            min_models=2,
            max_models=2,
            fn=_slerp_models,
            description="Spherical interpolation from the base (t = 0) to the other model (t = 1).",
        ),
        MergeMethod(
            name="model_stock",
            needs_base=True,
            model_params=MappingProxyType({}),
            global_params=MappingProxyType({"filter_wise": False}),
            random=False,
            min_models=3,
            max_models=None,
            fn=interpolation.model_stock,
            description="Model Stock: interpolate base and fine-tune average by their task-vector angle.",
        ),
        MergeMethod(
            name="nuslerp",
            needs_base=False,
            accepts_base=True,
            model_params=MappingProxyType({"weight": None}),
            global_params=MappingProxyType({"nuslerp_row_wise": False, "nuslerp_flatten": True}),
            random=False,
            min_models=2,
            max_models=3,
            fn=interpolation.nuslerp_merge,
            description="SLERP of two models (or of their task vectors when a base is given).",
        ),
        MergeMethod(
            name="karcher",
            needs_base=False,
            model_params=MappingProxyType({}),
            global_params=MappingProxyType({"max_iter": 10, "tol": 1e-5}),
            random=False,
            min_models=1,
            max_models=None,
            fn=interpolation.karcher,
            description="Karcher mean on the sphere of equally weighted models.",
        ),
        MergeMethod(
            name="passthrough", needs_base=False, model_params=MappingProxyType({"scale": 1.0}),
            global_params=MappingProxyType({}), random=False, min_models=1, max_models=1, fn=passthrough,
            description="Copy of the one model, each tensor times its `scale`.",
        ),
        MergeMethod(
            name="nearswap", needs_base=True, model_params=MappingProxyType({}),
            global_params=MappingProxyType({"t": None}), random=False, min_models=2, max_models=2, fn=nearswap,
            description="Base, swapped to the other model where they differ by less than t.",
        ),
        MergeMethod(
            name="multislerp", needs_base=False, accepts_base=True, model_params=MappingProxyType({"weight": None}),
            global_params=MappingProxyType({"normalize_weights": True, "eps": 1e-8}), random=False,
            min_models=1, max_models=None, fn=multislerp,
            description="Barycentric SLERP of any number of models (of task vectors with a base).",
        ),
        MergeMethod(
            name="sce", needs_base=True, model_params=MappingProxyType({}),
            global_params=MappingProxyType({"int8_mask": False, "select_topk": 1.0}), random=False,
            min_models=1, max_models=None, fn=sce, inert_params=frozenset({"int8_mask"}),
            description="SCE: top-variance selection, energy weights, sign-consensus erase.",
        ),
        MergeMethod(
            name="arcee_fusion", needs_base=True, model_params=MappingProxyType({}),
            global_params=MappingProxyType({}), random=False, min_models=2, max_models=2, fn=arcee_fusion,
            description="Base, taking the other model's value where its importance is an outlier.",
        ),
        MergeMethod(
            name="ram", needs_base=True, model_params=MappingProxyType({}),
            global_params=MappingProxyType({"epsilon": 1e-5}), random=False,
            min_models=1, max_models=None, fn=ram,
            description="RAM: unique task-vector entries kept, shared ones averaged.",
        ),
        MergeMethod(
            name="ramplus_tl", needs_base=True, model_params=MappingProxyType({}),
            global_params=MappingProxyType({"r": 0.1, "alpha": 0.2, "epsilon": 1e-5}), random=False,
            min_models=1, max_models=None, fn=ramplus_tl,
            description="RAM+ (tensor-local): RAM with unique entries rescaled by the shared/unique ratio.",
        ),
    ]
    return {method.name: method for method in methods}


METHODS: dict[str, MergeMethod] = _build_methods()


def get_method(name: str) -> MergeMethod:
    """The method registered under `name`; RecipeError listing the known names otherwise."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise RecipeError(f"unknown merge method {name!r}; known: {', '.join(sorted(METHODS))}") from None
