"""NearSwap (mergekit 0.1.5): take the other model's value where it is within `t` of the base."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vlmmerge.errors import RecipeError
from vlmmerge.methods.task_vectors import work_dtype


def nearswap(base: Tensor, tensors: Sequence[Tensor], t: float) -> Tensor:
    """weight = clamp(t / max(|base - other|, 1e-6), 0, 1); result = weight * other + (1 - weight) * base.

    Entries closer than `t` swap fully to the other model; farther ones move by t / distance.
    """
    if len(tensors) != 1:
        raise RecipeError(f"nearswap: needs exactly 1 non-base model, got {len(tensors)}")
    dtype = work_dtype(base, tensors[0])
    a, b = base.to(dtype), tensors[0].to(dtype)
    weight = (t / torch.abs(a - b).clamp(min=1e-6)).clamp(min=0, max=1)
    return weight * b + (1 - weight) * a
