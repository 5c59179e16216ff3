"""The merged model as a differentiable function of its coefficients (`torch.func.functional_call`).

One host model is loaded once (through `vlmmerge.live.LiveMerge`, so it holds the recipe's output
dtype). For every tensor the static merge would merge (`plan_merge` decides: the language side
of a VLM, every tensor of an LLM; vision encoder and projector are never touched), the task
vectors tau_i = theta_i - theta_base are computed once, in float32 exactly as the merge method
computes them (optionally sparsified with the masks `vlmmerge merge` draws), frozen, and kept in
the recipe's dtype; the base tensors are the cached source tensors, never copied. A forward pass
builds

    theta = (sum_i c_i * tau_i) + theta_base          (the order the task-arithmetic kernel adds in)

per tensor and hands it to `functional_call`; vocabulary rows the merge keeps from the host
(extra rows, special tokens) are the host's, outside the graph. With a float32 recipe the
parameters equal, bit for bit, what `vlmmerge merge` writes for the static recipe of the same
coefficients (`static_recipe`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import functional_call

from vlmmerge.engine import TensorPlan, mask_generators_for, parse_dtype
from vlmmerge.errors import RecipeError
from vlmmerge.methods.sparsify import dare_sparsify, trim_outliers
from vlmmerge.recipe import ModelEntry, Recipe
from vlmmerge.tune.coefficients import CoefficientSpace

# sparsify -> the static method whose merge is base + sum_i w_i * sparsify(tau_i), and its extra parameters
STATIC_METHODS = {
    "none": ("task_arithmetic", {}),
    "dare": ("dare_linear", {}),  # DARE drop and L1 rescale, masks seeded per (seed, tensor, model)
    "ties": ("breadcrumbs", {"gamma": 0.0}),  # TIES' magnitude trim to density (no sign election)
}


@dataclass
class MergedTensor:
    plan: TensorPlan
    group: int
    base: torch.Tensor  # the base's merged rows (stored dtype, the cached source tensor or a view)
    taus: list[torch.Tensor]  # one per model (recipe dtype)
    host_full: torch.Tensor | None = None  # vocabulary tensors keeping host rows: the host tensor
    rows: torch.Tensor | None = None  # ... and the merged row indices


def static_template(template: Recipe, sparsify: str, density: float, weight: Any = 1.0) -> Recipe:
    """The recipe whose merge the learned model is, with `weight` for every non-base model."""
    method, extra = STATIC_METHODS[sparsify]
    if not template.base_model:
        raise RecipeError("base_model: learned merges weigh task vectors; the recipe needs a `base_model`")
    entries = []
    for entry in template.models:
        if entry.model == template.base_model:
            entries.append(ModelEntry(model=entry.model, parameters={}))
            continue
        params: dict[str, Any] = {"weight": weight, **extra}
        if sparsify != "none":
            params["density"] = density
        entries.append(ModelEntry(model=entry.model, parameters=params))
    return template.model_copy(update={"merge_method": method, "models": entries, "parameters": {},
                                       "evolve": None, "tune": None})


def task_vector(plan, tensor: TensorPlan, index: int, finetuned: torch.Tensor, base: torch.Tensor,
                sparsify: str, density: float) -> torch.Tensor:
    """tau_i in float32, as the task-vector kernel forms it (copy, subtract, optional sparsify)."""
    delta = torch.empty(base.shape, dtype=torch.float32).copy_(finetuned).sub_(base.to(torch.float32))
    if sparsify == "dare":
        generator = mask_generators_for(plan, tensor)[index]
        delta = dare_sparsify(delta, density, generator, "l1", None)
    elif sparsify == "ties":
        delta = trim_outliers(delta, density, 0.0, None, None)
    return delta


class DifferentiableMerge:
    """Host model + frozen task vectors; `params(w)` gives the merged tensors as functions of w."""

    def __init__(self, template: Recipe, granularity: str = "layer", scale: float = 1.0, sparsify: str = "none",
                 density: float = 0.5, device: str = "cpu", load_processor: bool = True, live: Any = None):
        from vlmmerge.engine import Source, choose_host
        from vlmmerge.live import LiveMerge

        self.sparsify, self.density = sparsify, density
        self.template = static_template(template, sparsify, density)
        if live is None:
            sources = {ref: Source.open(ref) for ref in self.template.model_refs}
            host = choose_host(self.template, sources)
            live = LiveMerge(self.template.model_refs, host.ref, device=device,
                             dtype=parse_dtype(self.template.output_dtype), load_processor=load_processor)
        self.live = live
        self.model, self.processor = live.model, live.processor
        self.device = device
        plan = live.plan(self.template)
        self.plan = plan
        self.dtype = plan.output_dtype
        merged = [t for t in plan.tensors if t.merged]
        self.space = CoefficientSpace([m.entry.model for m in plan.members], [t.lm_name for t in merged],
                                      granularity, scale)
        self.tensors = [self._prepare(t) for t in merged]
        for member in plan.members:  # the task vectors hold what is needed; drop the members' cached tensors
            if member.source.ref not in (live.host_ref, plan.base.ref if plan.base else None):
                live.sources[member.source.ref]._cache.clear()

    def _prepare(self, tensor: TensorPlan) -> MergedTensor:
        plan = self.plan
        rows = tensor.method_rows()

        def select(value: torch.Tensor) -> torch.Tensor:
            if isinstance(rows, slice):
                return value[rows]
            return value if rows is None else value.index_select(0, rows)

        base = select(plan.base.lm_tensor(tensor.lm_name)).to(self.device)
        taus = []
        for i, member in enumerate(plan.members):
            source = member.source  # read past the live model's cache: only the task vector is kept
            finetuned = select(source.checkpoint.get(source.lm_runtime_name(tensor.lm_name))).to(self.device)
            tau = task_vector(plan, tensor, i, finetuned, base, self.sparsify, self.density)
            taus.append(tau.to(self.dtype) if self.dtype != torch.float32 else tau)
        item = MergedTensor(tensor, self.space.group_of(tensor.lm_name), base, taus)
        if plan.keeps_host_rows(tensor):
            item.host_full = plan.host.tensor(tensor.name).to(device=self.device, dtype=torch.float32)
            index = torch.arange(rows.start, rows.stop) if isinstance(rows, slice) else rows
            item.rows = index.to(self.device)
        return item

    # ------------------------------------------------------------------ the function of w
    def merged_value(self, item: MergedTensor, c: torch.Tensor) -> torch.Tensor:
        acc = None
        for i, tau in enumerate(item.taus):
            term = tau.to(torch.float32) * c[i, item.group]
            acc = term if acc is None else acc + term
        value = acc + item.base
        if item.host_full is not None:
            value = item.host_full.index_copy(0, item.rows, value)
        return value.to(self.dtype) if self.dtype != torch.float32 else value

    def params(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """Runtime name -> merged tensor (differentiable in w) for every merged tensor."""
        c = self.space.coefficients(w)
        return {item.plan.name: self.merged_value(item, c) for item in self.tensors}

    def forward(self, w: torch.Tensor, inputs: Mapping[str, torch.Tensor]) -> Any:
        return functional_call(self.model, self.params(w), args=(), kwargs=dict(inputs), tie_weights=True, strict=False)

    @torch.no_grad()
    def load(self, w: torch.Tensor) -> torch.nn.Module:
        """Write the merged tensors of w into the host model (for generation and evaluation)."""
        own = dict(self.model.named_parameters(remove_duplicate=False))
        for name, value in self.params(w.detach()).items():
            own[name].copy_(value.to(own[name].dtype))
        return self.model

    def static_recipe(self, w: torch.Tensor, base: Recipe | None = None) -> Recipe:
        """The static recipe of w: per-model `weight` as exact `{filter, value}` entries."""
        values = self.space.values(w)
        weights = {model: self.space.setting(v) for model, v in zip(self.space.models, values, strict=True)}
        recipe = base or self.template
        entries = [
            ModelEntry(model=e.model, parameters={**e.parameters, "weight": weights[e.model]})
            if e.model in weights else e for e in self.template.models
        ]
        return recipe.model_copy(update={"models": entries, "merge_method": self.template.merge_method,
                                         "parameters": {}, "evolve": None, "tune": None})

    @property
    def member_refs(self) -> Sequence[str]:
        return list(self.space.models)

    @property
    def task_vector_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for item in self.tensors for t in item.taus)
