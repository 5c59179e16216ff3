"""RAM and RAM+ (tensor-local): Reinforced Agent Merging (arXiv:2601.13572), as mergekit 0.1.5 does it.

An entry of a task vector "contributes" when |theta_i - base| > epsilon. Entries only one model
changes keep that model's delta; entries several models change get the mean of their deltas
(not the sum, so shared updates are not amplified). RAM+ also scales each model's unique entries
by 1 + r * clamp(shared_i / unique_i, 0, alpha), the ratio of its shared to unique entries.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vlmmerge.errors import RecipeError
from vlmmerge.methods.task_vectors import work_dtype


def ram(base: Tensor, finetuned: Sequence[Tensor], epsilon: float = 1e-5) -> Tensor:
    """base + sum over models of their delta on unique entries, mean delta on shared entries."""
    return _ram(base, finetuned, epsilon, r=0.0, alpha=0.0)


def ramplus_tl(
    base: Tensor, finetuned: Sequence[Tensor], r: float = 0.1, alpha: float = 0.2, epsilon: float = 1e-5
) -> Tensor:
    """RAM with each model's unique entries scaled by 1 + r * clamp(shared/unique, 0, alpha)."""
    return _ram(base, finetuned, epsilon, r=r, alpha=alpha)


def _ram(base: Tensor, finetuned: Sequence[Tensor], epsilon: float, r: float, alpha: float) -> Tensor:
    if epsilon < 0:
        raise RecipeError(f"epsilon: must be >= 0, got {epsilon!r}")
    dtype = work_dtype(base, *finetuned)
    if not finetuned:
        return base.to(dtype, copy=True)
    base_w = base.to(dtype)
    deltas = torch.stack([t.to(dtype) - base_w for t in finetuned]).reshape(len(finetuned), -1)
    contributes = deltas.abs() > epsilon
    deltas = deltas * contributes
    counts = contributes.sum(dim=0, keepdim=True)
    unique = counts == 1
    shared = counts > 1
    # max(unique_i, epsilon) as in mergekit: a model with no unique entry gets rho = shared/epsilon.
    rho = (contributes & shared).sum(dim=1).to(dtype) / (contributes & unique).sum(dim=1).to(dtype).clamp(min=epsilon)
    scale = 1 + r * rho.clamp(min=0, max=alpha)
    merged = (deltas * unique * scale.unsqueeze(-1) + deltas * shared / counts.clamp(min=1)).sum(dim=0)
    return base_w + merged.reshape(base.shape)
