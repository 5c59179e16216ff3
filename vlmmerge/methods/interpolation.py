"""Merges that interpolate whole weights: linear, SLERP, NuSLERP, Karcher mean, Model Stock."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from vlmmerge.errors import RecipeError
from vlmmerge.methods import fused
from vlmmerge.methods.kept import KeptTaskVector
from vlmmerge.methods.task_vectors import work_dtype


def linear(tensors: Sequence[Tensor], weights: Sequence[float], normalize: bool = True) -> Tensor:
    """Weighted average (model soup, Wortsman et al., 2022): sum_i w_i theta_i [/ sum_i w_i].

    Unlike mergekit (which divides by zero and writes inf/NaN), normalizing weights that sum to 0
    is an error.
    """
    if not tensors:
        raise RecipeError("linear: no models to merge")
    if len(weights) != len(tensors):
        raise RecipeError(f"weight: expected {len(tensors)} values (one per model), got {len(weights)}")
    dtype = work_dtype(*tensors)
    weights_t = torch.tensor(list(weights), dtype=dtype)
    total = weights_t.sum()
    if normalize and total == 0:
        raise RecipeError(f"weight: linear merge with normalize=true needs weights that do not sum to 0; got {list(weights)}")
    out = _result_buffer(tensors[0].shape, dtype, tensors)  # one fresh tensor, not two
    if _fused_into_parameter(out, tensors):
        # one compiled pass (a static merge's slices stay eager: the disk bounds them, and
        # compiling would cost more than the pass saves)
        return fused.linear(tensors, weights_t, total if normalize else None)
    if out is None:
        merged = tensors[0].to(dtype, copy=True).mul_(weights_t[0])
    elif tensors[0].dtype == dtype:
        merged = torch.mul(tensors[0], weights_t[0], out=out)
    else:  # a half-precision input: converted first, as above (mul would round in its dtype)
        merged = out.copy_(tensors[0]).mul_(weights_t[0])
    for tensor, weight in zip(tensors[1:], weights_t[1:].tolist()):
        merged.add_(tensor, alpha=weight)  # promotes a half-precision input on the fly
    if normalize:
        merged.div_(total)
    return merged


def slerp(a: Tensor, b: Tensor, t: float, eps: float = 1e-8, dot_threshold: float = 0.9995,
          kept: KeptTaskVector | None = None) -> Tensor:
    """Spherical interpolation from `a` (t = 0) to `b` (t = 1) over the flattened tensors.

    The angle comes from the normalized vectors (a norm <= eps counts as 1); the unnormalized
    tensors are combined with sin((1-t) theta)/sin theta and sin(t theta)/sin theta. Nearly
    colinear or antipodal pairs (|cos| > dot_threshold) fall back to linear interpolation.
    `kept`: where the norms and the dot product of these same inputs are kept between merges
    (live candidates: only t changes); a float32 result goes to `fused.buffer("out")`.
    """
    if a.shape != b.shape:
        raise RecipeError(f"slerp: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    dtype = work_dtype(a, b)
    a = a.to(dtype)
    b = b.to(dtype)
    if a.numel() == 0:
        return a.clone()
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    angle = (lambda: _angle_inputs(flat_a, flat_b))
    norm_a, norm_b, dot = kept.statistic("slerp", angle) if kept is not None else angle()
    norm_a = norm_a if norm_a > eps else 1.0
    norm_b = norm_b if norm_b > eps else 1.0
    dot = dot / (norm_a * norm_b)
    dot = min(1.0, max(-1.0, dot))
    if abs(dot) > dot_threshold:
        coef_a, coef_b = 1.0 - t, t
    else:
        theta = math.acos(dot)
        sin_theta = math.sin(theta)
        coef_a = math.sin((1.0 - t) * theta) / sin_theta
        coef_b = math.sin(t * theta) / sin_theta
    out = _result_buffer(a.shape, dtype, (a, b))
    if _fused_into_parameter(out, (a, b)):  # a * c_a + b * c_b in one compiled pass (the eager pair's bits)
        return fused.linear([a, b], torch.tensor([coef_a, coef_b], dtype=torch.float32))
    return torch.mul(a, coef_a, out=out).add_(b, alpha=coef_b)


def _angle_inputs(flat_a: Tensor, flat_b: Tensor) -> tuple[float, float, float]:
    """|a|, |b| and a . b as Python floats (what SLERP's angle is computed from)."""
    return (float(torch.linalg.vector_norm(flat_a)), float(torch.linalg.vector_norm(flat_b)),
            float(torch.dot(flat_a, flat_b)))


def _result_buffer(shape: torch.Size, dtype: torch.dtype, inputs: Sequence[Tensor]) -> Tensor | None:
    """Where a float32 result goes: `fused.buffer("out")` (in a live candidate, the parameter),
    unless it overlaps an input; None: a fresh tensor."""
    if dtype != torch.float32:
        return None
    out = fused.buffer("out", shape)
    return None if any(_shares_memory(out, tensor) for tensor in inputs) else out


def _fused_into_parameter(out: Tensor | None, inputs: Sequence[Tensor]) -> bool:
    """Whether a float32 result buffer is a live parameter that `fused.linear` may write in one pass."""
    return out is not None and fused.writes_into_target(out.shape) and fused.wanted(*inputs)


def _shares_memory(x: Tensor, y: Tensor) -> bool:
    start_x, start_y = x.data_ptr(), y.data_ptr()
    return start_x < start_y + y.numel() * y.element_size() and start_y < start_x + x.numel() * x.element_size()


def nuslerp(a: Tensor, b: Tensor, t: float, dim: int = -1, flatten: bool = True, eps: float = 1e-8) -> Tensor:
    """SLERP of vectors along `dim` (or of the flattened tensors), mergekit's `nuslerp` kernel.

    Each vector pair is normalized (norm clamped at 1e-7) for the angle; the unnormalized
    vectors are combined. Pairs with 1 - cos^2 <= eps^2 interpolate linearly.
    """
    dtype = work_dtype(a, b)
    shape = a.shape
    v0, v1 = a.to(dtype), b.to(dtype)
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif dim != -1:
        v0, v1 = v0.transpose(dim, -1), v1.transpose(dim, -1)
    unit0 = v0 / torch.linalg.vector_norm(v0, dim=-1, keepdim=True).clamp(min=1e-7)
    unit1 = v1 / torch.linalg.vector_norm(v1, dim=-1, keepdim=True).clamp(min=1e-7)
    cos_theta = (unit0 * unit1).sum(dim=-1, keepdim=True).clamp_(-1, 1)
    del unit0, unit1
    colinear = (1 - cos_theta.square()) <= eps**2
    theta = torch.acos(torch.where(colinear, 0, cos_theta))
    sin_theta = torch.sin(theta)
    coef0 = torch.where(colinear, 1 - t, torch.sin((1 - t) * theta) / sin_theta)
    coef1 = torch.where(colinear, t, torch.sin(t * theta) / sin_theta)
    result = v0 * coef0 + v1 * coef1
    if dim != -1 and not flatten:
        result = result.transpose(dim, -1)
    return result.reshape(shape)


def nuslerp_merge(
    base: Tensor | None,
    finetuned: Sequence[Tensor],
    weights: Sequence[float],
    row_wise: bool = False,
    flatten: bool = True,
) -> Tensor:
    """NuSLERP of exactly two models, at t = w_2 / (w_1 + w_2) (0.5 when the sum is ~0).

    With a base, the two task vectors are interpolated and added to the base.
    """
    if len(finetuned) != 2 or len(weights) != 2:
        raise RecipeError(f"nuslerp: needs exactly 2 non-base models, got {len(finetuned)}")
    total = weights[0] + weights[1]
    t = 0.5 if abs(total) < 1e-6 else weights[1] / total
    dim = 0 if row_wise else -1
    if base is None:
        return nuslerp(finetuned[0], finetuned[1], t, dim=dim, flatten=flatten)
    dtype = work_dtype(base, *finetuned)
    base = base.to(dtype)
    merged = nuslerp(torch.sub(finetuned[0], base), torch.sub(finetuned[1], base), t, dim=dim, flatten=flatten)
    return merged.add_(base)


def karcher(tensors: Sequence[Tensor], max_iter: int = 10, tol: float = 1e-5) -> Tensor:
    """Karcher (Riemannian) mean of equally weighted tensors on the unit sphere, rescaled by the
    mean norm (mergekit's `karcher`)."""
    if not tensors:
        raise RecipeError("karcher: no models to merge")
    dtype = work_dtype(*tensors)
    tensors = [t.to(dtype) for t in tensors]
    if len(tensors) == 1:
        return tensors[0].clone()
    alpha = 1.0 / len(tensors)
    norms = [torch.linalg.vector_norm(t) for t in tensors]
    valid = [i for i, n in enumerate(norms) if float(n) > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    units = [tensors[i] / norms[i] for i in valid]
    mean = sum(units) / len(units)  # equal weights renormalized over the valid tensors
    mean_norm = torch.linalg.vector_norm(mean)
    mean = units[0].clone() if float(mean_norm) < tol else mean / mean_norm
    share = 1.0 / len(valid)
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for unit in units:
            dot = torch.clamp(torch.dot(mean.reshape(-1), unit.reshape(-1)), -1.0, 1.0)
            theta = torch.arccos(dot)
            if float(theta) < tol:
                continue
            tangent += share * (theta / torch.sin(theta)) * (unit - dot * mean)
        tangent_norm = torch.linalg.vector_norm(tangent)
        if float(tangent_norm) < tol:
            break
        mean = torch.cos(tangent_norm) * mean + torch.sin(tangent_norm) * (tangent / tangent_norm)
        unit_norm = torch.linalg.vector_norm(mean)
        if float(unit_norm) > tol:
            mean = mean / unit_norm
    scale = sum(alpha * n for n in norms)
    return scale * mean


def model_stock(base: Tensor, finetuned: Sequence[Tensor], filter_wise: bool = False) -> Tensor:
    """Model Stock (Jang et al., 2024): move from the base toward the average of the fine-tunes.

    cos = mean pairwise cosine of the task vectors (over the whole tensor, or per row of the last
    dimension when `filter_wise`); t = N cos / (1 + (N - 1) cos); result = t avg + (1 - t) base.
    Where 1 + (N - 1) cos is ~0 (|.| < 1e-6) the base is kept.
    """
    if len(finetuned) < 2:
        raise RecipeError(f"model_stock: needs a base and at least 2 other models, got {len(finetuned)} others")
    dtype = work_dtype(base, *finetuned)
    shape = base.shape
    base = base.to(dtype)
    count = len(finetuned)
    if filter_wise:
        rows = base.unsqueeze(0) if base.dim() == 1 else base
        width = rows.shape[-1]
        rows = rows.reshape(-1, width)
    else:
        rows = base.reshape(1, -1)
    # Task vectors stacked as [models, rows, width]; the Gram matrix gives every cosine at once.
    offsets = torch.empty((count, *rows.shape), dtype=dtype, device=base.device)
    for i, tensor in enumerate(finetuned):
        torch.sub(tensor.reshape(rows.shape), rows, out=offsets[i])
    gram = torch.einsum("irw,jrw->rij", offsets, offsets)  # [rows, models, models]
    del offsets
    norms = torch.diagonal(gram, dim1=1, dim2=2).sqrt()
    pairs = torch.triu_indices(count, count, offset=1)
    dots = gram[:, pairs[0], pairs[1]]
    norm_products = (norms[:, pairs[0]] * norms[:, pairs[1]]).clamp(min=1e-6)
    cos_theta = (dots / norm_products).clamp(-1, 1).mean(dim=1, keepdim=True)  # [rows, 1]
    denominator = 1 + (count - 1) * cos_theta
    singular = denominator.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(cos_theta), count * cos_theta / torch.where(singular, 1, denominator))
    average = torch.zeros_like(rows)
    for tensor in finetuned:
        average.add_(tensor.reshape(rows.shape).to(dtype))
    average.div_(count)
    # t * average + (1 - t) * base
    merged = average.mul_(t).add_(rows * (1 - t))
    return merged.reshape(shape)
