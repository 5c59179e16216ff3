"""Arcee Fusion (mergekit 0.1.5): take the other model's value only where it matters most.

importance = |theta - base| * KL(softmax(theta) || softmax(base)), the KL taken along the last
dimension (one value per row). Entries whose importance reaches median + 1.5 * IQR (an outlier
fence) take theta's value; the rest keep the base's.

Quantiles use mergekit's rule (the sorted value at index floor(q * (n - 1))) on every entry;
mergekit estimates them from 1,000,000 entries drawn from torch's global generator when a tensor
is larger, so on such tensors its fence is random and ours is the exact one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vlmmerge.errors import RecipeError
from vlmmerge.methods.task_vectors import work_dtype

_KL_EPS = 1e-8  # mergekit's: keeps log(p / q) finite where a softmax underflows


def importance(theta: Tensor, base: Tensor) -> Tensor:
    """|theta - base| times the per-row KL divergence of softmax(theta) from softmax(base)."""
    p = torch.softmax(theta, dim=-1) + _KL_EPS
    q = torch.softmax(base, dim=-1) + _KL_EPS
    kl = torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)
    return (theta - base).abs() * kl


def fusion_threshold(scores: Tensor) -> Tensor:
    """median + 1.5 * (q3 - q1), quantile q being the sorted value at index floor(q * (n - 1))."""
    ordered = torch.sort(scores.reshape(-1)).values
    last = ordered.numel() - 1
    q1, median, q3 = (ordered[int(q * last)] for q in (0.25, 0.5, 0.75))
    return median + 1.5 * (q3 - q1)


def arcee_fusion(base: Tensor, finetuned: Sequence[Tensor]) -> Tensor:
    """base where the importance of the change is below the fence, the other model elsewhere."""
    if len(finetuned) != 1:
        raise RecipeError(f"arcee_fusion: merges the base with exactly one model, got {len(finetuned)}")
    dtype = work_dtype(base, *finetuned)
    base_w, theta = base.to(dtype), finetuned[0].to(dtype)
    scores = importance(theta, base_w)
    mask = scores >= fusion_threshold(scores)
    return base_w + (theta - base_w) * mask  # mergekit's arithmetic, so results match to the bit
