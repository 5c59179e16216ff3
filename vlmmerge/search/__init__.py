"""Evolutionary search over merge recipes: search spaces (genomes), candidates and their
materializers, fitness backends, one ask/tell optimizer loop, journal and resume."""

from vlmmerge.search.backends import FitnessBackend, LocalBackend
from vlmmerge.search.candidates import Candidate, Materializer, PSMaterializer
from vlmmerge.search.evolve import dry_run, run_evolution
from vlmmerge.search.journal import Journal, JournalEntry
from vlmmerge.search.optimize import best_entry, evaluations_to_reach, run_cma, run_random, run_search
from vlmmerge.search.space import EvolveConfig, OptimizerConfig, SearchSpace, SpaceConfig, layer_groups

__all__ = [
    "Candidate",
    "EvolveConfig",
    "FitnessBackend",
    "Journal",
    "JournalEntry",
    "LocalBackend",
    "Materializer",
    "OptimizerConfig",
    "PSMaterializer",
    "SearchSpace",
    "SpaceConfig",
    "best_entry",
    "dry_run",
    "evaluations_to_reach",
    "layer_groups",
    "run_cma",
    "run_evolution",
    "run_random",
    "run_search",
]
