"""mergekit `slices:` recipes (passthrough layer stacks) as plans of the merge engine.

A `slices:` recipe lists output slices, each one source with a `layer_range: [start, end)`; they
stack in order. As in mergekit, the embeddings come from the first slice's model and the final norm
and head from the last slice's model; passthrough's per-model `scale` (a number or `{filter, value}`
entries, e.g. `{filter: down_proj, value: 0.5}`) multiplies a copied layer's tensors. The recipe
loads as a one-model passthrough of the first slice's model, or of `non_layer_from` (a vlmmerge key:
the model whose embeddings, final norm and head are written, as a data-flow path keeps model A's),
so the embeddings, the vision side of a VLM host and every non-layer tensor go through the ordinary
passthrough method; its decoder-layer stack is rewritten by `stack_plan`. A `non_layer_from` other
than `host:` lends embeddings, final norm and head onto the host (its vision side stays the host's);
if the two tie their embeddings differently, its head (its embedding if tied) is written as an untied
`lm_head`. `write_merge` plans a
slices recipe here, so `vlmmerge merge`, `run_merge` and every caller of the engine run it. On a VLM host (`host:` or a VLM first model) only the
language side is stacked; vision encoder and projector stay the host's.
"""

from __future__ import annotations

from dataclasses import replace

from vlmmerge.engine.job import MergeJob
from vlmmerge.engine.layers import StackedLayer, stack_plan
from vlmmerge.engine.plan import MergePlan, Source, TensorPlan, TensorRead, plan_job
from vlmmerge.errors import RecipeError
from vlmmerge.recipe import ConditionalParameter, ParameterSetting, Recipe, parse_slices


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
    head = last if last != first else None
    if head is None and first != plan.host.ref and sources[first].anatomy.tied != plan.host.anatomy.tied:
        head = first
    plan = stack_plan(plan, layers, head_from=head)
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


def job_plan(job: MergeJob) -> MergePlan:
    """The plan of any job: the layer stack of a `slices:` recipe, else the ordinary per-tensor plan."""
    return slices_plan(job) if job.recipe.slices else plan_job(job)
