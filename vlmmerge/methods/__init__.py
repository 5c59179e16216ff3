"""Merge operators as pure tensor functions, and the registry that names them.

Semantics follow mergekit 0.1.5 (see README.md in this folder for the deliberate differences).
"""

from vlmmerge.methods.interpolation import karcher, linear, model_stock, nuslerp, nuslerp_merge, slerp
from vlmmerge.methods.masks import draw_uniforms, mask_generators, mask_seed
from vlmmerge.methods.registry import MergeMethod
from vlmmerge.methods.table import METHODS, get_method
from vlmmerge.methods.della import della_keep_probabilities, della_sparsify
from vlmmerge.methods.sparsify import (
    RESCALE_NORMS,
    dare_mask,
    dare_sparsify,
    rank_range_mask,
    rescale_to_norm,
    trim_outliers,
    trim_to_density,
    value_at_rank,
)
from vlmmerge.methods.task_vectors import (
    breadcrumbs,
    breadcrumbs_ties,
    dare_linear,
    dare_ties,
    della,
    della_linear,
    elect_sign,
    generalized_task_arithmetic,
    task_arithmetic,
    ties,
    work_dtype,
)

__all__ = [
    "METHODS",
    "MergeMethod",
    "RESCALE_NORMS",
    "breadcrumbs",
    "breadcrumbs_ties",
    "dare_linear",
    "dare_mask",
    "dare_sparsify",
    "dare_ties",
    "della",
    "della_keep_probabilities",
    "della_linear",
    "della_sparsify",
    "draw_uniforms",
    "elect_sign",
    "generalized_task_arithmetic",
    "get_method",
    "karcher",
    "linear",
    "mask_generators",
    "mask_seed",
    "model_stock",
    "nuslerp",
    "nuslerp_merge",
    "rank_range_mask",
    "rescale_to_norm",
    "slerp",
    "task_arithmetic",
    "ties",
    "trim_outliers",
    "trim_to_density",
    "value_at_rank",
    "work_dtype",
]
