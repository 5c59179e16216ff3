"""Plans that are not one to one: layer stacks, and the output config that follows from a plan.

`stack_plan` rewrites a plan's decoder-layer stack: output layer i is either the plan's merge of
layer j (the standalone-LM tensors of layer j of every model of the merge) or a copy of layer j
of one source, optionally scaled. `output_config` derives config.json from the plan: the dtype,
and for a rewritten stack the layer count and every per-layer field, each output layer taking
the values of the layer it comes from.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from vlmmerge.engine.plan import LayerOrigin, MergePlan, Source, TensorPlan, TensorRead, relative_depth
from vlmmerge.errors import IncompatibleModelsError, RecipeError

# Text-config fields with one value per decoder layer, and fields that list layer indices.
PER_LAYER_VALUES = ("layer_types", "no_rope_layers", "activation_sparsity_pattern")
LAYER_INDEX_LISTS = ("mlp_only_layers",)
# Qwen2-family threshold: layers below it use full attention (when `use_sliding_window`).
WINDOW_THRESHOLD = "max_window_layers"
# the decoder-layer index in a tensor name (`.layers.N.`, GPT-2 / Falcon `.h.N.`, `.blocks.N.`): the first match
_LAYER = re.compile(r"(?P<head>(?:^|\.)(?:layers|h|blocks|block)\.)\d+\.")


@dataclass(frozen=True)
class StackedLayer:
    """One output decoder layer: layer `layer` merged as the plan says (`source` None), or copied
    from the source `source`, its floating tensors scaled by `scale` (None: bit for bit)."""

    layer: int
    source: str | None = None
    scale: float | None = None
    # per-tensor scales of a copied layer: (filter, value) entries, the first whose filter is a substring of the
    # tensor's standalone-LM name (None: any tensor) wins over `scale` (mergekit's `{filter, value}` form)
    scales: tuple[tuple[str | None, float], ...] = ()

    def scale_for(self, lm_name: str) -> float | None:
        for pattern, value in self.scales:
            if pattern in (None, "*") or pattern in lm_name:
                return None if value == 1.0 else float(value)
        return self.scale


def with_layer(name: str, layer: int) -> str:
    """`name` with its decoder-layer index replaced."""
    return _LAYER.sub(lambda m: f"{m['head']}{layer}.", name, count=1)


def stack_plan(plan: MergePlan, layers: Sequence[StackedLayer], head_from: str | None = None) -> MergePlan:
    """`plan` with its decoder layers replaced by `layers`; embeddings, final norm, head and the
    vision side stay as planned. `head_from` names a source whose head (its embedding if tied)
    becomes the output's own `lm_head`, so a tied host's output is written untied."""
    if not layers:
        raise RecipeError("layer stack: no layers")
    host = plan.host
    by_layer: dict[int, list[TensorPlan]] = {}
    kept: list[TensorPlan | None] = []
    for tensor in plan.tensors:
        index = host.anatomy.layer_index(tensor.name) if tensor.component == "language" else None
        if index is None:
            kept.append(tensor)
        else:
            if not by_layer:
                kept.append(None)  # where the stack goes
            by_layer.setdefault(index, []).append(tensor)
    stacked = [t for i, spec in enumerate(layers) for t in _output_layer(plan, by_layer, i, spec)]
    tensors = [t for slot in kept for t in ([slot] if slot is not None else stacked)]
    tied = plan.tied if plan.tied is not None else host.anatomy.tied
    if head_from is not None:
        tensors = [t for t in tensors if t.component != "head"] + [_head_copy(plan, head_from)]
        tied = False
    origins = tuple(LayerOrigin(spec.source or host.ref, spec.layer) for spec in layers)
    return replace(plan, tensors=tensors, layers=origins, tied=tied)


def _source(plan: MergePlan, ref: str) -> Source:
    try:
        return plan.sources[ref]
    except KeyError:
        raise RecipeError(f"layer stack: {ref!r} is not one of the recipe's models ({list(plan.sources)})") from None


def _output_layer(plan: MergePlan, by_layer: dict[int, list[TensorPlan]], index: int, spec: StackedLayer) -> list[TensorPlan]:
    if spec.layer not in by_layer:
        raise RecipeError(f"layer stack: output layer {index} reads layer {spec.layer}, the host has {len(by_layer)}")
    out = []
    for tensor in by_layer[spec.layer]:
        name = with_layer(tensor.name, index)
        if spec.source is None:
            out.append(replace(tensor, name=name, t=relative_depth(spec.layer, len(by_layer))))
            continue
        source = _source(plan, spec.source)
        lm_name = tensor.lm_name or plan.host.anatomy.to_lm_name(tensor.name)
        read = source.lm_runtime_name(lm_name)
        info = source.checkpoint.info(read)
        if info.shape != tensor.shape:
            raise IncompatibleModelsError(
                f"layer stack: {spec.source}: tensor {read!r} has shape {info.shape}, output {name!r} needs {tensor.shape}"
            )
        scale = spec.scale_for(lm_name) if info.dtype.is_floating_point else None
        out.append(TensorPlan(name, tensor.component, read=TensorRead(spec.source, read, scale), shape=info.shape, dtype=info.dtype))
    return out


def _head_copy(plan: MergePlan, ref: str) -> TensorPlan:
    source, host = _source(plan, ref), plan.host
    read = source.lm_runtime_name(source.anatomy.to_lm_name(source.anatomy.head_name))
    info = source.checkpoint.info(read)
    return TensorPlan(host.anatomy.head_name, "head", read=TensorRead(ref, read), shape=info.shape, dtype=info.dtype)


def output_config(plan: MergePlan, config: dict[str, Any]) -> dict[str, Any]:
    """The host's config.json (as a dict) rewritten for what `plan` writes."""
    dtype_name = str(plan.output_dtype).removeprefix("torch.")
    config["dtype"] = dtype_name
    if "torch_dtype" in config:
        config["torch_dtype"] = dtype_name
    if plan.tied is not None and plan.tied != plan.host.anatomy.tied:
        for section in (config, config.get("text_config")):
            if isinstance(section, dict) and (section is config or "tie_word_embeddings" in section):
                section["tie_word_embeddings"] = plan.tied
    if plan.layers is not None:
        text = config["text_config"] if isinstance(config.get("text_config"), dict) else config
        rewrite_layer_fields(text, plan.host.anatomy.text_config.to_dict(), plan.layers, plan.sources)
    return config


