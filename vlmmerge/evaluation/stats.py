"""Summaries of per-item scores: means, bootstrap confidence intervals (percentile bootstrap,
fixed seed), paired differences."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _clean(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)


def mean(values: Sequence[float | None]) -> float:
    """Mean of the items that apply (``None`` is left out); NaN when none do."""
    vals = [v for v in values if v is not None]
    return float(sum(vals) / len(vals)) if vals else float("nan")


def summarize(key: str, values: Sequence[float | None], *, per_item: bool = False, ci: bool = False) -> dict:
    """An `evaluate` module's result for one score: ``{key: mean}``, plus ``{key}_ci`` (95% bootstrap
    interval) and ``{key}_per_item`` (the values as given) when asked for."""
    out: dict = {key: mean(values)}
    if ci:
        out[f"{key}_ci"] = bootstrap_ci(values)
    if per_item:
        out[f"{key}_per_item"] = list(values)
    return out


def bootstrap_ci(values: Sequence[float | None], n: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of the mean; ``None``/NaN items are left out.
    (nan, nan) for no items; a single item gives a zero-width interval."""
    vals = _clean(values)
    if vals.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, vals.size, size=(n, vals.size))
    means = vals[idx].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


@dataclass(frozen=True)
class PairedDiff:
    """Mean of a - b over paired items, its bootstrap interval, and how often a resample favours a."""

    mean_diff: float
    lo: float
    hi: float
    p_a_better: float  # fraction of resamples with mean(a - b) > 0
    p_value: float  # two-sided: 2 * min(P(diff <= 0), P(diff >= 0)), capped at 1
    n_items: int


def paired_bootstrap_diff(a: Sequence[float | None], b: Sequence[float | None], n: int = 1000, seed: int = 0,
                          alpha: float = 0.05) -> PairedDiff:
    """Paired bootstrap of mean(a) - mean(b); items where either side is None are dropped."""
    if len(a) != len(b):
        raise ValueError(f"paired bootstrap needs equal lengths, got {len(a)} and {len(b)}")
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None and not (math.isnan(x) or math.isnan(y))]
    if not pairs:
        nan = float("nan")
        return PairedDiff(nan, nan, nan, nan, nan, 0)
    diffs = np.asarray([x - y for x, y in pairs], dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, diffs.size, size=(n, diffs.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    p_le, p_ge = float((means <= 0).mean()), float((means >= 0).mean())
    return PairedDiff(
        mean_diff=float(diffs.mean()), lo=float(lo), hi=float(hi), p_a_better=float((means > 0).mean()),
        p_value=min(1.0, 2 * min(p_le, p_ge)), n_items=int(diffs.size),
    )
