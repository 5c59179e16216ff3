"""Multi-SLERP (mergekit 0.1.5): barycentric interpolation of any number of models on a hypersphere."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vlmmerge.errors import RecipeError
from vlmmerge.methods.task_vectors import work_dtype


def multislerp(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    normalize_weights: bool = True,
    eps: float = 1e-8,
) -> Tensor:
    """Weighted mean of the unit (task) vectors, pushed back onto the sphere by the exponential map
    of the weighted tangent vectors, scaled by the weighted mean norm; plus the base when given.

    One model is returned as is. When the weighted unit mean vanishes, two models fall back to
    linear interpolation and more raise a RecipeError (mergekit raises too).
    """
    if not tensors or len(weights) != len(tensors):
        raise RecipeError(f"multislerp: needs one weight per model, got {len(weights)} for {len(tensors)} models")
    dtype = work_dtype(base, *tensors)
    if len(tensors) == 1:
        return tensors[0].to(dtype).clone()
    stacked = torch.stack([t.to(dtype) for t in tensors])
    if base is not None:
        base = base.to(dtype)
        stacked -= base
    flat = stacked.reshape(stacked.shape[0], -1)
    w = torch.tensor(list(weights), dtype=dtype)
    if normalize_weights:
        w = w / w.sum()
    norms = torch.linalg.vector_norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * w.view(-1, 1)).sum(0)
    mean_norm = torch.linalg.vector_norm(mean)
    if mean_norm < eps:
        if len(tensors) != 2:
            raise RecipeError(
                "multislerp: the weighted sum of the unit vectors is zero (antipodal models with "
                "balancing weights); use other weights"
            )
        result = stacked[0] * w[0] + stacked[1] * w[1]
        return result if base is None else result + base
    mean = mean / mean_norm
    tangents = units - (units * mean).sum(-1, keepdim=True) * mean
    tangent = (tangents * w.view(-1, 1)).sum(0)
    tangent_norm = torch.linalg.vector_norm(tangent) + eps
    result = mean * torch.cos(tangent_norm) + tangent * (torch.sin(tangent_norm) / tangent_norm)
    result = (result * (norms.squeeze(-1) * w).sum()).view(stacked.shape[1:])
    return result if base is None else result + base
