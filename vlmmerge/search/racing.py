"""Racing (successive halving) of the fitness split: score a candidate on a small subset first and
on the rest only while it could still enter the top (one objective) or the front (several).

    evolve:
      racing: {stages: [0.2, 1.0], bound: binomial, confidence: 0.95, top: 1}

`stages` are cumulative fractions of each fitness task's items (in an order shuffled once from the
run's seed); the last is 1.0. After each stage but the last, the candidate's *upper bound* on its
full-split score is computed per objective, from the m items seen out of n:

    full <= (m * seen_mean + (n - m) * rest_bound) / n

* `bound: exact`: rest_bound = `max_score` (every remaining item perfect). A candidate is dropped
  only if even that cannot reach the threshold, so racing **never drops a candidate the full split
  would have kept** (tests/test_search_racing.py checks it on constructed examples).
* `bound: binomial` (default): rest_bound = the one-sided Clopper-Pearson upper bound (at
  `confidence`) of the remaining items' mean, treating the seen items as a random sample of the
  split (they are: the order is shuffled) and scores as fractions of `max_score`. A candidate
  whose full score would reach the threshold is dropped with probability at most 1 - confidence
  (tested by simulation). Much cheaper: exact bounds prune nothing while the best score is far
  below `max_score`.

The threshold: the `top`-th best full score among the earlier fully scored candidates of the run
(one objective); several objectives: the candidate continues unless some fully scored earlier
candidate dominates its upper-bound vector. "Earlier" means a smaller journal index, so a resumed
run (replaying the journal) makes exactly the same decisions; the backend evaluates serially.
A dropped candidate's fitness is its seen mean (below the threshold, so it is never the best nor
on the front); each entry records its stages: items, seen means, upper bounds, kept or not.

Likelihood first stage (`likelihood:`): before any generation, every candidate is scored with the
likelihood objective (vlmmerge/evaluation/likelihood.py: mean log-probability of the references, one
forward pass per item, no generation) on every fitness item of each objective's task:

    racing: {likelihood: {keep: 0.5, warmup: 8}, stages: [0.15, 0.4, 1.0], bound: binomial}

Rule: a candidate goes on to the generated stages iff fewer than `warmup` earlier candidates were
likelihood-scored, or its likelihood ranks it in the top `keep` fraction of the earlier candidates
and itself: fewer than ceil(keep * (earlier + 1)) earlier candidates have a strictly higher
likelihood (one objective: the mean of the objectives' likelihoods; several: on at least one
objective). With `window: W` only the last W earlier candidates count (after warm-up): against all
of them, a search whose likelihood keeps improving keeps far more than `keep` (measured: keep 0.3
kept 67% on the demo). "Earlier" is again a smaller journal index, so resume is exact. A candidate dropped
here generates nothing; its objectives are 0.0 (the metrics' floor) and it is never the best nor on
the front. **No guarantee**: likelihood only correlates with the generated metric (Spearman 0.62
on the demo journal), so this stage can drop a candidate the full split would have kept; the
generated stages after it keep their own bounds. The journaled stage is
`{"kind": "likelihood", "likelihood": [per objective], "compared": [what the rule ranks],
"likelihood_items": n, "items": 0, "kept": ...}`; likelihood forward passes are not generated items.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator


class LikelihoodStage(BaseModel):
    """The likelihood first stage: keep the top `keep` fraction by likelihood (after `warmup`)."""

    model_config = ConfigDict(extra="forbid")
    keep: float = Field(default=0.5, gt=0.0, le=1.0)
    warmup: int = Field(default=0, ge=0)
    window: int | None = Field(default=None, ge=1)  # compare with only the last `window` earlier candidates


class RacingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    likelihood: LikelihoodStage | None = None  # a likelihood first stage before the generated ones
    stages: list[float] = Field(default_factory=lambda: [0.2, 1.0])
    bound: Literal["exact", "binomial"] = "binomial"
    confidence: float = Field(default=0.95, gt=0.0, lt=1.0)
    top: int = Field(default=1, ge=1)
    max_score: float = 100.0  # the metric's best possible per-item value

    @field_validator("stages")
    @classmethod
    def _increasing(cls, stages: list[float]) -> list[float]:
        if not stages or stages[-1] != 1.0 or any(not a < b for a, b in zip([0.0, *stages], stages)):
            raise ValueError("stages must be increasing fractions in (0, 1], ending with 1.0, e.g. [0.2, 1.0]")
        return stages


# ------------------------------------------------------------------ math (no models, no files)
def rest_bound(seen: Sequence[float], confidence: float, bound: str, max_score: float) -> float:
    """Upper bound on the mean of the items not seen yet."""
    if bound == "exact" or len(seen) == 0:
        return max_score
    from scipy.stats import beta

    m = len(seen)
    k = min(max(float(np.sum(seen)) / max_score, 0.0), m)
    if k >= m:
        return max_score
    return max_score * float(beta.ppf(confidence, k + 1, m - k))


def upper_full_mean(seen: Sequence[float], n_total: int, confidence: float, bound: str, max_score: float) -> float:
    """Upper bound on the full-split mean given the seen items' values."""
    m = len(seen)
    if m >= n_total:
        return float(np.mean(seen))
    return (float(np.sum(seen)) + (n_total - m) * rest_bound(seen, confidence, bound, max_score)) / n_total


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """a dominates b (maximising): >= on every objective, > on one."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def keeps(upper: Sequence[float], earlier: Sequence[Sequence[float]], top: int) -> bool:
    """Whether a candidate whose full scores are at most `upper` could enter the top (one objective)
    or the front (several) of the earlier fully scored candidates."""
    if not earlier:
        return True
    if len(upper) == 1:
        best = sorted((e[0] for e in earlier), reverse=True)
        return len(best) < top or upper[0] >= best[top - 1]
    return not any(dominates(e, upper) for e in earlier)


def likelihood_keeps(value: Sequence[float], earlier: Sequence[Sequence[float]], keep: float, warmup: int,
                     window: int | None = None) -> bool:
    """The likelihood stage's rule (module doc): in the top `keep` fraction of earlier (the last
    `window` of them) + itself on at least one objective, or still within the first `warmup` candidates."""
    if len(earlier) < warmup:
        return True
    earlier = list(earlier)[-window:] if window else earlier
    allowed = math.ceil(keep * (len(earlier) + 1) - 1e-9)
    return any(sum(1 for e in earlier if e[j] > v) < allowed for j, v in enumerate(value))


def stage_sizes(n_items: int, stages: Sequence[float]) -> list[int]:
    """Cumulative item counts of the stages (at least one item each, strictly increasing)."""
    sizes: list[int] = []
    for fraction in stages:
        size = max(1, math.ceil(fraction * n_items - 1e-9), (sizes[-1] + 1) if sizes else 1)
        sizes.append(min(size, n_items))
    return sorted(set(sizes))


# ------------------------------------------------------------------ the backend
def item_order(n_items: int, seed: int, task: str) -> list[int]:
    """The racing order of a task's items: a permutation drawn once from the run's seed."""
    offset = sum(task.encode("utf-8")) % 9973
    return [int(i) for i in np.random.default_rng([seed % 2**32, offset]).permutation(n_items)]


def complete(entry: Any) -> bool:
    return not entry.failed and (not entry.stages or bool(entry.stages[-1].get("complete")))


class RacingBackend:
    """Serial evaluation of generated objectives in stages (see the module doc)."""

    def __init__(self, materializer: Any, evaluator: Any, objectives: Sequence[Any], space: Any, journal: Any,
                 config: RacingConfig, seed: int, multi: bool):
        from vlmmerge.search.objectives import objective_names, task_of

        self.materializer, self.space, self.journal, self.config, self.multi = materializer, space, journal, config, multi
        self.objectives = list(objectives)
        if any(o.kind != "generated" for o in self.objectives):
            from vlmmerge.errors import RecipeError

            raise RecipeError("evolve.racing: every objective must be a generated one (kind: generated)")
        self.names = objective_names(self.objectives)
        self.evaluator = evaluator
        tasks = {o.label: task_of(o, evaluator.tasks) for o in self.objectives}
        self.task_names = sorted({t.name for t in tasks.values()})
        self.n_full = {name: len(evaluator.items[task.name]) for name, task in tasks.items()}
        self.orders = {t: item_order(len(evaluator.items[t]), seed, t) for t in self.task_names}
        self.sizes = {t: stage_sizes(len(evaluator.items[t]), config.stages) for t in self.task_names}
        self.n_stages = max(len(s) for s in self.sizes.values())
        self.stage_evaluators = [self._stage_evaluator(k) for k in range(self.n_stages)]
        self.likelihood_scorers = []
        if config.likelihood is not None:
            from vlmmerge.evaluation.likelihood import LikelihoodScorer

            self.likelihood_scorers = [LikelihoodScorer(tasks[o.label], evaluator.items) for o in self.objectives]

    def _stage_evaluator(self, k: int):
        """An evaluator over the items new in stage k (same settings as the fitness evaluator)."""
        import copy

        ev = copy.copy(self.evaluator)
        ev.items, ev._encoded, ev._encoded_for, ev._scoring_cache = {}, {}, None, {}
        for t in self.task_names:
            sizes = self.sizes[t]
            lo = sizes[k - 1] if 0 < k <= len(sizes) else (0 if k == 0 else sizes[-1])
            hi = sizes[min(k, len(sizes) - 1)]
            ev.items[t] = [self.evaluator.items[t][i] for i in self.orders[t][lo:hi]] if hi > lo else []
        ev.tasks = [task for task in self.evaluator.tasks if ev.items.get(task.name)]
        return ev

    def earlier(self, optimizer: str, index: int) -> list[list[float]]:
        vectors = []
        for entry in self.journal.of(optimizer):
            if entry.index < index and complete(entry):
                vectors.append(list(entry.objectives) if entry.objectives is not None else [entry.fitness])
        if not self.multi and vectors and len(vectors[0]) > 1:
            vectors = [[float(np.mean(v))] for v in vectors]
        return vectors

    def earlier_likelihood(self, optimizer: str, index: int) -> list[list[float]]:
        """Likelihood vectors (as the rule compares them) of the earlier likelihood-scored candidates."""
        vectors = [entry.stages[0]["compared"] for entry in self.journal.of(optimizer)
                   if entry.index < index and not entry.failed and entry.stages
                   and entry.stages[0].get("kind") == "likelihood"]
        return vectors

    def likelihood_stage(self, model: Any, processor: Any, earlier: list[list[float]]) -> dict[str, Any]:
        values = [float(scorer(model, processor)) for scorer in self.likelihood_scorers]
        compared = values if self.multi else [float(np.mean(values))]
        settings = self.config.likelihood
        return {"kind": "likelihood", "likelihood": values, "compared": compared,
                "likelihood_items": sum(len(s.items) for s in self.likelihood_scorers), "items": 0,
                "kept": likelihood_keeps(compared, earlier, settings.keep, settings.warmup, settings.window),
                "complete": False}

    def race(self, model: Any, processor: Any, earlier: list[list[float]],
             earlier_likelihood: list[list[float]] | None = None) -> tuple[float, dict[str, Any]]:
        from vlmmerge.search.objectives import generated_values, mean_objective

        seen: dict[str, list[float]] = {name: [] for name in self.names}
        stages: list[dict[str, Any]] = []
        if self.likelihood_scorers:
            first = self.likelihood_stage(model, processor, earlier_likelihood or [])
            stages.append(first)
            extra = {"stages": stages, "generated_items": 0, "likelihood_items": first["likelihood_items"]}
            if not first["kept"]:
                vector = [0.0] * len(self.names)
                return mean_objective(vector), {**extra, "objectives": vector}
        generated = 0
        for k, ev in enumerate(self.stage_evaluators):
            if ev.tasks:
                result = ev.evaluate(model, processor)
                for name, (_, items) in generated_values(result, self.objectives, ev.tasks).items():
                    seen[name].extend(items)
                generated += sum(len(ev.items[t.name]) for t in ev.tasks)
            means = [float(np.mean(seen[name])) for name in self.names]
            last = k == self.n_stages - 1
            upper = [upper_full_mean(seen[name], self.n_full[name], self.config.confidence, self.config.bound,
                                     self.config.max_score) for name in self.names]
            kept = last or keeps(upper if self.multi else [float(np.mean(upper))], earlier, self.config.top)
            stages.append({"items": sum(len(v) for v in seen.values()), "objectives": means, "upper": upper,
                           "kept": kept, "complete": last})
            if not kept:
                break
        vector = stages[-1]["objectives"]
        out = {"objectives": vector, "stages": stages, "generated_items": generated}
        if self.likelihood_scorers:
            out["likelihood_items"] = stages[0]["likelihood_items"]
        return mean_objective(vector), out

    def evaluate_many(self, candidates):
        from vlmmerge.search.candidates import evaluate_candidate
        from vlmmerge.search.objectives import attach_objectives

        for candidate in candidates:
            earlier = self.earlier(candidate.optimizer, candidate.index)
            earlier_likelihood = self.earlier_likelihood(candidate.optimizer, candidate.index)

            def fitness(genome, earlier=earlier, earlier_likelihood=earlier_likelihood):
                model, processor = self.materializer.materialize(genome)
                return self.race(model, processor, earlier, earlier_likelihood)

            entry = evaluate_candidate(fitness, self.space, candidate)
            entry.stages = entry.scores.pop("stages", None)
            yield attach_objectives(entry, self.names)
