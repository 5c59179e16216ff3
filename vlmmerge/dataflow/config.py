"""The `evolve.dataflow:` section of a recipe: which DFS search space, its bounds and its model A."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class DataflowConfig(BaseModel):
    """A data-flow-space search (the recipe's `models:` are the sources, model A first; A is the host).

    variant: `paper` (indicator per slot of the layers of all sources in order, repeated `repeats`
    times, plus an M x M scale matrix W), `hop_scales` (indicator + one scale per slot),
    `interleaved` (as hop_scales with the slots ordered layer 1 of every model, layer 2, ...),
    `same_size` (per layer position of the host: which source's layer, and a scale; with
    `same_size_mix: weighted` the gene may fall between two sources: a per-layer linear merge of them).
    host: which of `models:` (as written there) supplies embeddings, final norm, head and, for a VLM,
    the vision tower and projector; default the first model (model A).
    head_from: which of `models:` supplies token embeddings, final norm and lm_head instead (the vision
    tower and projector stay the host's); default the host.
    """

    model_config = ConfigDict(extra="forbid")
    variant: Literal["paper", "hop_scales", "interleaved", "same_size"] = "hop_scales"
    repeats: int = Field(default=2, ge=1)
    max_path_length: int | None = Field(default=None, ge=1)  # None: every slot may be on
    scale_bounds: tuple[float, float] = (0.5, 1.5)
    same_size_mix: Literal["choice", "weighted"] = "choice"  # same_size: one source per position, or a mix of two
    host: str | None = None  # a model of `models:`; None: model A (the first)
    head_from: str | None = None  # a model of `models:`: embeddings, final norm, head; None: the host
    # PS+DFS: model A is a parameter-space result, a static recipe file or an evolve run folder
    # (its best-recipe.yaml); it is merged once and replaces the first of `models:` as host and model A
    model_a: str | None = None
    # a parameter-space recipe (file or run folder) scored on the test split beside the DFS result ("PS")
    compare_ps: str | None = None
    init_on: float = 0.3  # model A's first-repetition slots start this far above the on/off threshold (in [0, 1] genes)
    init_off: float = 0.0  # every other slot starts this far below it (0: at the threshold, as in the paper)

    @field_validator("scale_bounds")
    @classmethod
    def _bounds(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not low < high:
            raise ValueError(f"lower bound {low} must be below upper bound {high}")
        return value
