"""Naive references for the merge-operator tests: python loops written from the papers' definitions."""

from __future__ import annotations

import math

import torch


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-6) -> bool:
    return a.shape == b.shape and float((a - b).abs().max()) <= tol



def naive_keep_ranks(values: list[float], start: int, stop: int) -> list[bool]:
    """Keep the entries whose ascending |value| rank (ties by index) lies in [start, stop)."""
    order = sorted(range(len(values)), key=lambda i: (abs(values[i]), i))
    keep = [False] * len(values)
    for rank, index in enumerate(order):
        keep[index] = start <= rank < stop
    return keep


def naive_trim(values: list[float], density: float) -> list[float]:
    n = len(values)
    if density >= 1:
        return list(values)
    if density <= 0:
        return [0.0] * n
    k = max(1, int(density * n))
    # largest magnitudes first; equal magnitudes: lower index first (stable descending sort)
    kept = set(sorted(range(n), key=lambda i: (-abs(values[i]), i))[:k])
    return [v if i in kept else 0.0 for i, v in enumerate(values)]


def naive_ties(base, finetuned, weights, densities, normalize=True, lam=1.0):
    n = len(base)
    deltas = [naive_trim([f[i] - base[i] for i in range(n)], d) for f, d in zip(finetuned, densities)]
    out = []
    for i in range(n):
        weighted = [w * delta[i] for w, delta in zip(weights, deltas)]
        elected = 1.0 if sum(weighted) >= 0 else -1.0
        total, divisor = 0.0, 0.0
        for w, x in zip(weights, weighted):
            if x != 0 and math.copysign(1.0, x) == elected:
                total += x
                divisor += w
        if normalize:
            total /= divisor if divisor != 0 else 1.0
        out.append(base[i] + lam * total)
    return out

