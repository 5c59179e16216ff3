"""DELLA's MagPrune drop (Deep et al., 2024): keep probabilities ranked by magnitude within each row."""

from __future__ import annotations

import torch
from torch import Tensor

from vlmmerge.errors import RecipeError
from vlmmerge.methods.kept import KeptTaskVector
from vlmmerge.methods.masks import keep_below
from vlmmerge.methods.sparsify import _apply_keep_mask


def della_keep_probabilities(magnitudes: Tensor | None, density: float, epsilon: float,
                             kept: KeptTaskVector | None = None) -> Tensor:
    """DELLA MagPrune: per-row rank-scaled keep probabilities in [density - eps, density + eps].

    Ranks are taken along dim 1 (a 1-D tensor is one row): the smallest magnitude gets
    density - epsilon, the largest density + epsilon, linear in rank between. With `kept`, the
    rank fractions are computed once and kept (`magnitudes` is read only then).
    """
    if kept is not None:
        if kept.rank_fractions is None:
            kept.rank_fractions = _rank_fractions(magnitudes)
        return kept.rank_fractions.mul(2).mul_(epsilon).add_(density - epsilon)
    return _rank_fractions(magnitudes).mul_(2).mul_(epsilon).add_(density - epsilon)


def _rank_fractions(magnitudes: Tensor) -> Tensor:
    """Per-row ascending rank / (width - 1) in [0, 1] (0.5 for one-element rows), shaped as `magnitudes`."""
    rows = magnitudes if magnitudes.dim() >= 2 else magnitudes.unsqueeze(0)
    width = rows.shape[1]
    order = torch.argsort(rows, dim=1)
    ranks = torch.empty(rows.shape, dtype=torch.float32, device=rows.device)
    positions = torch.arange(width, dtype=torch.float32, device=rows.device)
    positions = positions.view((1, width) + (1,) * (rows.dim() - 2)).expand(rows.shape)
    ranks.scatter_(1, order, positions)
    del order
    if width > 1:
        rank_norm = ranks.div_(width - 1).clamp_(0, 1)
    else:
        # A single element per row has no rank spread (mergekit divides 0 by 0 here).
        rank_norm = ranks.fill_(0.5)
    return rank_norm.reshape(magnitudes.shape)


def della_sparsify(
    delta: Tensor,
    density: float,
    epsilon: float,
    generator: torch.Generator | None = None,
    rescale_norm: str | None = "l1",
    scratch: Tensor | None = None,
    kept: KeptTaskVector | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """DELLA (Deep et al., 2024) MagPrune drop with magnitude-ranked keep probabilities.

    Same uniforms as mergekit's `torch.bernoulli(probs)`. `rescale_norm` as in `dare_sparsify`
    ("probability" divides each survivor by its own keep probability, the paper's formula).
    density >= 1 returns `delta`; density <= 0 zeros it; otherwise density +/- epsilon must lie
    in (0, 1). Modifies `delta` in place.
    """
    if density >= 1:
        return delta
    if density <= 0:
        return (delta if out is None else out).zero_()
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise RecipeError(
            f"epsilon: density +/- epsilon must lie in (0, 1); got density={density}, epsilon={epsilon}"
        )
    magnitudes = None
    if kept is None or kept.rank_fractions is None:
        magnitudes = torch.abs(delta, out=scratch) if scratch is not None else delta.abs()
    probabilities = della_keep_probabilities(magnitudes, density, epsilon, kept)
    del magnitudes
    mask_out = scratch.view(probabilities.shape) if scratch is not None else None
    keep = keep_below(probabilities.shape, probabilities, generator, delta.device, out=mask_out)
    if rescale_norm == "probability":
        return torch.mul(delta, keep, out=delta if out is None else out).div_(probabilities)
    del probabilities
    return _apply_keep_mask(delta, keep, rescale_norm, out, kept)
