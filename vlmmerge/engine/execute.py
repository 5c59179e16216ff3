"""Execution: merge every planned tensor on worker threads within a memory budget and stream it
into its place in the output shards, then write the side files; all or nothing."""

from __future__ import annotations

import gc
import logging
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vlmmerge.checkpoint import PlannedTensor, StreamingSafetensorsWriter, atomic_output_dir
from vlmmerge.engine import compute
from vlmmerge.engine.compute import merge_tensor, merged_slices, merges_in_slices
from vlmmerge.engine.heap import HeapTrim
from vlmmerge.engine.job import MergeJob
from vlmmerge.engine.plan import MergePlan, TensorPlan
from vlmmerge.engine.side_files import write_side_files
from vlmmerge.engine.slices import job_plan
from vlmmerge.errors import MergeNumericsError
from vlmmerge.methods import fused
from vlmmerge.recipe import Recipe

_log = logging.getLogger(__name__)
WARM_UP_SWITCH_INTERVAL = 1e-4  # seconds


@dataclass
class MergeResult:
    out_dir: Path
    tensors: int
    bytes_written: int
    merged_tensors: int
    notes: list[str] = field(default_factory=list)


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def output_layout(plan: MergePlan) -> list[PlannedTensor]:
    """Every output tensor's on-disk name, shape and dtype, known from the plan before any is merged."""
    mapper = plan.host.checkpoint.mapper
    layout = []
    for tensor in plan.tensors:
        floating = tensor.merged or tensor.dtype.is_floating_point
        layout.append(PlannedTensor(mapper.to_disk(tensor.name), tensor.shape, plan.output_dtype if floating else tensor.dtype))
    return layout


def _working_set_bytes(plan: MergePlan, tensor: TensorPlan) -> int:
    """A generous estimate of the memory one tensor's merge holds at its peak."""
    if not tensor.merged:
        scaled = tensor.read.scale is not None
        return 2 * tensor.numel * max(tensor.dtype.itemsize, plan.compute_dtype.itemsize if scaled else 1)
    itemsize = plan.compute_dtype.itemsize
    inputs = len(plan.members) + (plan.base is not None)
    if merges_in_slices(plan, tensor, plan.recipe.options.device):
        # the mapped inputs, plus a few slices
        return tensor.numel * tensor.dtype.itemsize * inputs + 8 * compute.SLICE_ELEMENTS * max(itemsize, 4) * (inputs + 2)
    # inputs in compute dtype, one delta per model, masks/scratch, result, output copy
    return tensor.numel * max(itemsize, 4) * (2 * inputs + 4)


