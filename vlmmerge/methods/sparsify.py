"""Sparsification of task vectors: magnitude top-k, breadcrumbs and DARE drops (DELLA: `della.py`).

All functions take a delta tensor (finetuned - base) that the caller owns: they may modify it in
place and return it (with `out`, a tensor of its shape and dtype, they write the result there and
leave `delta` as it is: a kept task vector, `kept.py`; same operations, same bits). Selection never sorts a whole tensor: an exact rank threshold is found with
`torch.kthvalue` on a small bracket located by a deterministic sample (see `selection.value_at_rank`).

Ties at a rank boundary are broken by flat index, as a stable sort in mergekit's direction would
order them: the TIES top-k keeps the lower indices among equal magnitudes (stable descending
sort); breadcrumbs ranks ascending by (magnitude, index). mergekit 0.1.5 uses an unstable
`argsort`, so it agrees with us exactly whenever the boundary magnitudes are distinct.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlmmerge.errors import RecipeError
from vlmmerge.methods.kept import KeptTaskVector, count_above, count_below
from vlmmerge.methods.masks import dare_mask, draw_uniforms, keep_below  # noqa: F401  (dare_mask, draw_uniforms: re-exported)
from vlmmerge.methods.selection import count_true, position_of_nth_equal, select_rank, value_at_rank

# mergekit's tolerance below which an L1/L2/Linf norm is treated as zero (no rescaling).
RESCALE_EPS = 1e-7

RESCALE_NORMS = ("l1", "l2", "linf", "probability")
_RESCALE_EPS_IN: dict[torch.dtype, float] = {}


def negligible(norm: Tensor) -> bool:
    """`norm < RESCALE_EPS` as torch computes it (the threshold rounded to the norm's dtype), read
    as one Python float: the tensor comparison costs ~20 us on a live candidate's hot path."""
    eps = _RESCALE_EPS_IN.get(norm.dtype)
    if eps is None:
        eps = _RESCALE_EPS_IN[norm.dtype] = float(torch.tensor(RESCALE_EPS, dtype=norm.dtype))
    return float(norm) < eps


def rank_range_mask(values: Tensor, start: int, stop: int, ordered: Tensor | None = None) -> Tensor:
    """Boolean mask (shape of `values`) of the elements whose ascending rank lies in [start, stop).

    Ranks order by value, ties by flat index. Two exact rank thresholds, no sort (`ordered`: the
    values already sorted, kept between merges; the thresholds and counts are then lookups).
    """
    flat = values.reshape(-1)
    n = flat.numel()
    start, stop = max(start, 0), min(stop, n)
    if stop <= start:
        return torch.zeros(values.shape, dtype=torch.bool, device=values.device)
    if start == 0 and stop == n:
        return torch.ones(values.shape, dtype=torch.bool, device=values.device)
    at = (lambda rank: ordered[rank]) if ordered is not None else (lambda rank: value_at_rank(flat, rank))
    lo = at(start) if start > 0 else None
    hi = at(stop - 1) if stop < n else None
    if lo is not None:
        mask = flat >= lo
        if hi is not None:
            mask.logical_and_(flat <= hi)
    else:
        mask = flat <= hi
    if count_true(mask) != stop - start:
        # Ties at a boundary value: drop the tied elements that rank outside [start, stop).
        if lo is not None:
            excess_low = start - (count_below(ordered, lo) if ordered is not None else count_true(flat < lo))
            if excess_low > 0:
                mask[torch.nonzero(flat == lo).squeeze(1)[:excess_low]] = False
        if hi is not None:
            excess_high = (n - stop) - (count_above(ordered, hi) if ordered is not None else count_true(flat > hi))
            if excess_high > 0:
                mask[torch.nonzero(flat == hi).squeeze(1)[-excess_high:]] = False
    return mask.reshape(values.shape)


def _rank_range_keep(flat: Tensor, start: int, stop: int, ordered: Tensor, out: Tensor) -> Tensor | None:
    """`rank_range_mask` as 1.0 / 0.0 in `out` (flat, float), from the sorted values `ordered`:
    float compares, the counts by lookup (a bool mask is slow to build and to apply). Overwrites
    `flat`. None when values tie at a boundary (the caller takes `rank_range_mask`)."""
    n = flat.numel()
    start, stop = max(start, 0), min(stop, n)
    if stop <= start or (start == 0 and stop == n):
        return out.fill_(0.0 if stop <= start else 1.0)
    lo = ordered[start] if start > 0 else None
    hi = ordered[stop - 1] if stop < n else None
    inside = n - (count_below(ordered, lo) if lo is not None else 0) - (count_above(ordered, hi) if hi is not None else 0)
    if inside != stop - start:
        return None
    if lo is None:
        return torch.le(flat, hi, out=out)
    torch.ge(flat, lo, out=out)
    return out.mul_(torch.le(flat, hi, out=flat)) if hi is not None else out


def rescale_to_norm(masked: Tensor, before: Tensor, norm: str, scratch: Tensor | None = None) -> Tensor:
    """Scale `masked` in place so its `norm` equals `before` (the unmasked tensor's norm).

    No scaling when either norm is below 1e-7 (mergekit's `rescaled_masked_tensor`).
    `scratch` (shape and dtype of `masked`) saves the temporary of an L1 / Linf norm.
    """
    after = _norm_of(masked, norm, scratch)
    if negligible(before) or negligible(after):
        return masked
    return masked.mul_(before / after)


def _norm_of(tensor: Tensor, norm: str, scratch: Tensor | None = None) -> Tensor:
    # abs().sum(), not vector_norm(ord=1): the latter accumulates naively in float32 (0.1% off
    # on 8M entries) where sum() uses cascade summation, as mergekit does. The absolute values
    # go to `scratch` when given (same values, same sum, no fresh allocation).
    if norm in ("l1", "linf"):
        usable = scratch is not None and scratch.shape == tensor.shape and scratch.dtype == tensor.dtype
        magnitudes = torch.abs(tensor, out=scratch) if usable else tensor.abs()
        if norm == "l1":
            return magnitudes.sum()
        return magnitudes.max() if tensor.numel() else tensor.new_zeros(())
    if norm == "l2":
        return torch.linalg.vector_norm(tensor)
    raise RecipeError(f"rescale_norm: unknown norm {norm!r}; expected one of l1, l2, linf")


def _before_norm(delta: Tensor, norm: str, scratch: Tensor | None, kept: KeptTaskVector | None) -> Tensor:
    """`_norm_of(delta)`; kept with the task vector when `delta` is one (`kept`)."""
    if kept is None:
        return _norm_of(delta, norm, scratch)
    return kept.norm(norm, lambda: _norm_of(delta, norm, scratch))


def _check_deterministic_norm(rescale_norm: str | None) -> None:
    if rescale_norm == "probability":
        raise RecipeError(
            "rescale_norm: 'probability' applies only to random drops (DARE, DELLA); "
            "magnitude trimming keeps elements with certainty"
        )


def _apply_keep_mask(delta: Tensor, keep: Tensor, rescale_norm: str | None, out: Tensor | None = None,
                     kept: KeptTaskVector | None = None) -> Tensor:
    before = _before_norm(delta, rescale_norm, None, kept) if rescale_norm is not None else None
    delta = torch.mul(delta, keep, out=out) if out is not None else delta.mul_(keep)
    if rescale_norm is not None:
        rescale_to_norm(delta, before, rescale_norm)
    return delta


def top_k_magnitudes(magnitudes: Tensor, k: int, ordered: Tensor | None = None) -> Tensor:
    """Zero all but the k largest entries of a non-negative tensor, in place; returns it.

    Among equal values at the threshold the lower flat indices are kept (the order of a stable
    descending sort). No boolean masks: `threshold_` keeps x > prev_float(t), i.e. x >= t.
    `ordered`: the magnitudes sorted ascending (kept between merges): the threshold is a lookup.
    """
    flat = magnitudes.reshape(-1)
    n = flat.numel()
    if k >= n:
        return magnitudes
    if k <= 0:
        return magnitudes.zero_()
    if ordered is not None:
        threshold = ordered[n - k]
        n_below = count_below(ordered, threshold)
        n_equal = n - n_below - count_above(ordered, threshold)
        equal_per_chunk = None
    else:
        threshold, n_below, n_equal, equal_per_chunk = select_rank(flat, n - k, counts=True)
    if threshold <= 0:
        return magnitudes  # fewer than k nonzero entries: every nonzero entry is kept
    below_threshold = float(torch.nextafter(threshold, torch.zeros_like(threshold)))
    kept_equal = k - (n - n_below - n_equal)  # entries equal to the threshold that are kept
    if kept_equal >= n_equal:
        torch.threshold_(flat, below_threshold, 0.0)
        return magnitudes
    # Keep the first `kept_equal` entries equal to the threshold: >= threshold before the
    # position just past the last kept one, > threshold from there on.
    cut = position_of_nth_equal(flat, threshold, kept_equal, equal_per_chunk) + 1 if kept_equal > 0 else 0
    torch.threshold_(flat[:cut], below_threshold, 0.0)
    torch.threshold_(flat[cut:], float(threshold), 0.0)
    return magnitudes


def trim_to_density(
    delta: Tensor, density: float, rescale_norm: str | None = None, scratch: Tensor | None = None,
    kept: KeptTaskVector | None = None, out: Tensor | None = None,
) -> Tensor:
    """Keep the `density` fraction of largest-magnitude entries (TIES trim); zero the rest.

    mergekit semantics: k = max(1, int(density * numel)); density >= 1 keeps all, density <= 0
    keeps none. With `rescale_norm` the kept entries are scaled to the original norm.
    Modifies `delta` in place and returns it; `scratch` (same shape and dtype) saves an allocation.
    """
    _check_deterministic_norm(rescale_norm)
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return (delta if out is None else out).zero_()
    k = max(1, int(density * delta.numel()))
    magnitudes = torch.abs(delta, out=scratch) if scratch is not None else delta.abs()
    before = None
    if rescale_norm is not None:
        before = magnitudes.sum() if rescale_norm == "l1" else _norm_of(delta, rescale_norm)
    top_k_magnitudes(magnitudes, k, kept.sorted_magnitudes(magnitudes) if kept is not None else None)
    trimmed = torch.copysign(magnitudes, delta, out=delta if out is None else out)
    if rescale_norm is not None:
        rescale_to_norm(trimmed, before, rescale_norm)
    return trimmed


def trim_outliers(
    delta: Tensor,
    density: float,
    gamma: float = 0.01,
    rescale_norm: str | None = None,
    scratch: Tensor | None = None,
    kept: KeptTaskVector | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """Model Breadcrumbs: drop the `gamma` fraction of largest magnitudes, then the smallest,
    keeping `density` of the entries.

    mergekit semantics: target = int(density * n), n_top = int(gamma * n),
    n_bottom = max(0, n - target - n_top); keep ascending ranks [n_bottom, n_bottom + target).
    Modifies `delta` in place and returns it.
    """
    _check_deterministic_norm(rescale_norm)
    if density >= 1:
        return delta
    n = delta.numel()
    target = int(density * n)
    n_top = int(gamma * n)
    n_bottom = max(0, n - target - n_top)
    magnitudes = torch.abs(delta, out=scratch) if scratch is not None else delta.abs()
    ordered = kept.sorted_magnitudes(magnitudes) if kept is not None else None
    keep = None
    if ordered is not None and out is not None and out.dtype.is_floating_point:
        keep = _rank_range_keep(magnitudes.reshape(-1), n_bottom, n_bottom + target, ordered, out.view(-1))
    keep = rank_range_mask(magnitudes, n_bottom, n_bottom + target, ordered) if keep is None else out
    del magnitudes
    return _apply_keep_mask(delta, keep, rescale_norm, out, kept)


def dare_sparsify(
    delta: Tensor,
    density: float,
    generator: torch.Generator | None = None,
    rescale_norm: str | None = "l1",
    scratch: Tensor | None = None,
    out: Tensor | None = None,
    kept: KeptTaskVector | None = None,
) -> Tensor:
    """DARE (Yu et al., 2023): drop each entry with probability 1 - density, rescale the rest.

    `rescale_norm` "l1" (mergekit 0.1.5) matches the L1 norm of the delta; "probability" divides
    by the density (the paper's unbiased 1/(1-p)); None keeps the survivors as they are.
    The mask is `dare_mask(delta.shape, density, generator)`, drawn on the generator's device
    (see `masks.draw_uniforms`). density >= 1 returns `delta` untouched and draws nothing.
    Modifies `delta` in place.
    """
    if density >= 1:
        return delta
    # The norm before the drop is taken first, so that `scratch` can hold the absolute values
    # now, the mask next and the absolute values after the drop last (no fresh allocation).
    before = None
    if rescale_norm not in (None, "probability"):
        before = _before_norm(delta, rescale_norm, scratch, kept)
    # float32 uniforms whatever delta's dtype (the stream dare_mask and mergekit draw), compared
    # in place to a 1.0 / 0.0 mask: cheaper to apply than a bool mask.
    keep = keep_below(delta.shape, density, generator, delta.device, out=scratch)
    target = delta if out is None else out
    if rescale_norm == "probability":
        if density <= 0:
            return target.zero_()
        return torch.mul(delta, keep, out=target).div_(density)
    delta = torch.mul(delta, keep, out=target)
    del keep
    if before is not None:
        rescale_to_norm(delta, before, rescale_norm, scratch)
    return delta
