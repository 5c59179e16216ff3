"""Task-vector merges: task arithmetic, TIES, DARE, Model Breadcrumbs, DELLA.

All share one shape (mergekit's "generalized task arithmetic"):

    delta_i   = sparsify(finetuned_i - base)              # per model, optional
    delta_i  *= weight_i
    mask_i    = sign(delta_i) == elected sign              # consensus methods only
    merged    = sum_i mask_i * delta_i
    divisor   = sum_i mask_i * weight_i                    # 0 -> 1
              (no consensus: sum_i weight_i, |.| < 1e-8 -> 1)
    merged   /= divisor                                    # if normalize
    result    = base + lambda * merged

The base model's own weight or density (if the recipe lists it among the models) plays no part:
its delta is zero and it never enters the divisor (mergekit binds those parameters to non-base
models only).

Random drops (DARE, DELLA) take `generator`: one generator that every model draws from in turn
(mergekit's stream: a model with density >= 1 draws nothing, which shifts the later models'
masks), a sequence of one generator per model (what the engine passes: each mask depends on its
own model only, see `masks.py`), or None for torch's global generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from vlmmerge.errors import RecipeError
from vlmmerge.methods import fused
from vlmmerge.methods.fused_deltas import Fusable, dare_delta, della_delta, fused_task_arithmetic, range_delta, trim_delta
from vlmmerge.methods.kept import kept
from vlmmerge.methods.masks import Generators, generator_for
from vlmmerge.methods.della import della_sparsify
from vlmmerge.methods.sparsify import dare_sparsify, trim_outliers, trim_to_density

# sparsify(delta, model_index, scratch, out=None) -> delta; may modify delta in place and use
# scratch (a tensor of delta's shape and dtype) as workspace; with `out` (a kept task vector as
# `delta`) it writes the result to `out` and leaves delta as it is.
Sparsifier = Callable[[Tensor, int, Tensor], Tensor]


def work_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32 (merges never run in half precision)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_lengths(finetuned: Sequence[Tensor], **per_model: Sequence[float] | None) -> None:
    for name, values in per_model.items():
        if values is not None and len(values) != len(finetuned):
            raise RecipeError(f"{name}: expected {len(finetuned)} values (one per model), got {len(values)}")


def elect_sign(weighted_deltas: Tensor, method: str = "sum") -> Tensor:
    """Elected sign (+1/-1) per element from stacked weighted deltas [models, ...].

    "sum" (TIES): sign of the sum of the weighted deltas, ties (0) go to +1.
    "count": the sign held by more models, ties go to +1.
    """
    if method == "sum":
        votes = weighted_deltas.sum(dim=0)
    elif method == "count":
        votes = torch.sign(weighted_deltas).sum(dim=0)
    else:
        raise RecipeError(f"consensus method {method!r} unknown; expected 'sum' or 'count'")
    return votes.ge_(0).mul_(2).sub_(1)  # in place: 1.0 where >= 0, then +1 / -1


def generalized_task_arithmetic(
    base: Tensor,
    finetuned: Sequence[Tensor],
    weights: Sequence[float],
    *,
    sparsify: Sparsifier | None = None,
    consensus: str | None = None,
    normalize: bool = False,
    lambda_: float = 1.0,
    fusable: Fusable | None = None,
    magnitudes_first: bool = False,
) -> Tensor:
    """The shared task-vector merge (see module docstring). Returns a new tensor.

    `fusable(delta, i, scratch, out, magnitudes)`: `sparsify`'s elementwise rest as a `fused.Delta`
    (or None) for the fused path (`fused.py`: one compiled pass, same bits), taken for large CPU
    tensors; `magnitudes_first`: it reads |delta| (`fused_deltas.fused_task_arithmetic`).
    """
    _check_lengths(finetuned, weight=weights)
    dtype = work_dtype(base, *finetuned)
    # A half-precision base is also added back at the end as given: the addition promotes it
    # exactly, so its working copy is needed only while the deltas are formed.
    base_in = base
    if finetuned and dtype == torch.float32 and consensus in (None, "sum", "count") and fused.wanted(base, *finetuned):
        entries = [kept(i, len(finetuned)) for i in range(len(finetuned))]
        return fused_task_arithmetic(base_in, finetuned, torch.tensor(list(weights), dtype=dtype), entries, sparsify,
                                     fusable, consensus, normalize, lambda_, magnitudes_first)
    base = base.to(dtype)
    if not finetuned:
        return base.clone()
    weights_t = torch.tensor(list(weights), dtype=dtype)  # weights rounded as mergekit rounds them
    # Preallocated buffers, filled in place: on CPU a fresh large tensor costs more (page faults)
    # than the arithmetic done in it.
    scratch = torch.empty_like(base) if sparsify is not None else None
    entries = [kept(i, len(finetuned)) for i in range(len(finetuned))]  # live candidates: kept task vectors

    def weighted_delta(i: int, out: Tensor) -> Tensor:
        tau = entries[i].task_vector(finetuned[i], base, dtype) if entries[i] is not None else None
        if tau is not None and sparsify is None:
            return torch.mul(tau, weights_t[i], out=out)  # copy_ then mul_, in one pass (same bits)
        if tau is not None:
            delta = sparsify(tau, i, scratch, out)  # what sparsify(out.copy_(tau), ...) gives, one pass fewer
        else:
            delta = out.copy_(finetuned[i]).sub_(base)
            if sparsify is not None:
                delta = sparsify(delta, i, scratch)
        if delta.data_ptr() != out.data_ptr():
            delta = out.copy_(delta)
        return delta.mul_(weights_t[i])

    if consensus is None:
        merged = weighted_delta(0, torch.empty_like(base))
        work = torch.empty_like(base) if len(finetuned) > 1 else None
        for i in range(1, len(finetuned)):
            merged.add_(weighted_delta(i, work))
        del work, scratch
        divisor = weights_t.sum()
        if divisor.abs() < 1e-8:
            divisor = torch.ones((), dtype=dtype)
    else:
        deltas = torch.empty((len(finetuned), *base.shape), dtype=dtype, device=base.device)
        for i in range(len(finetuned)):
            weighted_delta(i, deltas[i])
        work = scratch if scratch is not None else torch.empty(base.shape, dtype=dtype, device=base.device)
        del scratch
        if base is not base_in:
            del base  # the election phase holds only the deltas, the elected signs and the divisor
        if consensus == "sum":
            # elect_sign's "sum" rule, computed in the free scratch buffer (same reduction, same bits)
            elected = torch.sum(deltas, dim=0, out=work).ge_(0).mul_(2).sub_(1)
        else:
            elected = elect_sign(deltas, consensus)
        del work
        merged = None
        divisor = None
        for i, weight in enumerate(weights_t.tolist()):
            # In place, no mask buffer: |delta| where its sign is the elected one, else 0 ...
            agreeing = deltas[i].mul_(elected).relu_()
            if merged is None:
                if normalize:
                    divisor = torch.sign(agreeing).mul_(weight)  # weight where it agreed, else 0
                # ... times the elected sign is the delta itself. The sum accumulates in the first
                # delta's buffer; adding +0.0 turns -0.0 into +0.0, as a sum started at zero does.
                merged = agreeing.mul_(elected).add_(0.0)
            else:
                merged.addcmul_(agreeing, elected)
                if divisor is not None:
                    divisor.add_(agreeing.sign_(), alpha=weight)  # 1.0 where it agreed
        del agreeing
        if divisor is not None:
            # 0 -> 1: adds 1.0 where it is 0 and +0.0 elsewhere (what masked_fill_ gives, bit for bit:
            # -0.0 is 0 too), through a float mask in the free elected-sign buffer (a bool mask is slow)
            divisor.add_(torch.eq(divisor, 0, out=elected))
        if normalize:
            merged.div_(divisor)
        del divisor
        if lambda_ != 1:
            merged.mul_(lambda_)
        # The result goes to the elected-sign buffer, free now, rather than to a view into the
        # stacked deltas (freed on return): base + merged, which is merged + base to the bit.
        return torch.add(base_in, merged, out=elected)
    if normalize:
        merged.div_(divisor)
    if lambda_ != 1:
        merged.mul_(lambda_)
    return merged.add_(base_in)


def _rescale_norm(rescale: bool, rescale_norm: str) -> str | None:
    return rescale_norm if rescale else None


def task_arithmetic(
    base: Tensor,
    finetuned: Sequence[Tensor],
    weights: Sequence[float],
    normalize: bool = False,
    lambda_: float = 1.0,
) -> Tensor:
    """Task arithmetic (Ilharco et al., 2023): base + lambda * sum_i w_i (theta_i - base)."""
    return generalized_task_arithmetic(base, finetuned, weights, normalize=normalize, lambda_=lambda_)


def ties(
    base: Tensor,
    finetuned: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    normalize: bool = True,
    lambda_: float = 1.0,
    rescale: bool = False,
    rescale_norm: str = "l1",
) -> Tensor:
    """TIES-Merging (Yadav et al., 2023): trim to top-k magnitude, elect sign, disjoint mean.

    The sign is elected on the weighted deltas (mergekit), not the unweighted ones (paper).
    """
    _check_lengths(finetuned, density=densities)
    norm = _rescale_norm(rescale, rescale_norm)
    return generalized_task_arithmetic(
        base, finetuned, weights,
        sparsify=lambda delta, i, scratch, out=None: trim_to_density(
            delta, densities[i], norm, scratch, kept(i, len(finetuned)), out
        ),
        fusable=lambda delta, i, scratch, out, m: trim_delta(delta, densities[i], norm, scratch,
                                                             kept(i, len(finetuned)), m),
        consensus="sum", magnitudes_first=norm is None, normalize=normalize, lambda_=lambda_,
    )


def _dare(
    base: Tensor,
    finetuned: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    generator: Generators,
    rescale: bool,
    normalize: bool,
    lambda_: float,
    rescale_norm: str,
    consensus: str | None,
) -> Tensor:
    _check_lengths(finetuned, density=densities)
    norm = _rescale_norm(rescale, rescale_norm)
    return generalized_task_arithmetic(
        base, finetuned, weights,
        sparsify=lambda delta, i, scratch, out=None: dare_sparsify(
            delta, densities[i], generator_for(generator, i, len(finetuned)), norm, scratch, out,
            kept(i, len(finetuned)),
        ),
        fusable=lambda delta, i, scratch, out, m: dare_delta(
            delta, densities[i], generator_for(generator, i, len(finetuned)), norm, scratch, out,
            kept(i, len(finetuned)), m,
        ),
        consensus=consensus, magnitudes_first=norm in ("l1", "linf"), normalize=normalize, lambda_=lambda_,
    )


def dare_linear(
    base: Tensor,
    finetuned: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    generator: Generators = None,
    rescale: bool = True,
    normalize: bool = False,
    lambda_: float = 1.0,
    rescale_norm: str = "l1",
) -> Tensor:
    """DARE (Yu et al., 2023) drop-and-rescale, then task arithmetic."""
    return _dare(base, finetuned, weights, densities, generator, rescale, normalize, lambda_, rescale_norm, None)


def dare_ties(
    base: Tensor,
    finetuned: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    generator: Generators = None,
    rescale: bool = True,
    normalize: bool = False,
    lambda_: float = 1.0,
    rescale_norm: str = "l1",
) -> Tensor:
    """DARE drop-and-rescale, then TIES sign election and disjoint merge."""
    return _dare(base, finetuned, weights, densities, generator, rescale, normalize, lambda_, rescale_norm, "sum")


def _breadcrumbs(
    base: Tensor,
    finetuned: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    gammas: Sequence[float] | None,
    normalize: bool,
    lambda_: float,
    rescale: bool,
    rescale_norm: str,
    consensus: str | None,
) -> Tensor:
    gammas = [0.01] * len(finetuned) if gammas is None else gammas
    _check_lengths(finetuned, density=densities, gamma=gammas)
    norm = _rescale_norm(rescale, rescale_norm)
    return generalized_task_arithmetic(
        base, finetuned, weights,
        sparsify=lambda delta, i, scratch, out=None: trim_outliers(
            delta, densities[i], gammas[i], norm, scratch, kept(i, len(finetuned)), out
        ),
        fusable=lambda delta, i, scratch, out, m: range_delta(delta, densities[i], gammas[i], norm, scratch,
                                                              kept(i, len(finetuned)), m),
        consensus=consensus, magnitudes_first=norm is None, normalize=normalize, lambda_=lambda_,
    )


def breadcrumbs(
    base: Tensor,
    finetuned: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    gammas: Sequence[float] | None = None,
    normalize: bool = False,
    lambda_: float = 1.0,
    rescale: bool = False,
    rescale_norm: str = "l1",
) -> Tensor:
    """Model Breadcrumbs (Davari & Belilovsky, 2023): drop outliers and small entries, then sum."""
    return _breadcrumbs(base, finetuned, weights, densities, gammas, normalize, lambda_, rescale, rescale_norm, None)


def breadcrumbs_ties(
    base: Tensor,
    finetuned: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    gammas: Sequence[float] | None = None,
    normalize: bool = False,
    lambda_: float = 1.0,
    rescale: bool = False,
    rescale_norm: str = "l1",
) -> Tensor:
    """Model Breadcrumbs sparsification with TIES sign election."""
    return _breadcrumbs(base, finetuned, weights, densities, gammas, normalize, lambda_, rescale, rescale_norm, "sum")


def _della(
    base: Tensor,
    finetuned: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    epsilons: Sequence[float] | None,
    generator: Generators,
    rescale: bool,
    normalize: bool,
    lambda_: float,
    rescale_norm: str,
    consensus: str | None,
) -> Tensor:
    epsilons = [0.15] * len(finetuned) if epsilons is None else epsilons
    _check_lengths(finetuned, density=densities, epsilon=epsilons)
    norm = _rescale_norm(rescale, rescale_norm)
    return generalized_task_arithmetic(
        base, finetuned, weights,
        sparsify=lambda delta, i, scratch, out=None: della_sparsify(
            delta, densities[i], epsilons[i], generator_for(generator, i, len(finetuned)), norm, scratch,
            kept(i, len(finetuned)), out,
        ),
        fusable=lambda delta, i, scratch, out, m: della_delta(
            delta, densities[i], epsilons[i], generator_for(generator, i, len(finetuned)), norm, scratch, out,
            kept(i, len(finetuned)), m,
        ),
        consensus=consensus, magnitudes_first=True, normalize=normalize, lambda_=lambda_,
    )


def della(
    base: Tensor,
    finetuned: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    epsilons: Sequence[float] | None = None,
    generator: Generators = None,
    rescale: bool = True,
    normalize: bool = True,
    lambda_: float = 1.0,
    rescale_norm: str = "l1",
) -> Tensor:
    """DELLA-Merging (Deep et al., 2024): MagPrune drop, TIES sign election, disjoint merge."""
    return _della(base, finetuned, weights, densities, epsilons, generator, rescale, normalize, lambda_, rescale_norm, "sum")


def della_linear(
    base: Tensor,
    finetuned: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    epsilons: Sequence[float] | None = None,
    generator: Generators = None,
    rescale: bool = True,
    normalize: bool = False,
    lambda_: float = 1.0,
    rescale_norm: str = "l1",
) -> Tensor:
    """DELLA MagPrune drop, then task arithmetic (no sign election)."""
    return _della(base, finetuned, weights, densities, epsilons, generator, rescale, normalize, lambda_, rescale_norm, None)
