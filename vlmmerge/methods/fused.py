"""Fused elementwise tails of the task-vector merges: one compiled pass instead of ~5-20 eager ones.

`generalized_task_arithmetic` hands over, per model, a `Delta`: the elementwise rest of its
sparsification (a TIES cut given its thresholds, a DARE / DELLA keep given its uniforms, or a
delta already computed) and its weight; `merge` then computes the weighted deltas, the sign
election, the disjoint sum, the divisor, lambda and the base in one torch.compile'd kernel
(inductor's C++ code on CPU). Every step is the eager code's operation in the eager code's
order, so the result is the same to the bit (tests/test_fused_kernels.py): no reassociation,
no contraction (-ffp-contract=off, pinned in `_EXACT_MATH`), per-candidate numbers passed as 0-d
tensors (a Python float would be baked into the kernel: a recompile per candidate). `linear` is
the weighted sum of linear / SLERP for live candidates (an explicit fma: eager `add_`'s rounding).

Settings: `VLMMERGE_FUSED` = auto (default: fused on CPU for tensors of at least
`VLMMERGE_FUSED_MIN_ELEMENTS`, 65536, elements when a C++ compiler is found; a failed compile is
logged once and the eager code runs), on (the same, and a failed compile is an error), off.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import threading
import types
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from vlmmerge.errors import RecipeError
from vlmmerge.methods.fused_runtime import (  # noqa: F401  (beside_other_threads .. segment: the engine's and live's API)
    beside_other_threads, beside_others, buffer, in_parts, reusing, segment, split_over, split_points, warming_elsewhere,
    warming_up, writes_into_target,
)

MODE_ENV = "VLMMERGE_FUSED"
MIN_ELEMENTS_ENV = "VLMMERGE_FUSED_MIN_ELEMENTS"
DEFAULT_MIN_ELEMENTS = 1 << 16
# Delta kinds: plain (x * ratio: a delta already sparsified, ratio its rescale factor), sub
# (finetuned - base), trim (TIES cut: |x| <= lo before flat index `cut`, <= hi from there, -> 0),
# range (breadcrumbs: keep lo <= |x| <= hi, each bound switching at its own flat index),
# dare / dare_p (x * (u < density) [/ density]), della / della_p (keep probability from rank fractions),
# dare_scaled / della_scaled (dare / della, then * ratio: a rescaled keep whose norm was staged apart).
RECOMPILE_LIMIT = 64
# inductor's defaults, pinned whatever the environment says: no FP contraction, no unsafe math
# (its C++ flags still include -fno-signed-zeros: the -0.0 cases are in tests/test_fused_kernels.py)
_EXACT_MATH = {"cpp.enable_floating_point_contract_flag": "off", "cpp.enable_unsafe_math_opt_flag": False}
KINDS = ("plain", "sub", "trim", "range", "dare", "dare_p", "dare_scaled", "della", "della_p", "della_scaled")

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_compiled: dict[tuple[str, bool], object] = {}
_warm: set[tuple] = set()
_broken: list[str] = []
calls = {"merge": 0, "stage": 0, "linear": 0, "uniforms": 0}  # fused kernel calls (tests check that the fused path ran)
def warmed_beside_others() -> bool:
    """Whether this process has run any GIL-releasing kernel (a static merge's) yet."""
    return any(key[-1] for key in _warm)


@dataclass(frozen=True)
class Delta:
    """One model's weighted delta, elementwise: `kind` (see KINDS) over flat `tensors`."""

    kind: str
    tensors: tuple[Tensor, ...]


def mode() -> str:
    value = os.environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    if value not in ("auto", "on", "off"):
        raise RecipeError(f"{MODE_ENV}={value!r}: expected auto, on or off")
    return value


def min_elements() -> int:
    value = os.environ.get(MIN_ELEMENTS_ENV)
    try:
        return DEFAULT_MIN_ELEMENTS if value is None else int(value)
    except ValueError:
        raise RecipeError(f"{MIN_ELEMENTS_ENV}={value!r}: expected a whole number of elements") from None


def enabled(numel: int) -> bool:
    """Whether a CPU tensor of `numel` elements takes the fused path (see `wanted`)."""
    current = mode()
    if current == "off" or (current == "auto" and (_broken or not _compiler_found())):
        return False
    if warming_elsewhere():
        return False  # another thread is compiling the kernels: the eager code meanwhile
    return numel >= max(min_elements(), 2)


def wanted(*tensors: Tensor | None) -> bool:
    """Whether a merge of these inputs takes the fused path (CPU, float32 work, large enough)."""
    present = [t for t in tensors if t is not None]
    if not present or not enabled(present[0].numel()):
        return False
    return all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.bfloat16, torch.float16)
               and t.is_contiguous() for t in present)


