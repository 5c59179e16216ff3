"""Subset estimation of full-split fitness from a few anchor items (tinyBenchmarks' anchor points).

    evolve:
      estimate: {anchors: 20, probes: 4}

Once per run, the sources, the untuned baselines and `probes` genomes (drawn from the run's seed
around the initial genome, as CMA-ES starts) are scored on the whole fitness split. Each item becomes the vector of those models' scores on
it; the items are clustered into `anchors` groups (k-means, seeded) and the item nearest each
group's centre is its anchor, weighted by the group's share of the split. A candidate is then
generated on the anchors only and its fitness estimate is the weighted mean of its anchor scores:
items that the reference models got right or wrong together stand in for each other. When the
reference models tell fewer groups apart than there are anchors (e.g. all of them score 0 on most
items), the anchors are spread over those groups by size and drawn at random within each
(stratified sampling), so a candidate is still scored on `anchors` items.

The choice is written to `anchors.json` in the run folder (a resumed run reads it back, so the
estimates are exactly the same), and `estimation_error` measures the estimator against the full
split on journaled candidates that were scored on every item.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class EstimateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    anchors: int = Field(default=20, ge=1)  # per fitness task
    probes: int = Field(default=4, ge=0)  # random genomes scored on the full split to choose the anchors


@dataclass(frozen=True)
class Anchors:
    """Anchor item positions (into the task's fitness items) and their weights (sum 1)."""

    items: list[int]
    weights: list[float]

    def estimate(self, anchor_values: Sequence[float]) -> float:
        return float(np.dot(self.weights, anchor_values))

    def estimate_full(self, item_values: Sequence[float]) -> float:
        """The estimate of a candidate whose every item score is known (for measuring the error)."""
        values = np.asarray(item_values, dtype=float)
        return self.estimate(values[self.items])

    def to_json(self) -> dict[str, Any]:
        return {"items": self.items, "weights": self.weights}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Anchors":
        return cls([int(i) for i in data["items"]], [float(w) for w in data["weights"]])


def choose_anchors(matrix: np.ndarray, k: int, seed: int) -> Anchors:
    """Anchors for a (models x items) score matrix: k-means on the item columns, the medoid-like
    item nearest each centre, weights = cluster sizes / items. Identical columns share a cluster."""
    from scipy.cluster.vq import kmeans2

    points = np.asarray(matrix, dtype=float).T  # items x models
    n = points.shape[0]
    if k >= n:
        return Anchors(list(range(n)), [1.0 / n] * n)
    unique, inverse = np.unique(points, axis=0, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    rng = np.random.default_rng(seed % 2**32)
    if len(unique) <= k:  # no more distinct columns than anchors: stratify on them (sizes share the anchors)
        return _stratified([np.flatnonzero(inverse == u) for u in range(len(unique))], k, n, rng)
    _, labels = kmeans2(points + 0.0, k, minit="++", seed=rng, missing="warn")
    groups = [np.flatnonzero(labels == c) for c in range(k)]
    items, weights = [], []
    for members in groups:
        if members.size == 0:
            continue
        centre = points[members].mean(axis=0)
        nearest = members[int(np.argmin(((points[members] - centre) ** 2).sum(axis=1)))]
        items.append(int(nearest))
        weights.append(members.size / n)
    order = np.argsort(items)
    return Anchors([items[i] for i in order], [float(weights[i]) for i in order])


def _stratified(groups: list[np.ndarray], k: int, n: int, rng: np.random.Generator) -> Anchors:
    """k anchors over groups of interchangeable items: one per group, the rest to the largest groups
    (largest remainder), members drawn at random within a group; each weighs its group's share / count."""
    counts = np.ones(len(groups), dtype=int)
    sizes = np.asarray([g.size for g in groups], dtype=float)
    while counts.sum() < k and (counts < sizes).any():
        room = np.where(counts < sizes, sizes / counts, -1.0)
        counts[int(np.argmax(room))] += 1
    items, weights = [], []
    for members, count in zip(groups, counts):
        for item in rng.choice(members, size=count, replace=False):
            items.append(int(item))
            weights.append(members.size / n / count)
    order = np.argsort(items)
    return Anchors([items[i] for i in order], [float(weights[i]) for i in order])


def estimation_error(anchors: Anchors, per_item: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Estimate vs full-split mean on candidates with every item scored: mean / max absolute error,
    and Spearman's rank correlation of the estimates with the true means."""
    from scipy.stats import spearmanr

    truth = np.asarray([float(np.mean(v)) for v in per_item])
    estimates = np.asarray([anchors.estimate_full(v) for v in per_item])
    errors = np.abs(estimates - truth)
    rho = float(spearmanr(estimates, truth).statistic) if len(truth) > 2 and truth.std() > 0 and estimates.std() > 0 else None
    return {"candidates": len(truth), "mean_abs_error": float(errors.mean()) if len(errors) else None,
            "max_abs_error": float(errors.max()) if len(errors) else None, "spearman": rho,
            "anchors": len(anchors.items)}


class EstimatedFitness:
    """A fitness function: the candidate generated on the anchor items only, scored by the estimator.
    Scores carry the objective vector of estimates and the generated item count."""

    def __init__(self, materializer: Any, evaluator: Any, objectives: Sequence[Any], anchors: dict[str, Anchors]):
        import copy

        from vlmmerge.search.objectives import objective_names, task_of

        self.materializer, self.objectives, self.anchors = materializer, list(objectives), anchors
        self.names = objective_names(self.objectives)
        self.tasks = {o.label: task_of(o, evaluator.tasks).name for o in self.objectives}
        self.evaluator = copy.copy(evaluator)
        self.evaluator._encoded, self.evaluator._encoded_for, self.evaluator._scoring_cache = {}, None, {}
        self.evaluator.items = {t: [evaluator.items[t][i] for i in anchors[t].items] for t in set(self.tasks.values())}
        self.evaluator.tasks = [t for t in evaluator.tasks if t.name in self.evaluator.items]

    def __call__(self, genome: np.ndarray) -> tuple[float, dict[str, Any]]:
        from vlmmerge.search.objectives import generated_values, mean_objective

        model, processor = self.materializer.materialize(genome)
        result = self.evaluator.evaluate(model, processor)
        values = generated_values(result, self.objectives, self.evaluator.tasks)
        vector = [self.anchors[self.tasks[name]].estimate(values[name][1]) for name in self.names]
        return mean_objective(vector), {"objectives": vector, "scores": result.scores,
                                        "generated_items": sum(len(v) for v in self.evaluator.items.values())}


def journal_estimation_error(anchors: Anchors, entries: Sequence[Any], objective: str) -> dict[str, Any]:
    """`estimation_error` on journaled candidates scored on the whole split (their `scores["items"]`
    hold the objective's per-item values, as every full-fitness objectives run journals them)."""
    rows = [e.scores["items"][objective] for e in entries
            if not e.failed and isinstance(e.scores.get("items"), dict) and objective in e.scores["items"]]
    return estimation_error(anchors, rows)
