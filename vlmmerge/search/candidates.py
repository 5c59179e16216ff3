"""Candidates of a search and how one becomes a model and a journal entry.

A `Candidate` is a genome with its place in the run (optimizer, index, generation). A
`Materializer` turns a genome into a live model (`PSMaterializer`: parameter-space merge into a
`LiveMerge`; a layer-path model or a learned merge are other materializers). `evaluate_candidate`
scores one candidate into a journal entry, whatever happens to the evaluation.

A candidate that fails for a transient reason (out of memory, a device error) is tried once more
before it gets the worst fitness; a deterministic failure (an exception of another kind, a NaN
fitness) is not retried. A recipe error is the run's fault, not the candidate's: it ends the run.
"""

from __future__ import annotations

import gc
import math
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from vlmmerge.errors import RecipeError
from vlmmerge.search.journal import JournalEntry
from vlmmerge.search.space import SearchSpace

# fitness function: genome -> (fitness to maximise, per-task scores)
FitnessFn = Callable[[np.ndarray], tuple[float, dict[str, Any]]]

FAILED = float("-inf")


@dataclass(frozen=True)
class Candidate:
    """One genome to evaluate; (optimizer, index) is its journal key."""

    optimizer: str
    index: int
    generation: int
    genome: np.ndarray


class Materializer(Protocol):
    def materialize(self, genome: np.ndarray) -> tuple[Any, Any]:
        """The candidate as a ready model and its processor (or tokenizer)."""


@dataclass
class PSMaterializer:
    """Parameter-space candidates: the genome's static recipe merged into the live model, in place."""

    live: Any  # vlmmerge.live.LiveMerge
    space: SearchSpace

    def materialize(self, genome: np.ndarray) -> tuple[Any, Any]:
        return self.live.materialize(self.space.to_recipe(genome))

# RuntimeError messages of device failures, which may not recur (not "... on the same device").
_TRANSIENT_MESSAGE = re.compile(
    r"out of memory|CUDA error|CUBLAS_STATUS|CUDNN_STATUS|cuDNN error|HIP error|NCCL error|device error"
    r"|device-side|unspecified launch failure",
    re.IGNORECASE,
)


def is_transient(exc: BaseException) -> bool:
    """Out of memory (host or device) or a device error: worth one more try."""
    import torch

    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)) if t)
    if isinstance(exc, (MemoryError, *oom_types)):
        return True
    return isinstance(exc, RuntimeError) and bool(_TRANSIENT_MESSAGE.search(str(exc)))


def _release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _score(fitness_fn: FitnessFn, genome: np.ndarray) -> tuple[float, dict[str, Any], str | None, int]:
    """(fitness, scores, error, attempts); an exception or a non-finite fitness becomes an error."""
    attempts = 0
    while True:
        attempts += 1
        try:
            fitness, scores = fitness_fn(genome)
        except RecipeError:
            raise
        except Exception as exc:  # a broken candidate must not end a long run
            if attempts == 1 and is_transient(exc):
                _release_memory()
                continue
            return FAILED, {}, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}", attempts
        if not math.isfinite(fitness):
            return FAILED, scores, f"fitness is {fitness}", attempts
        return float(fitness), scores, None, attempts


def evaluate_candidate(fitness_fn: FitnessFn, space: SearchSpace, candidate: Candidate) -> JournalEntry:
    start = time.perf_counter()
    fitness, scores, error, attempts = _score(fitness_fn, candidate.genome)
    return JournalEntry(
        optimizer=candidate.optimizer,
        index=candidate.index,
        generation=candidate.generation,
        genome=[float(x) for x in candidate.genome],
        params=space.decode(candidate.genome),
        fitness=fitness,
        scores=scores,
        seconds=time.perf_counter() - start,
        error=error,
        attempts=attempts,
    )
