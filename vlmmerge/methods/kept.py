"""What a task-vector merge of one tensor computes that never changes between merges of the same
inputs: kept between the candidates of a search (`vlmmerge.live`), never by `vlmmerge merge`.

Per (tensor, model): the task vector tau = theta - theta_base in the compute dtype, its magnitudes
sorted ascending (so the value at any rank, the top-k threshold of any density, is an index
lookup instead of a selection), DELLA's per-row rank fractions, and SLERP's angle inputs (the
two models' norms and dot product: only t changes between candidates). Each is computed the first
time a merge asks for it, with the same operations the merge itself runs, so a merge that uses
kept values gives the same bits as one that computes them (tests/test_live_speed_invariants.py).

The kernels find their entries through `kept(index, count)`, active only inside `keeping(...)`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor


class KeptTaskVector:
    """One model's kept values for one tensor (each None until first computed)."""

    def __init__(self) -> None:
        self.tau: Tensor | None = None  # finetuned - base, compute dtype
        self.sorted: Tensor | None = None  # |tau| ascending, flat
        self.rank_fractions: Tensor | None = None  # DELLA: per-row rank / (width - 1), clamped
        self.norms: dict[str, Tensor] = {}  # the norms of tau the rescaling reads (l1, l2, linf)
        self.statistics: dict[str, object] = {}  # other whole-tensor numbers of these inputs (SLERP's angle)

    def task_vector(self, finetuned: Tensor, base: Tensor, dtype: torch.dtype) -> Tensor:
        """tau, computed as the merge computes it (copy to `dtype`, subtract the base)."""
        if self.tau is None or self.tau.dtype != dtype or self.tau.shape != base.shape:
            self.__init__()  # other inputs than those kept: start afresh
            self.tau = torch.empty(base.shape, dtype=dtype, device=base.device).copy_(finetuned).sub_(base)
        return self.tau

    def norm(self, name: str, compute) -> Tensor:
        """tau's `name` norm, `compute()` the first time."""
        if name not in self.norms:
            self.norms[name] = compute()
        return self.norms[name]

    def statistic(self, name: str, compute):
        """The number(s) `compute()` gives for these inputs, computed the first time."""
        if name not in self.statistics:
            self.statistics[name] = compute()
        return self.statistics[name]

    def sorted_magnitudes(self, magnitudes: Tensor) -> Tensor:
        """|tau| sorted ascending; `magnitudes` is |tau| (used on first call only)."""
        if self.sorted is None or self.sorted.numel() != magnitudes.numel():
            self.sorted = magnitudes.reshape(-1).sort().values
        return self.sorted

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.tau, self.sorted, self.rank_fractions) if t is not None)


_ACTIVE: ContextVar[Sequence[KeptTaskVector] | None] = ContextVar("kept_task_vectors", default=None)


@contextmanager
def keeping(entries: Sequence[KeptTaskVector] | None) -> Iterator[None]:
    """Merges run inside use `entries` (one per model, in the method's model order)."""
    token = _ACTIVE.set(entries)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def kept(index: int, count: int) -> KeptTaskVector | None:
    """Model `index`'s kept values in a merge of `count` models, or None outside `keeping`."""
    entries = _ACTIVE.get()
    if entries is None or len(entries) != count:
        return None
    return entries[index]


def count_below(sorted_values: Tensor, value: Tensor) -> int:
    """How many sorted values are < `value`."""
    return int(torch.searchsorted(sorted_values, value.reshape(1), right=False))


def count_above(sorted_values: Tensor, value: Tensor) -> int:
    """How many sorted values are > `value`."""
    return sorted_values.numel() - int(torch.searchsorted(sorted_values, value.reshape(1), right=True))
