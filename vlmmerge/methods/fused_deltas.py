"""The task-vector merge on the fused path (`fused.py`): each sparsifier's elementwise rest as a `Delta`.

What cannot be elementwise stays eager, computed as the eager sparsifier computes it: top-k
thresholds (selection or a lookup in kept sorted magnitudes), DELLA's rank fractions, the
uniforms, the norms a rescale reads. A sparsifier without a fused form here (breadcrumbs, TIES
with rescaling) runs eagerly into the model's buffer and enters the kernel as a plain delta.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from vlmmerge.methods import fused
from vlmmerge.methods.fused import Delta
from vlmmerge.methods.kept import KeptTaskVector, count_above, count_below
from vlmmerge.methods.masks import DrawnUniforms, draw_uniforms
from vlmmerge.methods.selection import position_of_nth_equal, select_rank, value_at_rank
from vlmmerge.methods.sparsify import _before_norm, _norm_of, negligible

_ONE = torch.ones((), dtype=torch.float32)
_SCAN_CHUNK = 1 << 20

# fusable(delta, model_index, scratch, out, magnitudes) -> Delta | None (None: run the eager sparsifier);
# magnitudes: |delta|, already in `scratch` (written with the delta), or None
Fusable = Callable[[Tensor, int, Tensor, Tensor, Tensor | None], Delta | None]


def plain(delta: Tensor, ratio: Tensor = _ONE) -> Delta:
    return Delta("plain", (delta, ratio))


def _nth_equal_magnitude(delta: Tensor, target: Tensor, nth: int) -> int:
    """Flat index of the `nth` (1-based) element with |delta| == target (chunked, stops early)."""
    offset, seen = 0, 0
    for chunk in delta.reshape(-1).split(_SCAN_CHUNK):
        equal = chunk.abs() == target
        count = int(torch.count_nonzero(equal))
        if seen + count >= nth:
            return offset + int(torch.nonzero(equal).reshape(-1)[nth - seen - 1])
        seen += count
        offset += chunk.numel()
    raise ValueError(f"fewer than {nth} elements of magnitude {float(target)}")


def trim_delta(delta: Tensor, density: float, rescale_norm: str | None, scratch: Tensor,
               kept: KeptTaskVector | None, magnitudes: Tensor | None = None) -> Delta | None:
    """`sparsify.trim_to_density` (without rescaling) as a TIES cut: thresholds here, the cut in the kernel."""
    if rescale_norm is not None or delta.numel() == 0 or delta.numel() >= 2**31:
        return None
    if density >= 1:
        return plain(delta)
    if density <= 0:
        return None
    n = delta.numel()
    k = max(1, int(density * n))
    if k >= n:
        return plain(delta)
    ordered = kept.sorted if kept is not None and kept.sorted is not None and kept.sorted.numel() == n else None
    if ordered is None:
        magnitudes = _magnitudes(delta, scratch, magnitudes).reshape(-1)
        ordered = kept.sorted_magnitudes(magnitudes) if kept is not None else None
    else:
        magnitudes = None
    equal_per_chunk = None
    if ordered is not None:
        threshold = ordered[n - k]
        n_below = count_below(ordered, threshold)
        n_equal = n - n_below - count_above(ordered, threshold)
    else:
        threshold, n_below, n_equal, equal_per_chunk = select_rank(magnitudes, n - k, counts=True)
    if threshold <= 0:
        return plain(delta)
    below = torch.nextafter(threshold, torch.zeros_like(threshold))
    kept_equal = k - (n - n_below - n_equal)
    if kept_equal >= n_equal:
        cut = n
    elif kept_equal <= 0:
        cut = 0
    elif magnitudes is not None:  # |delta| is still in `scratch`
        cut = position_of_nth_equal(magnitudes, threshold, kept_equal, equal_per_chunk) + 1
    else:
        cut = _nth_equal_magnitude(delta, threshold, kept_equal) + 1
    return Delta("trim", (delta, fused.scalar(below), fused.scalar(threshold), torch.tensor(cut, dtype=torch.int32)))


def range_delta(delta: Tensor, density: float, gamma: float, rescale_norm: str | None, scratch: Tensor,
                kept: KeptTaskVector | None, magnitudes: Tensor | None = None) -> Delta | None:
    """`sparsify.trim_outliers` (without rescaling): ascending ranks [n_bottom, n_bottom + target) of
    |delta| kept, ties at each bound broken by flat index as `rank_range_mask` breaks them."""
    n = delta.numel()
    if rescale_norm is not None or n == 0 or n >= 2**31:
        return None
    if density >= 1:
        return plain(delta)
    target, n_top = int(density * n), int(gamma * n)
    start = max(0, n - target - n_top)
    stop = min(start + target, n)
    if stop <= start or (start == 0 and stop == n):
        return None  # all dropped or all kept: the eager code
    ordered = kept.sorted if kept is not None and kept.sorted is not None and kept.sorted.numel() == n else None
    if ordered is None:
        magnitudes = _magnitudes(delta, scratch, magnitudes).reshape(-1)
        ordered = kept.sorted_magnitudes(magnitudes) if kept is not None else None
    else:
        magnitudes = None
    at = (lambda rank: ordered[rank]) if ordered is not None else (lambda rank: value_at_rank(magnitudes, rank))
    below = (lambda v: count_below(ordered, v)) if ordered is not None else (lambda v: int((magnitudes < v).sum()))
    above = (lambda v: count_above(ordered, v)) if ordered is not None else (lambda v: int((magnitudes > v).sum()))
    infinity = torch.tensor(float("inf"))
    lo = at(start) if start > 0 else -infinity
    hi = at(stop - 1) if stop < n else infinity
    cut_lo, cut_hi = 0, n
    excess_low = start - below(lo) if start > 0 else 0
    if excess_low > 0:  # the first `excess_low` entries equal to lo rank below `start`
        cut_lo = _nth_equal_magnitude(delta, lo, excess_low) + 1
    excess_high = (n - stop) - above(hi) if stop < n else 0
    if excess_high > 0:  # the last `excess_high` entries equal to hi rank from `stop` on
        equal = n - below(hi) - above(hi)
        cut_hi = _nth_equal_magnitude(delta, hi, equal - excess_high + 1)
    s = fused.scalar
    return Delta("range", (delta, s(torch.nextafter(lo, infinity)), s(lo), torch.tensor(cut_lo, dtype=torch.int32),
                           s(hi), s(torch.nextafter(hi, -infinity)), torch.tensor(cut_hi, dtype=torch.int32)))


def _magnitudes(delta: Tensor, scratch: Tensor, staged: Tensor | None) -> Tensor:
    """|delta| in `scratch`: as staged with the delta, else computed now."""
    return staged if staged is not None else torch.abs(delta, out=scratch)


def _magnitude_norm(magnitudes: Tensor, norm: str) -> Tensor:
    """The L1 / Linf norm of what `magnitudes` holds the absolute values of (`sparsify._norm_of`'s reductions)."""
    return magnitudes.sum() if norm == "l1" else magnitudes.max()


def _norm_before(delta: Tensor, norm: str, scratch: Tensor, kept: KeptTaskVector | None,
                 magnitudes: Tensor | None) -> Tensor:
    """`sparsify._before_norm`, summing (or maxing) |delta| where it was staged: the same numbers."""
    if magnitudes is not None and norm in ("l1", "linf"):
        return _magnitude_norm(magnitudes, norm)
    return _before_norm(delta, norm, scratch, kept)


def _uniforms(shape: torch.Size, generator, device, scratch: Tensor) -> Tensor:
    """The uniforms `masks.keep_below` compares: kept draws where they lie, else drawn into `scratch`."""
    if isinstance(generator, DrawnUniforms):
        return generator.next(shape)
    return draw_uniforms(shape, generator, device, out=scratch)


def _rescaled(delta: Delta, before: Tensor, rescale_norm: str, base: Tensor | None, out: Tensor,
              scratch: Tensor, scratch_free: bool) -> Delta:
    """The rescaled keep: `delta`'s kept entries times the factor `sparsify.rescale_to_norm` applies.

    When the kept entries' L1 / Linf norm can be staged in `scratch` and `delta` does not read
    `out` (a kept task vector: live candidates), only |kept| is written there and the kernel
    recomputes the keep and applies the factor (`<kind>_scaled`: x * mask * ratio, the eager
    `mul(delta, keep).mul_(ratio)`, same bits); else the kept entries are written to `out` first,
    their magnitudes to `scratch` in the same pass (over the uniforms when they lie there: the
    kernel is elementwise, each uniform is read before its place is written)."""
    stages_magnitudes = rescale_norm in ("l1", "linf") and scratch.numel() > 0
    wants_magnitudes = scratch_free and stages_magnitudes
    if wants_magnitudes and delta.kind in _SCALED and not any(fused._same(t, out) for t in delta.tensors):
        magnitudes = fused.stage(delta, base, None, scratch)
        after = _magnitude_norm(magnitudes, rescale_norm)
        if negligible(before) or negligible(after):
            return delta
        return Delta(_SCALED[delta.kind], (*delta.tensors, fused.scalar(before / after)))
    fused.stage(delta, base, out, scratch if stages_magnitudes else None)
    if stages_magnitudes:
        after = _magnitude_norm(scratch, rescale_norm)
    else:
        after = _norm_of(out, rescale_norm, scratch)
    if negligible(before) or negligible(after):
        return plain(out)
    return plain(out, before / after)


_SCALED = {"dare": "dare_scaled", "della": "della_scaled"}


def dare_delta(delta: Tensor, density: float, generator, rescale_norm: str | None, scratch: Tensor, out: Tensor,
               kept: KeptTaskVector | None, magnitudes: Tensor | None = None) -> Delta | None:
    """`sparsify.dare_sparsify` with its mask applied in the kernel."""
    if density >= 1:
        return plain(delta)
    if rescale_norm == "probability" and density <= 0:
        return None
    before = None
    if rescale_norm not in (None, "probability"):
        before = _norm_before(delta, rescale_norm, scratch, kept, magnitudes)
    u = _uniforms(delta.shape, generator, delta.device, scratch)
    spec = Delta("dare_p" if rescale_norm == "probability" else "dare", (delta, u, fused.scalar(density)))
    if before is None:
        return spec
    return _rescaled(spec, before, rescale_norm, None, out, scratch, u is not scratch)


def della_delta(delta: Tensor, density: float, epsilon: float, generator, rescale_norm: str | None,
                scratch: Tensor, out: Tensor, kept: KeptTaskVector | None,
                magnitudes: Tensor | None = None) -> Delta | None:
    """`della.della_sparsify` with its keep probabilities and mask computed in the kernel."""
    from vlmmerge.methods.della import _rank_fractions

    if density >= 1:
        return plain(delta)
    if density <= 0 or density + epsilon >= 1 or density - epsilon <= 0:
        return None  # zeros, or the eager code's error
    if kept is not None:
        if kept.rank_fractions is None:
            kept.rank_fractions = _rank_fractions(torch.abs(delta, out=scratch))
        fractions = kept.rank_fractions
    else:
        magnitudes = _magnitudes(delta, scratch, magnitudes)
        fractions = _rank_fractions(magnitudes)
    before = None
    if rescale_norm not in (None, "probability"):
        before = _norm_before(delta, rescale_norm, scratch, kept, magnitudes)
    u = _uniforms(delta.shape, generator, delta.device, scratch)
    spec = Delta("della_p" if rescale_norm == "probability" else "della",
                 (delta, u, fractions, fused.scalar(epsilon), fused.scalar(density - epsilon)))
    if before is None:
        return spec
    return _rescaled(spec, before, rescale_norm, None, out, scratch, u is not scratch)


def fused_task_arithmetic(base_in: Tensor, finetuned: Sequence[Tensor], weights_t: Tensor, entries: Sequence,
                          sparsify, fusable: Fusable | None, consensus: str | None, normalize: bool,
                          lambda_: float, magnitudes_first: bool = False) -> Tensor:
    """`task_vectors.generalized_task_arithmetic` (float32 work dtype) on the fused path: same bits.

    `magnitudes_first`: the fusable reads |delta| (a cut, a rank, a norm), so a delta computed here
    is written with its magnitudes (in `scratch`), one pass instead of two."""
    shape, dtype = base_in.shape, torch.float32
    scratch = None
    deltas = []
    for i, member in enumerate(finetuned):
        entry = entries[i]
        if sparsify is None and entry is None:
            deltas.append(Delta("sub", (member,)))
            continue
        if scratch is None and sparsify is not None:
            scratch = fused.buffer(f"scratch{i}", shape)
        out = fused.buffer(f"delta{i}", shape)
        magnitudes = None
        if entry is not None:
            delta = entry.task_vector(member, base_in, dtype)
        else:
            magnitudes = scratch if magnitudes_first and sparsify is not None else None
            delta = fused.stage(Delta("sub", (member,)), base_in, out, magnitudes)
        if sparsify is None:
            deltas.append(plain(delta))
            continue
        spec = fusable(delta, i, scratch, out, magnitudes) if fusable is not None else None
        if spec is None:
            spec = plain(sparsify(delta, i, scratch, out) if entry is not None else sparsify(delta, i, scratch))
        if any(t is scratch for t in spec.tensors):
            scratch = None  # it holds this model's uniforms until the kernel runs: the next model takes another
        deltas.append(spec)
    divisor = _ONE
    if consensus is None and normalize:
        divisor = weights_t.sum()
        if divisor.abs() < 1e-8:
            divisor = _ONE
    return fused.merge(base_in, deltas, weights_t, consensus, normalize, divisor, lambda_)
