"""Exact rank selection (`methods.selection`) against torch's own kthvalue, counts and nonzero,
on tensors large enough for the sampled bracket, with and without massive ties at the rank."""

from __future__ import annotations

import pytest
import torch

from vlmmerge.methods.fused_deltas import trim_delta
from vlmmerge.methods.selection import _CHUNK, _DIRECT_SELECT_MAX, _SCAN_CHUNK, position_of_nth_equal, select_rank
from vlmmerge.methods.sparsify import top_k_magnitudes

N = 3 * _SCAN_CHUNK + 12345  # several scan chunks, a partial last one
assert N > _DIRECT_SELECT_MAX


def _bf16_like_magnitudes(seed: int) -> torch.Tensor:
    """|finetuned - base| of bf16 weights: few distinct values, a fifth or more of them equal."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(N, generator=g).bfloat16()
    tuned = (base.float() + 0.01 * torch.randn(N, generator=g)).bfloat16()
    return (tuned.float() - base.float()).abs()


def _distinct_magnitudes(seed: int) -> torch.Tensor:
    return torch.rand(N, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("make", [_bf16_like_magnitudes, _distinct_magnitudes])
@pytest.mark.parametrize("fraction", [0.01, 0.3, 0.5, 0.77, 0.999])
def test_select_rank_is_kthvalue_with_exact_counts(make, fraction):
    values = make(int(fraction * 1000))
    rank = int(fraction * N)
    selected = select_rank(values, rank, counts=True)
    expected = torch.kthvalue(values, rank + 1).values
    assert torch.equal(selected.value, expected)
    assert selected.below == int((values < expected).sum())
    assert selected.equal == int((values == expected).sum())
    per_chunk = [int((chunk == expected).sum()) for chunk in values.split(_CHUNK)]
    assert list(selected.equal_per_chunk) == per_chunk
    assert torch.equal(select_rank(values, rank).value, expected)


def test_a_single_valued_bracket_is_counted_not_gathered(monkeypatch):
    from vlmmerge.methods import selection

    def no_gather(*args):
        raise AssertionError("gathered a bracket that holds one value")

    monkeypatch.setattr(selection, "_select_in_bracket", no_gather)
    values = _bf16_like_magnitudes(7)
    selected = select_rank(values, N // 2, counts=True)
    assert selected.equal > N // 20  # the tie block covers the bracket
    assert torch.equal(selected.value, torch.kthvalue(values, N // 2 + 1).values)


@pytest.mark.parametrize("with_chunk_counts", [True, False])
def test_position_of_nth_equal_is_the_nth_nonzero(with_chunk_counts):
    values = _bf16_like_magnitudes(3)
    selected = select_rank(values, N // 2, counts=True)
    positions = torch.nonzero(values == selected.value).reshape(-1)
    hints = selected.equal_per_chunk if with_chunk_counts else None
    for nth in (1, 2, selected.equal // 3, selected.equal // 2 + 1, selected.equal):
        assert position_of_nth_equal(values, selected.value, nth, hints) == int(positions[nth - 1])
    with pytest.raises(ValueError, match="fewer than"):
        position_of_nth_equal(values, selected.value, selected.equal + 1, hints)


def _stable_top_k(magnitudes: torch.Tensor, k: int) -> torch.Tensor:
    """Independent reference: keep the k largest, lower flat index first among equals."""
    order = torch.sort(-magnitudes, stable=True).indices[:k]
    kept = torch.zeros_like(magnitudes)
    kept[order] = magnitudes[order]
    return kept


@pytest.mark.parametrize("density", [0.2, 0.5, 0.9])
def test_top_k_with_massive_ties_keeps_the_lower_indices(density):
    magnitudes = _bf16_like_magnitudes(11)
    k = int(density * N)
    assert torch.equal(top_k_magnitudes(magnitudes.clone(), k), _stable_top_k(magnitudes, k))


@pytest.mark.parametrize("density", [0.2, 0.5, 0.9])
def test_fused_trim_cut_matches_the_eager_trim(density):
    g = torch.Generator().manual_seed(5)
    base = torch.randn(N, generator=g).bfloat16()
    delta = (base.float() + 0.01 * torch.randn(N, generator=g)).bfloat16().float() - base.float()
    spec = trim_delta(delta, density, None, torch.empty_like(delta), None)
    reference = _stable_top_k(delta.abs(), max(1, int(density * N)))
    if spec.kind == "plain":  # fewer nonzero entries than k (bf16 deltas: many exact zeros): all kept
        assert int((delta != 0).sum()) <= int(density * N)
        assert torch.equal(delta.abs(), reference)
        return
    assert spec.kind == "trim"
    _, below, threshold, cut = spec.tensors
    trimmed = delta.clone()
    cut = int(cut)
    trimmed[:cut] = torch.where(trimmed[:cut].abs() <= below, 0.0, trimmed[:cut])
    trimmed[cut:] = torch.where(trimmed[cut:].abs() <= threshold, 0.0, trimmed[cut:])
    assert torch.equal(trimmed.abs(), reference)