def rewrite_layer_fields(text: dict[str, Any], host_values: dict[str, Any], origins: Sequence[LayerOrigin],
                         sources: dict[str, Source]) -> None:
    """Set the layer count and every per-layer field of a text config for the stack `origins`."""
    old = int(text["num_hidden_layers"])
    text["num_hidden_layers"] = len(origins)
    values = {ref: sources[ref].anatomy.text_config.to_dict() for ref in {o.source for o in origins}}

    def per_layer(key: str) -> list[Any]:
        out = []
        for origin in origins:
            column = values[origin.source].get(key)
            if not isinstance(column, list) or origin.layer >= len(column):
                raise IncompatibleModelsError(f"layer stack: {origin.source} has no {key!r} value for layer {origin.layer}")
            out.append(column[origin.layer])
        return out

    for key in PER_LAYER_VALUES:
        if isinstance(host_values.get(key), list):
            text[key] = per_layer(key)
    for key in LAYER_INDEX_LISTS:
        if isinstance(host_values.get(key), list):
            members = {ref: set(v.get(key) or ()) for ref, v in values.items()}
            text[key] = [i for i, o in enumerate(origins) if o.layer in members[o.source]]
    if isinstance(host_values.get(WINDOW_THRESHOLD), int):
        full = [o.layer < int(values[o.source].get(WINDOW_THRESHOLD) or 0) for o in origins]
        text[WINDOW_THRESHOLD] = next((i for i, f in enumerate(full) if not f), len(full))
    known = {*PER_LAYER_VALUES, *LAYER_INDEX_LISTS, "architectures"}
    for key, value in text.items():
        if isinstance(value, list) and len(value) == old and key not in known:
            raise RecipeError(f"layer stack: config field {key!r} looks per-layer ({old} values) and is not known to vlmmerge")