@functools.cache
def _compiler_found() -> bool:
    return any(shutil.which(name) for name in ("g++", "c++", "clang++"))


def scalar(value: float | Tensor) -> Tensor:
    """A float32 0-d tensor (what the eager code's f32 kernels round a Python scalar to)."""
    if isinstance(value, Tensor):
        return value.to(torch.float32).reshape(())
    return torch.tensor(value, dtype=torch.float32)


def flat(tensor: Tensor) -> Tensor:
    return tensor.reshape(-1)


# --- the kernels (plain torch; compiled on first use) ---------------------------------------

def _delta(kind: str, base: Tensor, p: tuple[Tensor, ...]) -> Tensor:
    if kind == "plain":
        return p[0] * p[1]
    if kind == "sub":
        return p[0].to(torch.float32) - base
    x = p[0]
    if kind == "trim":  # the eager `threshold_`: |x| <= threshold -> 0 (then the sign back)
        magnitude = x.abs()
        return torch.copysign(torch.where(magnitude <= p[1], 0.0, magnitude), x)
    if kind == "range":  # breadcrumbs: keep lo <= |x| <= hi
        magnitude = x.abs()
        return x * ((magnitude >= p[1]) & (magnitude <= p[2])).to(torch.float32)
    if kind in ("dare", "dare_p", "dare_scaled"):
        kept = x * (p[1] < p[2]).to(torch.float32)
        if kind == "dare_scaled":
            return kept * p[3]
        return kept / p[2] if kind == "dare_p" else kept
    # della: probabilities = rank_fractions * 2 * epsilon + (density - epsilon)
    probabilities = p[2] * 2.0 * p[3] + p[4]
    kept = x * (p[1] < probabilities).to(torch.float32)
    if kind == "della_scaled":
        return kept * p[5]
    return kept / probabilities if kind == "della_p" else kept


def _merge_kernel(out: Tensor, base_in: Tensor, kinds: tuple[str, ...], params: list, weights: list,
                  consensus: str | None, normalize: bool, divisor: Tensor, lambda_: Tensor) -> None:
    out.copy_(_merged(base_in, kinds, params, weights, consensus, normalize, divisor, lambda_))


def _merged(base_in: Tensor, kinds: tuple[str, ...], params: list, weights: list, consensus: str | None,
            normalize: bool, divisor: Tensor, lambda_: Tensor) -> Tensor:
    base = base_in.to(torch.float32)
    deltas = [_delta(k, base, p) * w for k, p, w in zip(kinds, params, weights)]
    if consensus is None:
        merged = deltas[0]
        for delta in deltas[1:]:
            merged = merged + delta
        if normalize:
            merged = merged / divisor
        return (merged * lambda_) + base_in.to(torch.float32)
    if consensus == "sum":
        votes = deltas[0]
        for delta in deltas[1:]:
            votes = votes + delta
    else:
        votes = torch.sign(deltas[0])
        for delta in deltas[1:]:
            votes = votes + torch.sign(delta)
    elected = (votes >= 0).to(torch.float32) * 2.0 - 1.0
    merged = None
    count = None
    for delta, weight in zip(deltas, weights):
        agreeing = torch.relu(delta * elected)
        agreed = (agreeing > 0).to(torch.float32)  # sign(agreeing): agreeing is >= 0 (or NaN: 0 both ways)
        if merged is None:
            count = agreed * weight
            merged = agreeing * elected
            merged = torch.where(merged == 0, 0.0, merged)  # the eager `+ 0.0` (-0.0 -> +0.0), which inductor drops
        else:
            merged = merged + agreeing * elected
            count = count + agreed * weight
    if normalize:
        count = count + (count == 0).to(torch.float32)
        merged = merged / count
    return base_in.to(torch.float32) + merged * lambda_


def _stage_kernel(kind: str, base: Tensor, params: tuple, out: Tensor | None, magnitudes: Tensor | None) -> None:
    value = _delta(kind, base, params)
    if out is not None:
        out.copy_(value)
    if magnitudes is not None:
        magnitudes.copy_(value.abs())


