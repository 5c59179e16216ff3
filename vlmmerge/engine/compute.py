"""Tensor computation: read one planned tensor's inputs, run the method, assemble the value.

Pure with respect to the output: nothing here writes files. `vlmmerge merge` (through the
executor) and the in-memory candidates of a search (`vlmmerge.live`) share this code path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from vlmmerge.engine.plan import MergePlan, Source, TensorPlan
from vlmmerge.methods import fused, mask_generators
from vlmmerge.methods.passthrough import passthrough

# Methods whose kernels compute in float32 from half-precision inputs themselves (each input is
# promoted element by element inside the first operation that reads it, bit for bit what an
# explicit conversion gives; tests/test_engine_streaming.py checks it). With the default float32
# compute dtype their half-precision inputs are passed as stored: half the memory held per input
# and one conversion pass fewer.
HALF_INPUT_METHODS = frozenset(
    {"linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear"}
)

# Methods whose value at each element depends only on the inputs at that element (their
# parameters are per tensor): on CPU they run on cache-sized flat slices of the inputs, written
# out slice by slice, instead of on whole tensors. Same bits: the kernels are elementwise and
# every slice is a multiple of the SIMD width, so each element takes the same code path
# (tests/test_engine_streaming.py compares with `merge_tensor`).
ELEMENTWISE_METHODS = frozenset({"linear", "task_arithmetic"})
SLICE_ELEMENTS = 1 << 18
# Elementwise methods with a fused kernel (`methods/fused.py`): a live candidate merges their large
# tensors whole, in one compiled pass written into the parameter, rather than in slices.
FUSED_METHODS = frozenset({"task_arithmetic"})
# ... and those whose fused kernel runs only where it writes the parameter itself (a float32 live
# model): elsewhere their eager slices cost no compile (linear: one multiply-add per model).
FUSED_IN_PLACE_METHODS = frozenset({"linear"})


@dataclass
class TensorInputs:
    """What the merge of one output tensor reads.

    `host_value` (stored dtype) is read only when the output keeps some stored values: a tensor
    that is not merged (its planned read), or a vocabulary tensor whose extra or special-token
    rows stay the host's. `base` and `members` are the method's inputs, in the compute dtype, on
    the device.
    """

    host_value: torch.Tensor | None
    base: torch.Tensor | None = None
    members: list[torch.Tensor] = field(default_factory=list)


def input_dtype(plan: MergePlan, stored: torch.dtype) -> torch.dtype:
    """The dtype a method input is handed over in: the compute dtype, or the stored half precision
    for methods that promote it themselves (see HALF_INPUT_METHODS)."""
    if (
        plan.compute_dtype == torch.float32
        and stored in (torch.bfloat16, torch.float16)
        and plan.method.name in HALF_INPUT_METHODS
    ):
        return stored
    return plan.compute_dtype


def read_copy(plan: MergePlan, tensor: TensorPlan) -> torch.Tensor:
    """A tensor that is not merged: its planned read, scaled (in the compute dtype) if the plan says so."""
    read = tensor.read
    value = plan.sources[read.source].tensor(read.name)
    if read.scale is None:
        return value
    # a scaled copy (a `slices:` layer, a folded data-flow hop) is passthrough's kernel: one implementation
    return passthrough([value.to(plan.compute_dtype)], [read.scale])


def read_tensor_inputs(plan: MergePlan, tensor: TensorPlan, device: str = "cpu") -> TensorInputs:
    """Read (and convert for the method) everything `combine_tensor_inputs` needs for one tensor."""
    if not tensor.merged:
        return TensorInputs(read_copy(plan, tensor))
    host_value = plan.host.tensor(tensor.name) if plan.keeps_host_rows(tensor) else None
    rows = tensor.method_rows()

    def load(source: Source) -> torch.Tensor:
        value = source.lm_tensor(tensor.lm_name)
        if isinstance(rows, slice):
            value = value[rows]  # a view: a conversion below makes the only copy
        elif rows is not None:
            value = value.index_select(0, rows)
        return value.to(device=device, dtype=input_dtype(plan, value.dtype))

    base = load(plan.base) if plan.base is not None else None
    members = [load(m.source) for m in plan.members]
    if plan.vocabulary is not None and tensor.component in ("embeddings", "head"):
        base, members = plan.aligned_vocabulary_inputs(base, members)  # mergekit's re-indexed rows
    return TensorInputs(host_value, base, members)


def combine_tensor_inputs(plan: MergePlan, tensor: TensorPlan, inputs: TensorInputs, device: str = "cpu",
                          generators: Sequence[Any] | None = None) -> torch.Tensor:
    """Run the method on inputs read by `read_tensor_inputs`; the value `merge_tensor` returns.
    `generators`: the random masks' generators in place of `mask_generators_for` (kept draws of the
    same seeds, `masks.DrawnUniforms`, for live candidates)."""
    if not tensor.merged:
        return inputs.host_value
    if plan.method.random and generators is None:
        generators = mask_generators_for(plan, tensor)
    elif not plan.method.random:
        generators = None
    merged = plan.method.merge(inputs.base, inputs.members, plan.member_params(tensor), plan.global_params(tensor), generators)
    merged = merged.to("cpu")
    if inputs.host_value is not None:
        # Rows past the shared vocabulary and the host's special-token rows stay the host's.
        full = fused.buffer("full", inputs.host_value.shape) if merged.dtype == torch.float32 else None
        if full is not None and full.data_ptr() == merged.data_ptr() and not _leading_rows_of(merged, full, tensor):
            full = None
        if full is None:
            full = torch.empty(inputs.host_value.shape, dtype=merged.dtype)
        # a live candidate's reused buffer (`fused.reusing`; the merge may have written its rows
        # there already, `fused.buffer`) or a fresh one: each row written once
        place_rows(full, merged, inputs.host_value, tensor.merged_rows, tensor.host_rows)
        merged = full
    return merged


def _leading_rows_of(merged: torch.Tensor, full: torch.Tensor, tensor: TensorPlan) -> bool:
    """Whether `merged` (at `full`'s start) already is `full`'s first rows, where it belongs: every
    host row comes after the merged ones."""
    return tensor.leading_method_rows() == merged.shape[0] and merged.is_contiguous() \
        and merged.shape[1:] == full.shape[1:]


def place_rows(full: torch.Tensor, merged: torch.Tensor, host_value: torch.Tensor, merged_rows: int,
               host_rows: Sequence[int]) -> None:
    """`full` = the host's rows at `host_rows` and from `merged_rows` on, the merged rows (the
    method's rows, `TensorPlan.method_rows`, in order) everywhere else: each run of merged rows
    between host rows is one contiguous copy."""
    kept = sorted(set(host_rows))
    inside = [row for row in kept if row < merged_rows]
    if merged.shape[0] != merged_rows - len(inside):
        raise ValueError(f"{merged.shape[0]} merged rows for {merged_rows - len(inside)} places "
                         f"({merged_rows} rows, host rows {kept})")
    start, taken = 0, 0
    for stop in [*inside, merged_rows]:
        if stop > start:
            target, rows = full[start:stop], merged[taken:taken + stop - start]
            if target.data_ptr() != rows.data_ptr():  # else written there by the merge itself
                target.copy_(rows)
            taken += stop - start
        start = stop + 1
    if kept:
        index = torch.tensor(kept, dtype=torch.long)
        full.index_copy_(0, index, host_value.index_select(0, index).to(full.dtype))
    if merged_rows < full.shape[0]:
        full[merged_rows:] = host_value[merged_rows:]


def mask_generators_for(plan: MergePlan, tensor: TensorPlan) -> list:
    """One generator per member for a random method's masks (the recipe's `mask_generator`: torch's
    CPU generator or a counter stream), seeded by (recipe seed, tensor name, the member's position
    in `models:`): a mask depends on nothing else in the merge."""
    return mask_generators(plan.recipe.seed, tensor.name, [member.index for member in plan.members],
                           plan.recipe.mask_generator)


def merge_tensor(plan: MergePlan, tensor: TensorPlan, device: str = "cpu",
                 generators: Sequence[Any] | None = None) -> torch.Tensor:
    """The merged value of one output tensor (float32 unless compute_dtype says otherwise), on CPU."""
    return combine_tensor_inputs(plan, tensor, read_tensor_inputs(plan, tensor, device), device, generators)


def merges_in_slices(plan: MergePlan, tensor: TensorPlan, device: str) -> bool:
    return (
        tensor.merged
        and plan.method.name in ELEMENTWISE_METHODS
        and not plan.method.random
        and torch.device(device).type == "cpu"
        and not plan.keeps_host_rows(tensor)
    )


def merged_slices(plan: MergePlan, tensor: TensorPlan, device: str, into: torch.Tensor | None = None,
                  pool: dict | None = None) -> Iterator[torch.Tensor]:
    """The merged tensor as flat slices of SLICE_ELEMENTS (for `merges_in_slices` tensors).
    `into` (flat, float32, contiguous; with the buffer `pool` of `fused.reusing`): where each slice
    may be written by the method (a live parameter); a yielded slice is then a view of it."""
    inputs = read_tensor_inputs(plan, tensor, device)
    base = inputs.base.reshape(-1) if inputs.base is not None else None
    members = [m.reshape(-1) for m in inputs.members]
    member_params, global_params = plan.member_params(tensor), plan.global_params(tensor)
    numel = members[0].numel() if members else (base.numel() if base is not None else 0)
    step = SLICE_ELEMENTS

    def piece(value: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        # Converted here, in cache: same values as the kernel's own promotion, on a faster path.
        return value[start:stop].to(plan.compute_dtype)

    for start in range(0, numel, step):
        stop = min(start + step, numel)
        with fused.reusing({} if pool is None else pool, into[start:stop]) if into is not None else nullcontext():
            merged = plan.method.merge(
                None if base is None else piece(base, start, stop),
                [piece(m, start, stop) for m in members],
                member_params,
                global_params,
                None,
            )
        yield merged