def memory_budget(plan: MergePlan, workers: int) -> int:
    """How many bytes of estimated working sets may be in flight at once.

    Room for `workers` typical tensors, but never more than the largest tensor alone needs: the
    largest one (usually the embedding or the head) then runs by itself, so the peak is set by
    it and not by it plus others. Capped at half the available memory.
    """
    estimates = sorted(_working_set_bytes(plan, t) for t in plan.tensors)
    if not estimates:
        return 0
    largest, typical = estimates[-1], estimates[len(estimates) // 2]
    budget = max(largest, workers * typical)
    available = _available_memory()
    if available is not None:
        budget = max(largest, min(budget, available // 2))
    return budget


def _all_finite(value: torch.Tensor) -> bool:
    if value.numel() == 0:
        return True
    try:
        low, high = torch.aminmax(value)  # one pass, propagates NaN; much cheaper than isfinite().all()
    except (RuntimeError, NotImplementedError):  # dtypes without aminmax (float8)
        return bool(torch.isfinite(value).all())
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


_HEAP = HeapTrim()  # one per process: glibc's arenas are too


class _Workspaces:
    """Pools of fused-kernel buffers (`fused.reusing`), so that a tensor reuses the float32 slabs of
    the one before it instead of faulting in fresh memory (on CPU that costs more than the
    task-vector arithmetic): one pool per worker thread for tensors of a typical size, and one for
    the large tensors (embedding, head), which run back to back; each kind's pools are dropped
    when the other kind starts."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._typical: list[dict] = []
        self._large: dict = {}
        self._large_lock = threading.Lock()

    def pool(self) -> dict:
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
            self._typical.append(pool)
        return pool

    def switch_to(self, large: bool) -> None:
        """Drop the other kind's pools (a merge still running on one keeps its slabs until it returns)."""
        if large:
            for pool in self._typical:
                pool.clear()
        else:
            self._large = {}

    @contextmanager
    def for_tensor(self, large: bool) -> Iterator[dict | None]:
        """This worker's pool; for a large tensor the large tensors' pool, or None (fresh memory)
        while another large tensor holds it."""
        if not large:
            yield self.pool()
        elif not self._large_lock.acquire(blocking=False):
            yield None
        else:
            try:
                yield self._large
            finally:
                self._large_lock.release()


def _merge_and_write(plan: MergePlan, tensor: TensorPlan, planned: PlannedTensor, writer: StreamingSafetensorsWriter,
                     device: str, workspace: dict | None = None) -> None:
    with fused.reusing(workspace) if workspace is not None else nullcontext():
        _merge_and_write_now(plan, tensor, planned, writer, device)


def _merge_and_write_now(plan: MergePlan, tensor: TensorPlan, planned: PlannedTensor,
                         writer: StreamingSafetensorsWriter, device: str) -> None:
    def check(chunk: torch.Tensor) -> None:
        if chunk.is_floating_point() and not _all_finite(chunk):
            raise MergeNumericsError(
                f"merged tensor {tensor.name!r} contains NaN or Inf (method {plan.method.name}); "
                "check the inputs and the weights/densities"
            )

    # Converted to the output dtype chunk by chunk while writing; the check sees the converted
    # values (a finite float32 beyond the output dtype's range becomes Inf and is caught).
    if merges_in_slices(plan, tensor, device):
        writer.write_parts(planned.name, merged_slices(plan, tensor, device), convert=True, check=check)
    else:
        value = merge_tensor(plan, tensor, device=device)
        writer.write(planned.name, value, convert=True, check=check)
        del value
    _HEAP.maybe_trim()


def _run_pooled(plan, tensor, planned, writer, device, workspaces: _Workspaces | None, large: bool,
                helpers: tuple[ThreadPoolExecutor, int] | None = None) -> None:
    pooled = workspaces.for_tensor(large) if workspaces is not None else nullcontext()
    # a large tensor runs alone: its kernels split over the idle workers' cores
    split = fused.split_over(*helpers) if large and helpers is not None else nullcontext()
    with fused.beside_other_threads(), pooled as pool, split:  # the workers' kernels compute at the same time
        _merge_and_write(plan, tensor, planned, writer, device, pool)


def _warm_up_sample(plan: MergePlan, device: str, workers: int) -> TensorPlan | None:
    """The smallest merged tensor that takes the fused kernels, or None for no warm-up (one worker
    asked for: no thread beside it; an earlier merge in this process warmed the kernels up)."""
    if workers < 2 or torch.device(device).type != "cpu" or fused.mode() == "off" or fused.warmed_beside_others():
        return None
    candidates = [t for t in plan.tensors if t.merged and not merges_in_slices(plan, t, device) and fused.enabled(t.numel)]
    return min(candidates, key=lambda t: t.numel, default=None)


def _warm_up(plan: MergePlan, tensor: TensorPlan, device: str) -> None:
    torch.set_num_threads(1)
    try:
        with fused.warming_up(), fused.beside_other_threads():
            merge_tensor(plan, tensor, device=device)  # thrown away: a worker merges and writes it later
    except Exception as error:  # noqa: BLE001  (the worker merging this tensor meets it again and reports it)
        _log.debug("kernel warm-up on %s failed: %s", tensor.name, error)


@contextmanager
def _kernels_warming(plan: MergePlan, device: str, workers: int) -> Iterator[threading.Thread]:
    """The fused kernels compile (or load) on a thread of their own while the workers' first tensors
    merge with the eager code (`fused.warming_up`): the same bits, and the seconds of Python a
    process's first kernels cost run beside that arithmetic instead of before it."""
    sample = _warm_up_sample(plan, device, workers)
    thread = threading.Thread(target=_warm_up, args=(plan, sample, device), name="vlmmerge-warm-up", daemon=True)
    interval = sys.getswitchinterval()
    if sample is not None:
        # the warm-up holds the GIL almost throughout; each eager op of a worker needs it back, and
        # by default waits up to 5 ms for it
        sys.setswitchinterval(min(interval, WARM_UP_SWITCH_INTERVAL))
        thread.start()
    try:
        yield thread  # alive while warming up
    finally:
        if sample is not None:
            thread.join()
            sys.setswitchinterval(interval)


def execute_plan(
    plan: MergePlan,
    writer: StreamingSafetensorsWriter,
    layout: Sequence[PlannedTensor],
    *,
    device: str = "cpu",
    workers: int = 1,
    memory_budget: int | None = None,
    progress: bool = True,
) -> None:
    """Merge every planned tensor and hand it to `writer`, `workers` tensors at a time.

    Each worker reads one tensor's inputs, merges, converts and writes it, then drops it, so
    reading, math and writing of different tensors overlap. A new tensor starts only while the
    estimated working sets in flight stay within `memory_budget` (a tensor too large for it runs
    alone). Results do not depend on the order or the number of workers.
    """
    budget = memory_budget if memory_budget is not None else float("inf")
    in_flight: dict[Future, int] = {}
    used = 0
    bar = tqdm(total=len(layout), desc="merging", unit="tensor", disable=not progress)
    # OpenMP keeps the intra-op thread count per thread: each worker sets its own to 1, or a reduction
    # (SLERP's angle, a norm) splits differently under load and the output changes in the last bit
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="vlmmerge-merge",
                              initializer=torch.set_num_threads, initargs=(1,))
    cpu = torch.device(device).type == "cpu"
    helpers = ThreadPoolExecutor(max_workers=workers - 1, thread_name_prefix="vlmmerge-split", initializer=torch.set_num_threads,
                                 initargs=(1,)) if cpu and workers > 1 else None
    split = (helpers, workers - 1) if helpers is not None else None

    def collect(block_until: Callable[[], bool]) -> None:
        nonlocal used
        while in_flight and block_until():
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                used -= in_flight.pop(future)
                future.result()  # re-raises a worker's error here
                bar.update()

    workspaces = _Workspaces() if cpu else None
    costs = [_working_set_bytes(plan, tensor) for tensor in plan.tensors]
    typical_share = budget / max(1, workers)
    large = deque(i for i, cost in enumerate(costs) if cost > typical_share)
    typical = deque(i for i, cost in enumerate(costs) if cost <= typical_share)
    try:
        with _kernels_warming(plan, device, workers) as warming:
            phase = None
            while large or typical:
                # While the kernels warm up, typical tensors (by the kernels' code, eagerly) on the
                # cores the warm-up leaves; then the large tensors back to back, sharing one pool;
                # then the rest. The writer places every tensor at its planned offset: order is free.
                take_large = bool(large) and not (typical and warming.is_alive())
                index = (large if take_large else typical).popleft()
                tensor, planned, cost = plan.tensors[index], layout[index], costs[index]
                room = workers - 1 if warming.is_alive() else workers  # the warm-up takes a core
                collect(lambda: len(in_flight) >= room or used + cost > budget)
                if take_large != phase:
                    if workspaces is not None:
                        workspaces.switch_to(take_large)
                    if take_large:
                        _HEAP.trim()  # what the typical tensors left goes back before the peak
                    phase = take_large
                job = (plan, tensor, planned, writer, device, workspaces, take_large, split)
                in_flight[pool.submit(_run_pooled, *job)] = cost
                used += cost
            collect(lambda: True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if helpers is not None:
            helpers.shutdown(wait=True)
        bar.close()


def run_merge(
    recipe: MergeJob | Recipe | str | Path | dict,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    device: str | None = None,
    threads: int | None = None,
    max_shard_size: str | None = None,
    compute_dtype: str | None = None,
    progress: bool = True,
    recipe_text: str | None = None,
) -> MergeResult:
    """Merge as the recipe says and write a Hugging Face folder at `out_dir` (all or nothing).

    The convenience entry: the recipe (path, YAML text, dict or Recipe) and the overrides of its
    `options:` become one validated `MergeJob` here, which `write_merge` runs.
    """
    job = MergeJob.build(
        recipe, device=device, threads=threads, max_shard_size=max_shard_size, compute_dtype=compute_dtype,
        progress=progress, recipe_text=recipe_text,
    )
    return write_merge(job, out_dir, overwrite=overwrite)


def write_merge(job: MergeJob, out_dir: str | Path, *, overwrite: bool = False, plan: MergePlan | None = None) -> MergeResult:
    """Run a job (or a plan made from it, e.g. a layer stack) into a Hugging Face folder.

    `threads` tensors are merged at once, each with single-threaded torch ops: coarse-grained
    parallelism that needs no synchronisation inside an operation. Each merged tensor is streamed
    into its place in the output shards and dropped, so memory holds only the tensors in flight.
    """
    # Planning imports model code and builds meta-device models: many objects, no cycles worth
    # collecting. The cyclic collector stays off for the merge (about 15% of planning time).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _write_merge(job, Path(out_dir), overwrite, plan)
    finally:
        if collecting:
            gc.enable()


def _write_merge(job: MergeJob, out_dir: Path, overwrite: bool, plan: MergePlan | None) -> MergeResult:
    options = job.options
    options.check_device()
    plan = plan or job_plan(job)  # a `slices:` recipe: a layer stack
    layout = output_layout(plan)
    workers = options.workers
    budget = memory_budget(plan, workers)
    intra_op_threads = torch.get_num_threads()
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        writer = StreamingSafetensorsWriter(tmp, layout, options.max_shard_size, metadata={"merged_by": "vlmmerge"})
        try:
            torch.set_num_threads(1)
            execute_plan(plan, writer, layout, device=options.device, workers=workers, memory_budget=budget, progress=options.progress)
        finally:
            torch.set_num_threads(intra_op_threads)
            writer.close()
        writer.finish()
        write_side_files(plan, tmp, job.recipe_yaml)
        total = writer.total_bytes
    merged_count = sum(tensor.merged for tensor in plan.tensors)
    return MergeResult(out_dir, len(plan.tensors), total, merged_count, list(plan.notes))
