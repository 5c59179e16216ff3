"""Exact rank selection without sorting: the value at a rank of a large tensor, its counts, and
where the copies of a value lie (the thresholds of magnitude top-k, breadcrumbs and TIES).

A deterministic sample brackets the rank; one chunked pass counts the values below the bracket
and gathers those inside, and only these go to `torch.kthvalue`. The answer is exact: if the
bracket misses (adversarial data), the whole tensor is searched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

# Below this many elements `torch.kthvalue` on the whole tensor is already cheap; above it (8x the
# sample) the bracket is ~3x faster (a 0.8M-element MLP matrix: 10 ms instead of 32 ms), same answer.
_DIRECT_SELECT_MAX = 1 << 17
# Size of the deterministic sample that brackets the wanted rank in large tensors.
_SAMPLE_SIZE = 1 << 14
_CHUNK = 1 << 18
_SCAN_CHUNK = 1 << 20
_SAMPLE_SEED = 0x5EED


def count_true(mask: Tensor) -> int:
    return int(torch.count_nonzero(mask))


def value_at_rank(values: Tensor, rank: int) -> Tensor:
    """The value at 0-based ascending `rank` of a 1-D tensor: `torch.kthvalue(values, rank + 1)`.

    For large tensors a fixed-seed random sample brackets the rank; one chunked pass counts the
    values below the bracket and gathers those inside, and only these go to `kthvalue`. The
    answer is exact: if the bracket misses (adversarial data), the whole tensor is searched. The
    caller's random generator is never touched.
    """
    return select_rank(values, rank)[0]


class Selection(NamedTuple):
    """The value at a rank; with counts, how many values lie below it and equal it, and where the equal
    ones are (per `_CHUNK` chunk of the flat values, for `position_of_nth_equal`)."""

    value: Tensor
    below: int | None = None
    equal: int | None = None
    equal_per_chunk: tuple[int, ...] | None = None


def select_rank(values: Tensor, rank: int, counts: bool = False) -> Selection:
    """`value_at_rank`, plus (with `counts`) how many values are below it and equal to it.

    The counts come from the bracket's candidates, gathered chunk by chunk (every value equal to
    the answer lies inside the bracket), so they and the equal ones' counts per chunk cost no extra
    pass over a large tensor. Where the sample's bracket holds one value only (many equal
    magnitudes: the deltas of bf16 models), that value is checked with two counts per chunk instead
    of gathering its copies (a fifth of a tensor, measured).
    """
    n = values.numel()
    if not 0 <= rank < n:
        raise ValueError(f"rank {rank} out of range for {n} values")
    if n > _DIRECT_SELECT_MAX:
        sample = _bracket_sample(values)
        lo, hi = _bracket(sample, rank, n)
        if lo is not None and hi is not None and bool(lo == hi):
            below, equal = _counts_per_chunk(values, lo)
            if sum(below) <= rank < sum(below) + sum(equal):
                return Selection(lo, sum(below), sum(equal), tuple(equal))
        bracketed = _select_in_bracket(values, rank, lo, hi)
        if bracketed is not None:
            value, below, parts = bracketed
            if not counts:
                return Selection(value)
            equal = [count_true(part == value) for part in parts]
            return Selection(value, below + sum(count_true(part < value) for part in parts), sum(equal), tuple(equal))
    value = torch.kthvalue(values, rank + 1).values
    if not counts:
        return Selection(value)
    return Selection(value, count_true(values < value), count_true(values == value))


def _bracket_sample(values: Tensor) -> Tensor:
    sampler = torch.Generator(device=values.device).manual_seed(_SAMPLE_SEED)
    picks = torch.randint(values.numel(), (_SAMPLE_SIZE,), generator=sampler, device=values.device)
    return values[picks].sort().values


def _bracket(sample: Tensor, rank: int, n: int) -> tuple[Tensor | None, Tensor | None]:
    """Bounds that hold the value at `rank` with near certainty (None: unbounded on that side)."""
    q = rank / n
    margin = 4.0 * math.sqrt(_SAMPLE_SIZE * q * (1.0 - q)) + 32.0
    lo_index = int(q * _SAMPLE_SIZE - margin)
    hi_index = int(math.ceil(q * _SAMPLE_SIZE + margin))
    lo = sample[lo_index] if lo_index > 0 else None
    hi = sample[hi_index] if hi_index < _SAMPLE_SIZE - 1 else None
    return lo, hi


def _counts_per_chunk(values: Tensor, target: Tensor) -> tuple[list[int], list[int]]:
    """Per `_CHUNK` chunk of flat `values`: how many are below `target`, how many equal it."""
    below, equal = [], []
    for chunk in values.reshape(-1).split(_CHUNK):
        below.append(count_true(chunk < target))
        equal.append(count_true(chunk == target))
    return below, equal


def _select_in_bracket(values: Tensor, rank: int, lo: Tensor | None, hi: Tensor | None,
                       ) -> tuple[Tensor, int, list[Tensor]] | None:
    """(value at `rank`, count below the bracket, the bracket's values per `_CHUNK` chunk), or None if
    the bracket misses."""
    if lo is None and hi is None:
        return None
    below = 0
    inside_parts = []
    # Chunks small enough to stay in cache and to reuse allocator memory.
    for chunk in values.split(_CHUNK):
        if lo is not None:
            inside = chunk >= lo
            below += chunk.numel() - count_true(inside)
            if hi is not None:
                inside.logical_and_(chunk <= hi)
        else:
            inside = chunk <= hi
        inside_parts.append(chunk[inside])
    candidates = torch.cat(inside_parts)
    if not below <= rank < below + candidates.numel():
        return None
    return torch.kthvalue(candidates, rank - below + 1).values, below, inside_parts


def position_of_nth_equal(values: Tensor, target: Tensor, nth: int,
                           equal_per_chunk: Sequence[int] | None = None) -> int:
    """Flat index of the `nth` (1-based) element equal to `target`, scanning chunk by chunk.

    Stops at the chunk that holds it, so on average only the fraction of the tensor before it is
    read; with `equal_per_chunk` (`Selection`'s, of these values) only the `_CHUNK` chunk that holds it.
    """
    flat = values.reshape(-1)
    offset, seen, first, step = 0, 0, 0, _SCAN_CHUNK
    if equal_per_chunk is not None:
        for count in equal_per_chunk:
            if seen + count >= nth:
                break
            seen += count
            first += 1
        offset, step = first * _CHUNK, _CHUNK
    for chunk in flat[offset:].split(step):
        equal = chunk == target
        count = count_true(equal)
        if seen + count >= nth:
            return offset + int(torch.nonzero(equal).reshape(-1)[nth - seen - 1])
        seen += count
        offset += chunk.numel()
    raise ValueError(f"fewer than {nth} elements equal {float(target)}")
