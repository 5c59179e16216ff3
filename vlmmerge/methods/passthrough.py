"""Passthrough in the `models:` form: one model's tensor, optionally scaled (mergekit 0.1.5)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from vlmmerge.errors import RecipeError
from vlmmerge.methods.task_vectors import work_dtype


def passthrough(tensors: Sequence[Tensor], scale: Sequence[float]) -> Tensor:
    """The single model's tensor times its `scale` (a one-item list; a filter entry can zero a tensor)."""
    if len(tensors) != 1 or len(scale) != 1:
        raise RecipeError(f"passthrough: takes exactly 1 model, got {len(tensors)}")
    tensor = tensors[0].to(work_dtype(tensors[0]), copy=True)
    return tensor if scale[0] == 1.0 else tensor.mul_(scale[0])
