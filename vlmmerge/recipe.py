"""Merge recipes: mergekit's YAML form, plus vlmmerge's keys (`host`, `seed`, `mask_generator`, `options`, `evolve`).

An existing mergekit recipe (`models:` form) loads unchanged. Parameter values follow mergekit:
a scalar; a list of numbers interpolated linearly across layers at t = layer / (num_layers - 1)
(non-layer tensors take t = 0); or a list of `{filter, value}` entries where the first entry whose
`filter` is a substring of the tensor name (or is absent / "*") applies.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vlmmerge.errors import RecipeError

Scalar = Union[bool, int, float, str]


class ConditionalParameter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    filter: str | None = None
    value: "ParameterSetting"


ParameterSetting = Union[Scalar, list[Scalar], list[ConditionalParameter], ConditionalParameter]
ConditionalParameter.model_rebuild()


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    parameters: dict[str, ParameterSetting] = Field(default_factory=dict)

    @field_validator("model")
    @classmethod
    def _no_lora(cls, value: str) -> str:
        if "+" in value:
            raise ValueError(f"model {value!r}: 'model+lora' references are not supported; merge the LoRA first")
        return value


class MergeOptions(BaseModel):
    """Engine knobs; all have defaults that suit a workstation CPU."""

    model_config = ConfigDict(extra="forbid")
    device: str = "cpu"
    threads: int | None = Field(default=None, ge=1)  # tensors merged at once; None: the usable cores, at most 8
    compute_dtype: str = "float32"  # float32 or float64 (merge kernels never compute in half precision)
    max_shard_size: str = "2GB"  # output safetensors shard size


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    merge_method: str
    models: list[ModelEntry]
    base_model: str | None = None
    parameters: dict[str, ParameterSetting] = Field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    tokenizer: dict[str, Any] | None = None  # mergekit's newer form; only `source` is used
    chat_template: str | None = None
    name: str | None = None
    # vlmmerge keys
    host: str | None = None
    seed: int = 0
    # DARE / DELLA masks' numbers: torch's CPU generator, or a counter hash (vlmmerge.methods.counter_masks)
    mask_generator: Literal["torch", "counter"] = "torch"
    options: MergeOptions = Field(default_factory=MergeOptions)
    evolve: dict[str, Any] | None = None  # validated by vlmmerge.search
    tune: dict[str, Any] | None = None  # learned merges (`vlmmerge tune`), validated by vlmmerge.tune.config
    # which components of the models merge (language, vision, projector); None: every component all models share
    components: list[str] | None = None
    # mergekit `slices:` (passthrough layer stacks), validated by `parse_slices` below; `models` then
    # holds the first slice's model (embeddings and, for LLMs, the architecture)
    slices: list[dict[str, Any]] | None = None
    non_layer_from: str | None = None  # slices: whose embeddings, final norm, head (default: mergekit's first / last slice)

    @field_validator("models")
    @classmethod
    def _at_least_one(cls, value: list[ModelEntry]) -> list[ModelEntry]:
        if not value:
            raise ValueError("`models` is empty")
        return value

    @property
    def model_refs(self) -> list[str]:
        """Every distinct model the recipe reads, base first."""
        refs = [self.base_model] if self.base_model else []
        for entry in self.models:
            if entry.model not in refs:
                refs.append(entry.model)
        return refs

    @property
    def output_dtype(self) -> str | None:
        return self.out_dtype or self.dtype

    @property
    def tokenizer_ref(self) -> str | None:
        if self.tokenizer and self.tokenizer.get("source"):
            return str(self.tokenizer["source"])
        return self.tokenizer_source

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
        data["merge_method"] = self.merge_method
        data["models"] = [e.model_dump(mode="json", exclude_defaults=True) for e in self.models]
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# mergekit `slices:` recipes (passthrough layer stacks). A slices recipe loads as a one-model
# passthrough of the first slice's model (or of `non_layer_from`) with `slices` kept; the engine
# (`vlmmerge.engine.slices`) turns it into a layer-stack plan.


class SliceSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    layer_range: tuple[int, int]
    parameters: dict[str, ParameterSetting] = Field(default_factory=dict)

    @field_validator("layer_range")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= value[0] < value[1]:
            raise ValueError(f"layer_range {list(value)} must be [start, end) with 0 <= start < end")
        return value


class Slice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: list[SliceSource]

    @field_validator("sources")
    @classmethod
    def _one_source(cls, value: list[SliceSource]) -> list[SliceSource]:
        if len(value) != 1:
            raise ValueError(f"passthrough slices take exactly 1 source, got {len(value)} "
                             "(slices that merge several sources are not supported)")
        return value


def parse_slices(raw: Any, where: str = "recipe") -> list[Slice]:
    if not isinstance(raw, list) or not raw:
        raise RecipeError(f"{where}: slices: expected a non-empty list of slices")
    out = []
    for i, item in enumerate(raw):
        try:
            out.append(Slice.model_validate(item))
        except ValidationError as exc:
            raise RecipeError(f"{where}: {validation_details(exc, f'slices.{i}')}") from None
    return out


def slices_recipe_data(data: dict[str, Any], where: str = "recipe") -> dict[str, Any]:
    """A `slices:` recipe's mapping in the `models:` form the Recipe model takes (slices kept, validated)."""
    method = data.get("merge_method", "passthrough")
    if method != "passthrough":
        raise RecipeError(f"{where}: merge_method: `slices:` recipes are supported with passthrough only, not {method!r}")
    slices = parse_slices(data["slices"], where)
    first = data.get("non_layer_from") or slices[0].sources[0].model
    return {**data, "merge_method": "passthrough", "models": [{"model": first}],
            "slices": [s.model_dump(mode="json") for s in slices]}


