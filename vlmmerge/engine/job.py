"""A merge job: the recipe and the engine options, validated once at the edge and passed down whole."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from vlmmerge.checkpoint import parse_size
from vlmmerge.checkpoint.dtypes import DTYPES
from vlmmerge.errors import RecipeError, VlmMergeError
from vlmmerge.recipe import MergeOptions, Recipe, load_recipe

# Merge kernels never compute in half precision; float64 is for checks.
COMPUTE_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float64": torch.float64, "fp64": torch.float64}


def parse_dtype(name: str | None, where: str = "dtype") -> torch.dtype | None:
    if name is None:
        return None
    try:
        return DTYPES[str(name).lower()]
    except KeyError:
        raise RecipeError(f"{where}: unknown dtype {name!r}; use one of {sorted(set(DTYPES))}") from None


def parse_compute_dtype(name: str) -> torch.dtype:
    try:
        return COMPUTE_DTYPES[str(name).lower()]
    except KeyError:
        raise RecipeError(
            f"options.compute_dtype: unknown compute dtype {name!r}; use one of {sorted(COMPUTE_DTYPES)}"
        ) from None


def default_threads() -> int:
    """Worker threads for a merge: the usable cores, at most 8 (memory bandwidth saturates)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


@dataclass(frozen=True)
class EngineOptions:
    """How a merge runs (not what it computes, except `compute_dtype`), after precedence:
    command line > recipe `options:` > default."""

    device: str = "cpu"
    threads: int | None = None  # None: the usable cores, at most 8
    compute_dtype: torch.dtype = torch.float32
    max_shard_size: str = "2GB"
    progress: bool = True

    @property
    def workers(self) -> int:
        return self.threads or default_threads()

    def check_device(self) -> None:
        """The requested device exists on this machine (checked before a merge runs, not when planning)."""
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise VlmMergeError(f"device {self.device!r} requested but CUDA is not available")


@dataclass(frozen=True)
class MergeJob:
    """A validated recipe (its `options` already the effective ones) plus the engine options."""

    recipe: Recipe
    options: EngineOptions
    recipe_text: str | None = None  # the recipe as the user wrote it, recorded verbatim if given

    @property
    def recipe_yaml(self) -> str:
        """What the output's recipe.yaml and model card record."""
        return self.recipe_text if self.recipe_text is not None else self.recipe.to_yaml()

    @classmethod
    def build(
        cls,
        recipe: "Recipe | str | Path | dict | MergeJob",
        *,
        device: str | None = None,
        threads: int | None = None,
        max_shard_size: str | None = None,
        compute_dtype: str | None = None,
        progress: bool = True,
        recipe_text: str | None = None,
    ) -> "MergeJob":
        """Load and validate `recipe` once, with command-line overrides of its `options:`.

        `recipe_text` (the file as the user wrote it) is recorded verbatim unless `compute_dtype`
        overrides the recipe, which changes the numbers: then the effective recipe is recorded.
        """
        if isinstance(recipe, MergeJob):
            return recipe
        recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
        overrides = dict(device=device, threads=threads, max_shard_size=max_shard_size, compute_dtype=compute_dtype)
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if overrides.get("threads", 1) < 1:
            raise VlmMergeError(f"threads must be at least 1, got {overrides['threads']}")
        if overrides:
            recipe = recipe.model_copy(update={"options": recipe.options.model_copy(update=overrides)})
        if compute_dtype is not None:
            recipe_text = None
        options = engine_options(recipe.options, progress)
        parse_dtype(recipe.output_dtype)
        return cls(recipe, options, recipe_text)


def engine_options(options: MergeOptions, progress: bool = True) -> EngineOptions:
    """A recipe's `options:` checked and converted (dtype and size strings parsed)."""
    parse_size(options.max_shard_size)
    return EngineOptions(
        device=options.device,
        threads=options.threads,
        compute_dtype=parse_compute_dtype(options.compute_dtype),
        max_shard_size=options.max_shard_size,
        progress=progress,
    )
