"""The merge methods by name (mergekit 0.1.5's 20), each a `MergeMethod` around its pure function."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from torch import Tensor

from vlmmerge.errors import RecipeError
from vlmmerge.methods import interpolation, task_vectors
from vlmmerge.methods.arcee_fusion import arcee_fusion
from vlmmerge.methods.kept import kept
from vlmmerge.methods.multislerp import multislerp
from vlmmerge.methods.nearswap import nearswap
from vlmmerge.methods.passthrough import passthrough
from vlmmerge.methods.ram import ram, ramplus_tl
from vlmmerge.methods.registry import MergeMethod
from vlmmerge.methods.sce import sce
from vlmmerge.methods.sparsify import RESCALE_NORMS


def _slerp_models(base: Tensor, tensors: Sequence[Tensor], t: float) -> Tensor:
    return interpolation.slerp(base, tensors[0], t, kept=kept(0, len(tensors)))


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
