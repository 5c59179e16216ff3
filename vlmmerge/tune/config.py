"""The `tune:` section of a recipe: what is learned, how, and on which examples.

    tune:
      method: supermerge            # supermerge (teacher-forced CE of references) | adamerging (entropy)
      granularity: layer            # model | layer | component | tensor
      scale: 1.0                    # c = scale * tanh(w)
      init: 0.5                     # initial coefficient value (tanh(w0) = init)
      steps: 60
      lr: 0.05
      optimizer: adam               # adam | sgd | adamw
      batch_size: 8
      examples: 32                  # labelled fitness items used (first N per task, then shuffled)
      sparsify: none                # none | dare | ties (masks fixed, seeded as `vlmmerge merge`)
      density: 0.5
      seed: 0
      fitness: {tasks: [...]}       # the same task references as `evolve:`
      test: {tasks: [...]}
      baselines: [...]
      answer_format: {ja_caption: "{symbols} ➡{reference}"}   # teacher-forced target per task
      group_size: 2                 # hierarchical merging (groups of 2 sources, then the groups)
      group_merge: learned          # stage 2: learned | static (every group weighs 1)
      compare: {CMA-ES: runs/x/best-recipe.yaml}   # more static recipes in the test report
      checkpoint_every: 1           # steps between saved optimizer states (resume points)

A coefficient is c = scale * tanh(w) (SuperMerge: scale 1, every weight in (-1, 1)); a scale of 2
lets a weight reach the (-2, 2) range that the CMA-ES demos search ([0, 2]).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vlmmerge.errors import RecipeError
from vlmmerge.search.space import BaselineConfig, FitnessConfig


def _default_baselines() -> list[BaselineConfig]:
    return [
        BaselineConfig(name="task arithmetic (untuned)", merge_method="task_arithmetic"),
        BaselineConfig(name="TIES (untuned)", merge_method="ties"),
        BaselineConfig(name="DARE-TIES (untuned)", merge_method="dare_ties"),
    ]


class TuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["supermerge", "adamerging"] = "supermerge"
    granularity: Literal["model", "layer", "component", "tensor"] = "layer"
    init: float = 0.5  # initial coefficient (tanh(w0) * scale)
    scale: float = Field(default=1.0, gt=0)  # coefficient = scale * tanh(w)
    steps: int = Field(default=60, ge=1)
    lr: float = Field(default=0.05, gt=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    batch_size: int = Field(default=8, ge=1)
    examples: int = Field(default=32, ge=1)  # labelled items per task (fitness split)
    sparsify: Literal["none", "dare", "ties"] = "none"
    density: float = Field(default=0.5, gt=0, le=1)
    seed: int = 0
    checkpoint_every: int = Field(default=1, ge=1)  # steps between saved optimizer states
    max_new_tokens: int | None = None  # AdaMerging: generated answer length (default: the task's)
    answer_format: dict[str, str] = Field(default_factory=dict)  # task name -> target format
    group_size: int | None = Field(default=None, ge=2)  # hierarchical merging: sources per group
    group_merge: Literal["learned", "static"] = "learned"  # stage 2: learn the groups' coefficients, or 1 each
    fitness: FitnessConfig
    test: FitnessConfig | None = None
    baselines: list[BaselineConfig] = Field(default_factory=_default_baselines)
    compare: dict[str, str] = Field(default_factory=dict)  # name -> static recipe path, also tested

    @model_validator(mode="after")
    def _init_in_range(self):
        if not -self.scale < self.init < self.scale:
            raise ValueError(f"init {self.init} must lie strictly inside (-scale, scale) = (-{self.scale}, {self.scale})")
        return self


def parse_tune(section: dict[str, Any] | None) -> TuneConfig:
    """The `tune:` section validated; errors name the key (`tune.granularity: ...`)."""
    if not section:
        raise RecipeError("recipe has no `tune:` section")
    try:
        return TuneConfig.model_validate(section)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in ('tune', *e['loc']))}: {e['msg']}" for e in exc.errors()
        )
        raise RecipeError(problems) from None
