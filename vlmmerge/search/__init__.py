"""Evolutionary search over merge recipes: search spaces (genomes), optimizers, journal and resume."""

from vlmmerge.search.evolve import dry_run, run_evolution
from vlmmerge.search.journal import Journal, JournalEntry
from vlmmerge.search.optimize import best_entry, evaluations_to_reach, run_cma, run_random
from vlmmerge.search.space import EvolveConfig, SearchSpace, layer_groups

__all__ = [
    "EvolveConfig",
    "Journal",
    "JournalEntry",
    "SearchSpace",
    "best_entry",
    "dry_run",
    "evaluations_to_reach",
    "layer_groups",
    "run_cma",
    "run_evolution",
    "run_random",
]
