"""Fitness backends: where a population of candidates is evaluated.

`evaluate_many` takes the candidates of one population and yields one journal entry per
candidate, in any order (a pool returns them as its workers finish); each entry carries its
candidate's (optimizer, index), which is all the optimizer loop needs to put it in place.
`LocalBackend` evaluates them one after another in this process (the default).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol, runtime_checkable

from vlmmerge.search.candidates import Candidate, FitnessFn, evaluate_candidate
from vlmmerge.search.journal import JournalEntry
from vlmmerge.search.space import SearchSpace


@runtime_checkable
class FitnessBackend(Protocol):
    def evaluate_many(self, candidates: Sequence[Candidate]) -> Iterable[JournalEntry]:
        """One entry per candidate, in any order, each yielded as soon as it is known."""


class LocalBackend:
    """Serial evaluation in this process, through one fitness function (genome -> fitness, scores)."""

    def __init__(self, fitness_fn: FitnessFn, space: SearchSpace):
        self.fitness_fn = fitness_fn
        self.space = space

    def evaluate_many(self, candidates: Sequence[Candidate]) -> Iterator[JournalEntry]:
        for candidate in candidates:
            yield evaluate_candidate(self.fitness_fn, self.space, candidate)


def as_backend(fitness: FitnessFn | FitnessBackend, space: SearchSpace) -> FitnessBackend:
    """A backend as it is; a plain fitness function wrapped in the local serial backend."""
    return fitness if isinstance(fitness, FitnessBackend) else LocalBackend(fitness, space)
