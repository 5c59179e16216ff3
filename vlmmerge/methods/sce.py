"""SCE (Select, Calculate, Erase; arXiv 2408.07990), as mergekit 0.1.5 implements it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vlmmerge.methods.task_vectors import elect_sign, work_dtype


def sce_select_mask(task_vectors: Tensor, select_topk: float) -> Tensor:
    """1 at the `int(select_topk * nonzero)` entries whose variance across models is largest, else 0.

    `task_vectors` is stacked [models, ...]; the mask has the shape of one task vector.
    """
    template = task_vectors[0]
    if select_topk <= 0:
        return torch.zeros_like(template)
    if select_topk >= 1:
        return torch.ones_like(template)
    variance = torch.var(task_vectors, dim=0, unbiased=False)
    k = int(torch.count_nonzero(variance) * select_topk)
    mask = torch.zeros_like(variance)
    if k > 0:
        mask.view(-1)[torch.topk(variance.abs().view(-1), k=k, largest=True).indices] = 1
    return mask


def sce_weights(task_vectors: Tensor) -> Tensor:
    """Per-model weights: mean squared task vector, normalized to sum 1 (uniform when the sum < 1e-6)."""
    energy = task_vectors.square().reshape(task_vectors.shape[0], -1).mean(dim=1)
    total = float(energy.sum())
    if abs(total) < 1e-6:
        return torch.ones_like(energy) / energy.shape[0]
    return energy / total


def sce(base: Tensor, tensors: Sequence[Tensor], select_topk: float = 1.0) -> Tensor:
    """base + the energy-weighted mean of the selected task vectors that agree with the elected sign."""
    dtype = work_dtype(base, *tensors)
    base = base.to(dtype)
    if not tensors:
        return base.clone()
    deltas = torch.stack([t.to(dtype) - base for t in tensors])
    if select_topk < 1:
        deltas = deltas * sce_select_mask(deltas, select_topk).unsqueeze(0)
    agree = (torch.sign(deltas) == elect_sign(deltas, "sum")).to(dtype)
    weights = sce_weights(deltas).view(-1, *([1] * (deltas.dim() - 1))) * agree
    merged = (deltas * weights).sum(dim=0) / weights.sum(dim=0).clamp(min=1e-6)
    return base + merged
