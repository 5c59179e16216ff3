"""Where the fused kernels run: buffer pools, the GIL, the warm-up thread, parts over threads.

Process-wide and per-context state only; the kernels themselves are in `fused`."""

from __future__ import annotations

import contextvars
import ctypes
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

MIN_SPLIT_ELEMENTS = 1 << 22  # below this a tensor's kernels are not worth splitting over threads
SPLIT_ALIGN = 1 << 10

_POOL: ContextVar[tuple[dict, Tensor | None, int | None] | None] = ContextVar("fused_workspace", default=None)
_BESIDE_OTHERS: ContextVar[bool] = ContextVar("fused_beside_others", default=False)
_WARMING: ContextVar[bool] = ContextVar("fused_warming", default=False)
_warmers = [0]  # threads inside `warming_up` now
_warmers_lock = threading.Lock()
_SPLIT: ContextVar[tuple[Executor, int] | None] = ContextVar("fused_split", default=None)


@contextmanager
def beside_other_threads() -> Iterator[None]:
    """Kernels run inside release the GIL while they compute (inductor's C++ wrapper), so that
    several merge workers' kernels run at once; elsewhere the plain Python wrapper, cheaper per call
    (a live candidate's ~60-170 small calls). Same generated kernels, so the same bits."""
    token = _BESIDE_OTHERS.set(True)
    try:
        yield
    finally:
        _BESIDE_OTHERS.reset(token)


@contextmanager
def warming_up() -> Iterator[None]:
    """This thread compiles (or loads from inductor's cache) the kernels it calls, while the other
    threads merge with the eager code (the same bits) instead of waiting: a process's first kernels
    cost seconds of Python (importing inductor, dynamo's trace), which the other threads' eager
    arithmetic, outside the GIL, overlaps."""
    token = _WARMING.set(True)
    with _warmers_lock:
        _warmers[0] += 1
    try:
        yield
    finally:
        with _warmers_lock:
            _warmers[0] -= 1
        _WARMING.reset(token)


@contextmanager
def split_over(helpers: Executor, threads: int) -> Iterator[None]:
    """Kernels called inside run in `threads + 1` parts of their flat range: `threads` on `helpers`
    (idle merge workers, while a large tensor runs alone), the last on this thread. The kernels are
    elementwise, so the parts give the whole's bits."""
    token = _SPLIT.set((helpers, threads) if threads > 0 else None)
    try:
        yield
    finally:
        _SPLIT.reset(token)


def split_points(n: int) -> list[int]:
    split = _SPLIT.get()
    if split is None or n < MIN_SPLIT_ELEMENTS:
        return []
    parts = split[1] + 1
    return [n * j // parts // SPLIT_ALIGN * SPLIT_ALIGN for j in range(1, parts)]


def in_parts(parts: list[Callable[[], None]]) -> None:
    """Run `parts` (independent), all but the last on the helpers, each in a copy of this context."""
    split = _SPLIT.get()
    if split is None or len(parts) < 2:
        for part in parts:
            part()
        return
    futures = [split[0].submit(contextvars.copy_context().run, part) for part in parts[:-1]]
    try:
        parts[-1]()
    finally:
        for future in futures:
            future.result()


@contextmanager
def reusing(pool: dict, out: Tensor | None = None, leading_rows: int | None = None) -> Iterator[None]:
    """Merges run inside take their buffers, the result included, from `pool` (flat float32 slabs,
    one per role, grown to the largest tensor): a live candidate's next tensor reuses them, so no
    fresh memory is faulted in per tensor (on CPU that costs more than the arithmetic). The result
    is valid until the next merge inside the same pool. `out` (float32, contiguous): where a result
    of its shape goes (a live model's parameter: no copy); with `leading_rows`, also a result of
    that many of its rows (a vocabulary tensor's merged rows, the host's rows after them:
    `compute.combine_tensor_inputs` then writes only those)."""
    token = _POOL.set((pool, out, leading_rows))
    try:
        yield
    finally:
        _POOL.reset(token)


def buffer(role: str, shape: torch.Size) -> Tensor:
    """A float32 tensor of `shape`: a view of the active pool's slab for `role`, else fresh."""
    active = _POOL.get()
    if active is None:
        return torch.empty(shape, dtype=torch.float32)
    pool, out, rows = active
    if role in ("out", "full") and out is not None and out.shape == shape:
        return out
    if role == "out" and rows is not None and out is not None and shape == (rows, *out.shape[1:]):
        return out[:rows]  # a vocabulary tensor's merged rows: the host's own rows follow them
    numel = shape.numel()
    slab = pool.get(role)
    if slab is None or slab.numel() < numel:
        with torch.inference_mode(False):  # a normal tensor, as a parameter is: one kernel variant for both
            slab = pool[role] = torch.empty(numel, dtype=torch.float32)
    return slab[:numel].view(shape)


def writes_into_target(shape: torch.Size) -> bool:
    """Whether a result of `shape` goes straight into the active pool's `out` (a live parameter)."""
    active = _POOL.get()
    return active is not None and active[1] is not None and active[1].shape == shape


def beside_others() -> bool:
    """Whether kernels called here take the GIL-releasing variant (see `beside_other_threads`)."""
    return _BESIDE_OTHERS.get()


def warming_elsewhere() -> bool:
    """Whether another thread is warming the kernels up now (this one then merges eagerly)."""
    return bool(_warmers[0]) and not _WARMING.get()


def segment(flat_tensor: Tensor, start: int, stop: int) -> Tensor:
    """`flat_tensor[start:stop]` as a tensor of its own at storage offset 0, sharing the memory: the
    kernels are compiled for inputs at offset 0, and an offset view would be another dynamo variant
    (a second or more of tracing in every process). The caller keeps `flat_tensor` alive meanwhile."""
    if start == 0 and stop == flat_tensor.numel() and flat_tensor.storage_offset() == 0:
        return flat_tensor
    view = flat_tensor[start:stop]
    if view.numel() == 0:
        return view
    memory = (ctypes.c_char * (view.numel() * view.element_size())).from_address(view.data_ptr())
    return torch.frombuffer(memory, dtype=view.dtype)
