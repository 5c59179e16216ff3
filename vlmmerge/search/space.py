"""The parameter-space (PS) search space: genome <-> per-model, per-layer-group merge parameters.

A genome is a vector in [0, 1]^n (CMA-ES works in this normalised box; `bounds` map each gene to
its parameter range). Genes are ordered model-major, then parameter, then layer group:

    for model in searched models: for param in params: for group in groups: one gene

Groups: `granularity: model` gives one group covering every tensor; `layer` gives one group per
layer; an integer k gives groups of k consecutive layers. Except at `model` granularity, the
non-layer tensors (embeddings, final norm, head) form their own group, listed last (a catch-all
entry in the recipe).

A decoded genome becomes a *static recipe* in mergekit form, using `{filter, value}` entries
whose filters are exact layer prefixes (`model.layers.3.`), so `vlmmerge merge` reproduces the
candidate exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vlmmerge.errors import RecipeError
from vlmmerge.methods import get_method
from vlmmerge.recipe import ConditionalParameter, ModelEntry, Recipe
from vlmmerge.search.estimate import EstimateConfig
from vlmmerge.search.objectives import ObjectiveConfig, fill_fitness_tasks
from vlmmerge.search.racing import RacingConfig
from vlmmerge.search.ray_backend import BackendConfig
from vlmmerge.dataflow.config import DataflowConfig

DEFAULT_BOUNDS = {"weight": (0.0, 1.5), "density": (0.1, 1.0), "gamma": (0.0, 0.1), "epsilon": (0.0, 0.3)}


class TaskRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: str  # an eval-set folder, a built-in set name, or a benchmark name
    weight: float = 1.0
    # default: the task's primary metric; a mapping {metric: weight} scores a weighted mean of several
    # metrics of the same generations (e.g. exact match plus concept recall, a smoother fitness)
    metric: str | dict[str, float] | None = None
    local_path: str | None = None  # offline copy of a hub benchmark


class FitnessConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: list[TaskRef]
    split: str = "fitness"
    limit: int | None = None
    batch_size: int = 16
    generation: dict[str, Any] | None = None  # overrides every task's generation settings, e.g. {num_beams: 1}


class BaselineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    merge_method: str
    weight: float = 1.0
    density: float = 0.5


class SpaceConfig(BaseModel):
    """What is searched: which parameters of which models, at which granularity, within which bounds."""

    model_config = ConfigDict(extra="forbid")
    params: list[str] = Field(default_factory=lambda: ["weight", "density"])
    searched_models: list[str] | None = None  # default: every model except the base
    granularity: Union[Literal["model", "layer"], int] = "model"
    bounds: dict[str, tuple[float, float]] = Field(default_factory=dict)
    init: dict[str, float] = Field(default_factory=lambda: {"weight": 0.5, "density": 0.5})
    num_layers: int | None = None  # lets --dry-run size the space without any config download

    @field_validator("granularity")
    @classmethod
    def _positive(cls, value):
        if isinstance(value, int) and value < 1:
            raise ValueError("granularity must be 'model', 'layer' or a positive number of layers per group")
        return value

    @model_validator(mode="after")
    def _bounds_for_params(self):
        for name in self.params:
            low, high = self.bound(name)
            if not low < high:
                raise ValueError(f"bounds.{name}: lower bound {low} must be below upper bound {high}")
        return self

    def bound(self, name: str) -> tuple[float, float]:
        return tuple(self.bounds.get(name, DEFAULT_BOUNDS.get(name, (0.0, 1.0))))  # type: ignore[return-value]


class OptimizerConfig(BaseModel):
    """How it is searched: the optimizer, its step size and population, the budget and the seed."""

    model_config = ConfigDict(extra="forbid")
    optimizer: Literal["cma", "random", "nsga2", "comocma"] = "cma"  # nsga2/comocma: evolve.objectives
    sigma0: float = 1 / 6
    popsize: int | None = None
    budget: int = Field(default=1000, ge=1)
    seed: int = 0
    compare_random: bool = False  # also run random search with the same budget, for comparison

    def population_size(self, dimension: int) -> int:
        return self.popsize or 4 + int(math.floor(3 * math.log(dimension)))


# The flat keys users write under `evolve:`, by the section they belong to.
SECTIONS = {"space": SpaceConfig, "search": OptimizerConfig}
FLAT_KEYS = {key: section for section, model in SECTIONS.items() for key in model.model_fields}


class EvolveConfig(BaseModel):
    """The `evolve:` section of a recipe: search space + optimizer settings + fitness, test, baselines.

    Written flat (`params:`, `budget:`, ... side by side, as in every recipe) or nested
    (`space: {...}`, `search: {...}`); both parse to the same model.
    """

    model_config = ConfigDict(extra="forbid")
    space: SpaceConfig = Field(default_factory=SpaceConfig)
    search: OptimizerConfig = Field(default_factory=OptimizerConfig)
    fitness: FitnessConfig
    test: FitnessConfig | None = None
    objectives: list[ObjectiveConfig] | None = None  # several objectives (vlmmerge.search.objectives)
    racing: RacingConfig | None = None  # successive halving of the fitness split (vlmmerge.search.racing)
    estimate: EstimateConfig | None = None  # fitness from anchor items (vlmmerge.search.estimate)
    backend: BackendConfig = Field(default_factory=BackendConfig)  # where candidates are scored (search.ray_backend)
    dataflow: DataflowConfig | None = None  # a data-flow-space (layer path) search instead (vlmmerge.dataflow)
    baselines: list[BaselineConfig] = Field(
        default_factory=lambda: [
            BaselineConfig(name="TIES (untuned)", merge_method="ties"),
            BaselineConfig(name="DARE-TIES (untuned)", merge_method="dare_ties"),
        ]
    )

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_keys(cls, data: Any) -> Any:
        return fill_fitness_tasks(nest_flat_keys(data))

    @property
    def budget(self) -> int:
        return self.search.budget

    @property
    def seed(self) -> int:
        return self.search.seed

    def population_size(self, dimension: int) -> int:
        return self.search.population_size(dimension)


def nest_flat_keys(data: Any) -> Any:
    """Move the flat keys into their sections (a key given both ways: the nested one is an error)."""
    if not isinstance(data, dict):
        return data
    nested: dict[str, Any] = {k: v for k, v in data.items() if FLAT_KEYS.get(k) is None}
    for key, value in data.items():
        section = FLAT_KEYS.get(key)
        if section is None:
            continue
        given = nested.get(section)
        target = dict(given) if isinstance(given, dict) else {}
        if key in target:
            raise ValueError(f"{key} is given both flat and under {section}: keep one")
        target[key] = value
        nested[section] = target if given is None or isinstance(given, dict) else given
    return nested


def flat_location(loc: tuple, section: dict[str, Any]) -> tuple:
    """An error location as the user wrote it: `space.granularity` -> `granularity` for a flat key."""
    if loc and loc[0] in SECTIONS and loc[0] not in section:
        return loc[1:]
    return loc


@dataclass(frozen=True)
class LayerGroup:
    name: str
    filters: tuple[str, ...]  # exact prefixes / substrings selecting the group's tensors


def layer_groups(num_layers: int, granularity: str | int) -> list[LayerGroup]:
    if granularity == "model":
        return [LayerGroup("all", ())]
    size = 1 if granularity == "layer" else int(granularity)
    groups = []
    for start in range(0, num_layers, size):
        layers = range(start, min(start + size, num_layers))
        name = f"layers {layers[0]}" if len(layers) == 1 else f"layers {layers[0]}-{layers[-1]}"
        groups.append(LayerGroup(name, tuple(f"model.layers.{i}." for i in layers)))
    groups.append(LayerGroup("embeddings/norm/head", ()))  # catch-all: every tensor outside the layers
    return groups


@dataclass(frozen=True)
class Gene:
    model: str
    param: str
    group: LayerGroup
    low: float
    high: float

    def decode(self, x: float) -> float:
        return self.low + float(np.clip(x, 0.0, 1.0)) * (self.high - self.low)

    def encode(self, value: float) -> float:
        return (value - self.low) / (self.high - self.low)


class SearchSpace:
    """Maps genomes to merge recipes for one evolve recipe (template + evolve section)."""

    def __init__(self, template: Recipe, config: EvolveConfig, num_layers: int):
        self.template = template
        self.config = config
        self.num_layers = num_layers
        method = get_method(template.merge_method)
        space = config.space
        unknown = [p for p in space.params if p not in method.model_params]
        if unknown:
            raise RecipeError(
                f"evolve.params: {unknown} are not per-model parameters of {method.name} "
                f"(known: {sorted(method.model_params)})"
            )
        listed = [entry.model for entry in template.models]
        searched = space.searched_models or [m for m in listed if not (method.takes_base and m == template.base_model)]
        missing = [m for m in searched if m not in listed]
        if missing:
            raise RecipeError(f"evolve.searched_models: {missing} are not in the recipe's models")
        self.models = searched
        self.groups = layer_groups(num_layers, space.granularity)
        self.genes = [
            Gene(model, param, group, *space.bound(param))
            for model in searched
            for param in space.params
            for group in self.groups
        ]

    @property
    def dimension(self) -> int:
        return len(self.genes)

    def initial_genome(self) -> np.ndarray:
        values = []
        for gene in self.genes:
            init = self.config.space.init.get(gene.param)
            values.append(0.5 if init is None else float(np.clip(gene.encode(init), 0.0, 1.0)))
        return np.asarray(values, dtype=float)

    def decode(self, genome: np.ndarray) -> dict[str, dict[str, dict[str, float]]]:
        """model -> param -> group name -> value."""
        genome = np.asarray(genome, dtype=float)
        if genome.shape != (self.dimension,):
            raise RecipeError(f"genome has {genome.shape} genes; this search space has {self.dimension}")
        decoded: dict[str, dict[str, dict[str, float]]] = {}
        for gene, x in zip(self.genes, genome):
            decoded.setdefault(gene.model, {}).setdefault(gene.param, {})[gene.group.name] = gene.decode(x)
        return decoded

    def encode(self, decoded: dict[str, dict[str, dict[str, float]]]) -> np.ndarray:
        return np.asarray([gene.encode(decoded[gene.model][gene.param][gene.group.name]) for gene in self.genes])

    def to_recipe(self, genome: np.ndarray) -> Recipe:
        """The static recipe of a genome (no `evolve:` section): what `vlmmerge merge` runs."""
        decoded = self.decode(genome)
        entries = []
        for entry in self.template.models:
            parameters: dict[str, Any] = dict(entry.parameters)
            for param, by_group in decoded.get(entry.model, {}).items():
                parameters[param] = self._setting(by_group)
            entries.append(ModelEntry(model=entry.model, parameters=parameters))
        return self.template.model_copy(update={"models": entries, "evolve": None})

    def _setting(self, by_group: dict[str, float]):
        if len(self.groups) == 1:
            return round_value(by_group[self.groups[0].name])
        conditions = []
        for group in self.groups:
            value = round_value(by_group[group.name])
            if not group.filters:
                conditions.append(ConditionalParameter(filter=None, value=value))
            for prefix in group.filters:
                conditions.append(ConditionalParameter(filter=prefix, value=value))
        return conditions

    def describe(self) -> dict[str, Any]:
        space, search = self.config.space, self.config.search
        population = search.population_size(self.dimension)
        return {
            "dimension": self.dimension,
            "models": self.models,
            "params": space.params,
            "groups": [g.name for g in self.groups],
            "num_layers": self.num_layers,
            "bounds": {p: space.bound(p) for p in space.params},
            "population": population,
            "budget": search.budget,
            "generations": math.ceil(search.budget / population),
        }


def round_value(value: float) -> float:
    """Recipes store 8 significant digits; the live candidate uses the same rounded values."""
    return float(f"{value:.8g}")


def parse_evolve(section: dict[str, Any]) -> EvolveConfig:
    """The `evolve:` section validated; errors name keys as the recipe wrote them (`evolve.bounds.weight`)."""
    try:
        return EvolveConfig.model_validate(section)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in ('evolve', *flat_location(e['loc'], section)))}: {e['msg']}"
            for e in exc.errors()
        )
        raise RecipeError(problems) from None


def override_evolve(section: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` (flat keys, e.g. from `--budget`) written where the section keeps each key."""
    updated = dict(section)
    for key, value in overrides.items():
        where = FLAT_KEYS.get(key)
        if where is not None and isinstance(updated.get(where), dict):
            updated[where] = {**updated[where], key: value}
        elif isinstance(value, dict) and isinstance(updated.get(key), dict):  # e.g. --actors: one key of backend
            updated[key] = {**updated[key], **value}
        else:
            updated[key] = value
    return updated