def _multiply_add(x: Tensor, weight: Tensor, acc: Tensor) -> Tensor:
    """acc + x * weight rounded once, as the eager `add_(x, alpha=w)` (ATen's vector kernel is a fused
    multiply-add): compiled, prims.fma (x * w + acc would round twice); eager (the fallback of a failed
    compile; prims.fma exists only once inductor registered it), ATen's addcmul, also one fma."""
    if torch.compiler.is_compiling():
        return torch.ops.prims.fma(x, weight, acc)
    return torch.addcmul(acc, x, weight)


def _linear_kernel(out: Tensor, tensors: list, weights: list, total: Tensor, normalize: bool) -> None:
    merged = tensors[0].to(torch.float32) * weights[0]
    for tensor, weight in zip(tensors[1:], weights[1:]):
        merged = _multiply_add(tensor.to(torch.float32), weight, merged)
    if normalize:
        merged = merged / total
    out.copy_(merged)


def _run(name: str, fn, key: tuple, *args):
    """`fn` compiled (once per process), called; the first call of each variant under a lock (the
    engine's worker threads may all arrive at once). Eager `fn` where compiling failed in auto mode."""
    if _broken and mode() == "auto":
        return fn(*args)
    try:
        # one kernel per (method's delta kinds, consensus, dtypes, ...): more than dynamo's default 8;
        # dynamo's config is per thread (the engine's workers each get it here)
        if torch._dynamo.config.recompile_limit < RECOMPILE_LIMIT:
            torch._dynamo.config.recompile_limit = RECOMPILE_LIMIT
        _pin_exact_math()
        wrapped = beside_others()
        compiled = _compiled.get((name, wrapped))
        if compiled is None:
            # the GIL-releasing variant compiles a copy of `fn` (its own code object: dynamo keeps
            # compiled variants per code object, and its guards do not see inductor's options)
            target, options = (_code_copy(fn), {"cpp_wrapper": True}) if wrapped else (fn, None)
            compiled = _compiled.setdefault((name, wrapped), torch.compile(target, dynamic=True, options=options))
        key = (*key, wrapped)
        if key in _warm:
            return compiled(*args)
        with _lock:
            result = compiled(*args)
            _warm.add(key)
            return result
    except Exception as error:  # noqa: BLE001  (inductor / compiler failures of any kind)
        if mode() == "on":
            raise
        if not _broken:
            _log.warning("fused kernels off (%s: %s); merging with the eager code", type(error).__name__, error)
            _broken.append(str(error))
        return fn(*args)


def _code_copy(fn):
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def _pin_exact_math() -> None:
    """`_EXACT_MATH` in this thread's inductor config (set here, not as torch.compile options:
    those are re-applied on every call, ~60 us each)."""
    cpp = torch._inductor.config.cpp
    for key, value in _EXACT_MATH.items():
        name = key.removeprefix("cpp.")
        if getattr(cpp, name) != value:
            setattr(cpp, name, value)


def _signature(*tensors: Tensor) -> tuple:
    return tuple((t.dtype, t.dim()) for t in tensors)


def merge(base_in: Tensor, deltas: Sequence[Delta], weights: Tensor, consensus: str | None, normalize: bool,
          divisor: Tensor, lambda_: float) -> Tensor:
    """base + lambda * merged (see task_vectors' docstring) in one pass; shaped as `base_in`.

    A trim Delta (x, lo, hi, cut) compares with lo before flat index `cut` and with hi from there
    on: the tensor is merged in segments between the models' cuts, each with one threshold per model."""
    n = base_in.numel()
    cuts = sorted({int(d.tensors[i]) for d in deltas for i in _CUTS.get(d.kind, ())} - {0, n})
    out = buffer("out", base_in.shape)
    flat_out, flat_base = flat(out), flat(base_in)
    params = [tuple(flat(t) if t.dim() else t for t in d.tensors) for d in deltas]
    kinds = tuple(d.kind for d in deltas)
    ws = [weights[i] for i in range(len(deltas))]
    splits = split_points(n)
    bounds = sorted({0, *cuts, *splits, n})
    groups: list[list[tuple[int, int]]] = [[] for _ in range(len(splits) + 1)]
    for start, stop in zip(bounds[:-1], bounds[1:]):
        groups[sum(start >= point for point in splits)].append((start, stop))

    def run_segments(segments: list[tuple[int, int]]) -> None:
        for start, stop in segments:
            piece = [_piece(k, p, start, stop, n) for k, p in zip(kinds, params)]
            key = ("merge", kinds, consensus, normalize, base_in.dtype, _signature(*(t for p in piece for t in p)))
            calls["merge"] += 1
            with torch.no_grad():
                _run("merge", _merge_kernel, key, segment(flat_out, start, stop), segment(flat_base, start, stop), kinds, piece, ws,
                     consensus, normalize, scalar(divisor), scalar(lambda_))

    in_parts([functools.partial(run_segments, group) for group in groups])
    return out


