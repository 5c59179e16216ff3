"""mergekit `slices:` recipes (passthrough layer stacks) as plans of the merge engine.

A `slices:` recipe lists output slices, each one source with a `layer_range: [start, end)`; they
stack in order. As in mergekit, the embeddings come from the first slice's model and the final norm
and head from the last slice's model; passthrough's per-model `scale` (a number or `{filter, value}`
entries, e.g. `{filter: down_proj, value: 0.5}`) multiplies a copied layer's tensors. The recipe
loads as a one-model passthrough of the first slice's model (or of `non_layer_from`, a vlmmerge key:
the model whose embeddings, final norm and head are written, as a data-flow path keeps model A's) (so the embeddings, the vision side of a
VLM host and every non-layer tensor go through the ordinary passthrough method) whose decoder-layer
stack is rewritten by `engine.stack_plan`. On a VLM host (`host:` or a VLM first model) only the
language side is stacked; vision encoder and projector stay the host's.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vlmmerge.engine import MergeJob, MergePlan, Source, StackedLayer, plan_job, stack_plan
from vlmmerge.engine.plan import TensorPlan, TensorRead
from vlmmerge.errors import RecipeError
from vlmmerge.recipe import ConditionalParameter, ParameterSetting, Recipe, validation_details


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


def _scales(setting: ParameterSetting | None, where: str) -> tuple[float | None, tuple[tuple[str | None, float], ...]]:
    """A passthrough `scale` setting as (scale of every tensor, filter entries)."""
    if setting is None:
        return None, ()
    if isinstance(setting, (int, float)) and not isinstance(setting, bool):
        return (None if float(setting) == 1.0 else float(setting)), ()
    entries = [setting] if isinstance(setting, ConditionalParameter) else setting
    if isinstance(entries, list) and all(isinstance(e, ConditionalParameter) for e in entries):
        out = []
        for entry in entries:
            if not isinstance(entry.value, (int, float)) or isinstance(entry.value, bool):
                raise RecipeError(f"{where}: scale: filter {entry.filter!r} needs a number, got {entry.value!r}")
            out.append((entry.filter, float(entry.value)))
        return None, tuple(out)
    raise RecipeError(f"{where}: scale: expected a number or {{filter, value}} entries, got {setting!r}")


def stacked_layers(recipe: Recipe) -> list[StackedLayer]:
    layers = []
    for i, piece in enumerate(parse_slices(recipe.slices)):
        source = piece.sources[0]
        setting = source.parameters.get("scale", recipe.parameters.get("scale"))
        scale, scales = _scales(setting, f"slices.{i}.sources.0.parameters")
        unknown = sorted(set(source.parameters) - {"scale"})
        if unknown:
            raise RecipeError(f"slices.{i}.sources.0.parameters: passthrough takes only `scale`, got {unknown}")
        layers.extend(StackedLayer(layer, source=source.model, scale=scale, scales=scales)
                      for layer in range(*source.layer_range))
    return layers


def slices_plan(job: MergeJob) -> MergePlan:
    """The plan of a `slices:` recipe: the first model's passthrough with the layer stack of the slices."""
    recipe = job.recipe
    pieces = parse_slices(recipe.slices)
    first, last = pieces[0].sources[0].model, pieces[-1].sources[0].model
    if recipe.non_layer_from:
        first = last = recipe.non_layer_from
    base = replace(job, recipe=recipe.model_copy(update={"slices": None, "parameters": {}}))
    plan = plan_job(base)
    sources = dict(plan.sources)
    for piece in pieces:
        ref = piece.sources[0].model
        if ref not in sources:
            sources[ref] = Source.open(ref)
    plan = replace(plan, sources=sources, recipe=recipe)
    layers = stacked_layers(recipe)
    for i, spec in enumerate(layers):
        count = sources[spec.source].anatomy.num_layers
        if spec.layer >= count:
            raise RecipeError(f"slices: layer {spec.layer} of {spec.source} (output layer {i}) does not exist; "
                              f"it has {count} layers")
    plan = stack_plan(plan, layers, head_from=last if last != first else None)
    if last != first:
        plan = replace(plan, tensors=[_post_weight(plan, t, sources[last]) for t in plan.tensors])
    return plan


def _post_weight(plan: MergePlan, tensor: TensorPlan, last: Source) -> TensorPlan:
    """The final norm (every language tensor outside the layers but the embeddings and head) from the last slice."""
    host = plan.host.anatomy
    if tensor.component != "language" or host.layer_index(tensor.name) is not None or tensor.name == host.embed_name:
        return tensor
    read = last.lm_runtime_name(host.to_lm_name(tensor.name))
    info = last.checkpoint.info(read)
    return TensorPlan(tensor.name, tensor.component, read=TensorRead(last.ref, read), shape=info.shape, dtype=info.dtype)


def job_plan(job: MergeJob) -> MergePlan | None:
    """The plan `vlmmerge merge` runs for a job: the slices plan, or None (the engine plans it)."""
    return slices_plan(job) if job.recipe.slices else None
