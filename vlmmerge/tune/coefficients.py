"""Learned merge coefficients: theta = base + sum_i c_ij * tau_ij, with c_ij = scale * tanh(w_ij).

Pure math and bookkeeping (no files, no models). A `CoefficientSpace` knows the models whose
task vectors are weighted, the coefficient groups (one coefficient per model and group) and
which group each merged tensor falls in. Groups are written as mergekit `{filter, value}`
entries, matched in order, first match wins, exactly as `vlmmerge merge` resolves them; the
tensor-to-group assignment is computed with that same rule (`resolve_setting`), so the static
recipe weighs every tensor with the coefficient it was trained with.

Granularities:
    model       one coefficient per model
    layer       one per model and decoder layer, plus one for embeddings / final norm / head (SuperMerge)
    component   one per model, layer and component (attention, MLP, the layer's norms), plus
                embeddings, head and final norm
    tensor      one per model and merged tensor (AdaMerging's "layer")
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vlmmerge.recipe import ConditionalParameter, resolve_setting

_LAYER = re.compile(r"^(?P<prefix>.*?\.(?:layers|h|blocks)\.(?P<index>\d+)\.)(?P<rest>.*)$")


@dataclass(frozen=True)
class Group:
    name: str
    filters: tuple[str | None, ...]  # None: the catch-all (every tensor no earlier filter took)


def _layer_parts(name: str) -> tuple[str, int, str] | None:
    match = _LAYER.match(name)
    return (match["prefix"], int(match["index"]), match["rest"]) if match else None


def _component_of(rest: str) -> str:
    first = rest.split(".", 1)[0]
    if "norm" in first:
        return "norms"
    if "attn" in first or "attention" in first:
        return "attention"
    if "mlp" in first or "feed_forward" in first or "ffn" in first:
        return "mlp"
    return "norms"


def make_groups(names: Sequence[str], granularity: str) -> list[Group]:
    """Coefficient groups over the merged tensors' standalone-LM names, in filter order."""
    if granularity == "model":
        return [Group("all", (None,))]
    if granularity == "tensor":
        # Longest first: a name that is a substring of another never takes the other's tensor.
        return [Group(n, (n,)) for n in sorted(names, key=lambda n: (-len(n), n))]
    layers: dict[int, dict[str, str]] = {}
    other: list[str] = []
    for name in names:
        parts = _layer_parts(name)
        if parts is None:
            other.append(name)
            continue
        prefix, index, rest = parts
        components = layers.setdefault(index, {})
        if granularity == "component":
            component = _component_of(rest)
            head = rest.split(".", 1)[0]
            components.setdefault(component, prefix if component == "norms" else f"{prefix}{head}.")
        else:
            components.setdefault("layer", prefix)
    groups = []
    for index in sorted(layers):
        if granularity == "layer":
            groups.append(Group(f"layers {index}", (layers[index]["layer"],)))
            continue
        for component in ("attention", "mlp", "norms"):
            prefix = layers[index].get(component)
            if prefix is not None:
                groups.append(Group(f"layers {index} {component}", (prefix,)))
    if granularity == "component":
        embeds = sorted({n for n in other if "embed" in n})
        heads = sorted({n for n in other if n.startswith("lm_head") or ".lm_head" in n})
        if embeds:
            groups.append(Group("embeddings", tuple(embeds)))
        if heads:
            groups.append(Group("head", tuple(heads)))
        groups.append(Group("final norm/other", (None,)))
    else:
        groups.append(Group("embeddings/norm/head", (None,)))
    return groups


def conditions(groups: Sequence[Group], values: Sequence[float]) -> list[ConditionalParameter]:
    """The `{filter, value}` list of one model (catch-alls last, as `resolve_setting` needs)."""
    entries, tail = [], []
    for group, value in zip(groups, values, strict=True):
        for flt in group.filters:
            (tail if flt is None else entries).append(ConditionalParameter(filter=flt, value=value))
    return entries + tail


def assign_groups(names: Sequence[str], groups: Sequence[Group]) -> dict[str, int]:
    """Tensor name -> group index, by the same first-match rule the static recipe is read with."""
    entries = conditions(groups, list(range(len(groups))))
    assignment = {}
    for name in names:
        index = resolve_setting(entries, name, 0.0)
        if index is None:
            raise ValueError(f"tensor {name!r} falls in no coefficient group")
        assignment[name] = int(index)
    return assignment


class CoefficientSpace:
    """The trainable matrix w (models x groups) and c = scale * tanh(w)."""

    def __init__(self, models: Sequence[str], names: Sequence[str], granularity: str, scale: float = 1.0):
        self.models = list(models)
        self.granularity = granularity
        self.scale = float(scale)
        self.groups = make_groups(names, granularity)
        self.assignment = assign_groups(names, self.groups)
        used = sorted(set(self.assignment.values()))
        if len(used) != len(self.groups):  # drop groups no tensor falls in (e.g. an unused catch-all)
            keep = [self.groups[i] for i in used]
            self.groups = keep
            self.assignment = assign_groups(names, keep)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.models), len(self.groups))

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    def initial_w(self, init: float) -> torch.Tensor:
        """w0 with scale * tanh(w0) = init, for every coefficient (float32)."""
        return torch.full(self.shape, math.atanh(init / self.scale), dtype=torch.float32)

    def coefficients(self, w: torch.Tensor) -> torch.Tensor:
        c = torch.tanh(w)
        return c * self.scale if self.scale != 1.0 else c

    def values(self, w: torch.Tensor) -> list[list[float]]:
        """The coefficients as Python floats (each exactly its float32 value: a recipe round-trips it)."""
        return self.coefficients(w.detach()).tolist()

    def group_of(self, name: str) -> int:
        return self.assignment[name]

    def setting(self, values: Sequence[float]) -> float | list[ConditionalParameter]:
        """One model's per-tensor weight as a recipe setting."""
        if len(self.groups) == 1 and self.groups[0].filters == (None,):
            return float(values[0])
        return conditions(self.groups, [float(v) for v in values])

    def describe(self) -> dict:
        return {"models": self.models, "granularity": self.granularity, "scale": self.scale,
                "groups": [g.name for g in self.groups], "coefficients": self.size}