def load_recipe(source: str | Path | dict) -> Recipe:
    """Read and validate a recipe from a YAML file, YAML text or a dict; errors name the key at fault."""
    where = "recipe"
    if isinstance(source, dict):
        data = source
    else:
        path = Path(source)
        if path.suffix in (".yaml", ".yml") or path.exists():
            if not path.exists():
                raise RecipeError(f"recipe file not found: {path}")
            where = str(path)
            text = path.read_text(encoding="utf-8")
        else:
            text = str(source)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RecipeError(f"{where}: not valid YAML ({yaml_problem(exc)})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping at the top level")
    if "slices" in data and "models" not in data:
        data = slices_recipe_data(data, where)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(f"{where}: {validation_details(exc)}") from None


def validation_details(exc: ValidationError, prefix: str = "") -> str:
    """A pydantic error as one line, each problem led by its dotted key: `models.0.model: ...`."""
    return "; ".join(
        f"{'.'.join(str(p) for p in (prefix, *err['loc']) if p != '')}: {err['msg']}" for err in exc.errors()
    )


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error as one short phrase with its line and column."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def resolve_setting(setting: ParameterSetting, tensor_name: str, t: float) -> Scalar | None:
    """A parameter's value for one tensor at relative depth t in [0, 1] (mergekit's rules)."""
    if isinstance(setting, ConditionalParameter):
        setting = [setting]
    if isinstance(setting, (bool, int, float, str)):
        return setting
    if not setting:
        return None
    if all(isinstance(e, (bool, int, float, str)) for e in setting):
        numeric = all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in setting)
        if not numeric:
            return setting[int(t * (len(setting) - 1))]
        position = t * (len(setting) - 1)
        lower = int(math.floor(position))
        upper = min(len(setting) - 1, lower + 1)
        frac = position - lower
        return (1 - frac) * setting[lower] + frac * setting[upper]
    for entry in setting:
        if not isinstance(entry, ConditionalParameter):
            raise RecipeError(f"parameter list mixes numbers and filter entries: {setting!r}")
        if entry.filter in (None, "*") or entry.filter in tensor_name:
            return resolve_setting(entry.value, tensor_name, t)
    return None