def linear(tensors: Sequence[Tensor], weights: Tensor, total: Tensor | None = None) -> Tensor:
    """sum_i w_i x_i [/ total] (float32 weights, as `interpolation.linear` and SLERP's combination
    compute it) in one pass, into `buffer("out")`; the eager code's bits (tests/test_fused_kernels.py)."""
    out = buffer("out", tensors[0].shape)
    flat_out, flats = flat(out), [flat(t) for t in tensors]
    ws = [weights[i] for i in range(len(flats))]
    n = flat_out.numel()
    normalize = total is not None
    key = ("linear", normalize, _signature(*flats))

    def run_range(start: int, stop: int) -> None:
        calls["linear"] += 1
        with torch.no_grad():
            _run("linear", _linear_kernel, key, segment(flat_out, start, stop), [segment(t, start, stop) for t in flats],
                 ws, total, normalize)

    bounds = [0, *split_points(n), n]
    in_parts([functools.partial(run_range, a, b) for a, b in zip(bounds[:-1], bounds[1:])])
    return out


_CUTS = {"trim": (3,), "range": (3, 6)}  # where a Delta's flat-index cuts are


def _piece(kind: str, params: tuple, start: int, stop: int, n: int) -> tuple:
    """A Delta's kernel inputs for the flat segment [start, stop) (which lies on one side of every cut)."""
    if kind == "trim":
        x, lo, hi, cut = params
        return (segment(x, start, stop), lo if start < int(cut) else hi)
    if kind == "range":
        x, lo_before, lo_after, cut_lo, hi_before, hi_after, cut_hi = params
        return (segment(x, start, stop), lo_before if start < int(cut_lo) else lo_after,
                hi_before if start < int(cut_hi) else hi_after)
    if start == 0 and stop == n:
        return params
    return tuple(segment(t, start, stop) if t.dim() else t for t in params)


def stage(delta: Delta, base: Tensor | None, out: Tensor | None, magnitudes: Tensor | None = None) -> Tensor:
    """`delta`'s elementwise value written to `out` (and |value| to `magnitudes`); returns `out`
    (`magnitudes` when `out` is None: only |value| is written). `base`: only for kind "sub". An input
    that is `out` or `magnitudes` itself is passed as the same tensor object (an in-place update:
    inputs that alias otherwise may reuse a kernel compiled without aliasing, or take dynamo's
    synthetic-base path, which fails on views of higher-dimensional buffers)."""
    out_flat = flat(out) if out is not None else None
    magnitudes_flat = flat(magnitudes) if magnitudes is not None else None
    params = tuple(out_flat if out is not None and _same(t, out)
                   else magnitudes_flat if magnitudes is not None and _same(t, magnitudes)
                   else (flat(t) if t.dim() else t) for t in delta.tensors)
    base_flat = flat(base) if delta.kind == "sub" else None
    key = ("stage", delta.kind, magnitudes is None, out is None, tuple(t is out_flat for t in params),
           tuple(t is magnitudes_flat for t in params), _signature(*(t for t in (base_flat, *params) if t is not None)))
    n = (out_flat if out_flat is not None else magnitudes_flat).numel()
    splits = [] if delta.kind in _CUTS else split_points(n)

    def run_range(start: int, stop: int) -> None:
        parts: dict[int, Tensor] = {}  # one segment per tensor object: `out` / `magnitudes` inputs stay themselves

        def part(t: Tensor | None) -> Tensor | None:
            if t is None or not t.dim():
                return t
            if id(t) not in parts:
                parts[id(t)] = segment(t, start, stop)
            return parts[id(t)]

        out_part = part(out_flat)

        calls["stage"] += 1
        with torch.no_grad():
            _run("stage", _stage_kernel, key, delta.kind, part(base_flat), tuple(part(t) for t in params),
                 out_part, part(magnitudes_flat))

    bounds = [0, *splits, n]
    in_parts([functools.partial(run_range, a, b) for a, b in zip(bounds[:-1], bounds[1:])])
    return out if out is not None else magnitudes


def _same(tensor: Tensor, other: Tensor) -> bool:
    return tensor.dim() > 0 and tensor.data_ptr() == other.data_ptr() and tensor.shape == other.shape
