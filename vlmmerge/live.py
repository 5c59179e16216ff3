"""Merge candidates materialised in place in one loaded model: no disk writes, no reload.

`LiveMerge` loads the host model once and keeps every source's language-side tensors in memory
(in their stored dtype, as read from disk). `apply(recipe)` merges each language tensor with the
same code path as `vlmmerge merge` (`engine.merge_tensor`) and copies the result into the
model's parameters, cast to the model's dtype the way the merge writer casts to the output dtype
(round to nearest). The live model holds the output dtype of the recipes it applies (`dtype:`,
else the host's stored dtype), so it holds exactly the tensors that `vlmmerge merge` writes for
the same recipe; a recipe with another output dtype is refused.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vlmmerge.engine import MergePlan, Source, merge_tensor, plan_merge
from vlmmerge.errors import VlmMergeError
from vlmmerge.recipe import Recipe


class CachedSource(Source):
    """A Source whose tensors, once read, stay in memory (stored dtype)."""

    def __init__(self, source: Source):
        super().__init__(source.ref, source.checkpoint, source.anatomy)
        self._cache: dict[str, torch.Tensor] = {}

    def tensor(self, name: str) -> torch.Tensor:
        value = self._cache.get(name)
        if value is None:
            value = self._cache[name] = super().tensor(name)
        return value

    @property
    def cached_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._cache.values())


@dataclass
class LiveMerge:
    """One loaded host model whose language side is overwritten by each candidate recipe."""

    refs: Sequence[str]  # every model a candidate may use (base included)
    host_ref: str
    device: str = "cpu"
    dtype: torch.dtype | None = None  # None: the host's stored dtype (what a recipe without `dtype:` writes)
    load_processor: bool = True  # False: weights only (benchmarks, tuning without generation)
    sources: dict[str, CachedSource] = field(init=False)
    model: torch.nn.Module = field(init=False)
    processor: object = field(init=False)
    last_apply_seconds: float = field(init=False, default=0.0)
    _checked: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.sources = {ref: CachedSource(Source.open(ref)) for ref in dict.fromkeys([self.host_ref, *self.refs])}
        host_path = self.sources[self.host_ref].checkpoint.path
        if self.dtype is None:
            self.dtype = self.sources[self.host_ref].checkpoint.dtype
        if self.load_processor:
            from vlmmerge.evaluation import load_model_for_eval

            self.model, self.processor = load_model_for_eval(str(host_path), device=self.device, dtype=self.dtype)
        else:
            from vlmmerge.checkpoint import model_class_for

            model_class = model_class_for(self.sources[self.host_ref].checkpoint.config)
            self.model = model_class.from_pretrained(host_path, dtype=self.dtype).to(self.device)
            self.processor = None
        self.model.eval()
        self._params = dict(self.model.named_parameters(remove_duplicate=False))

    def _open(self, ref: str) -> Source:
        try:
            return self.sources[ref]
        except KeyError:
            raise VlmMergeError(f"model {ref!r} was not loaded into this live merge (loaded: {list(self.sources)})") from None

    def plan(self, recipe: Recipe) -> MergePlan:
        if recipe.host not in (None, self.host_ref):
            raise VlmMergeError(f"recipe host {recipe.host!r} differs from the live model's host {self.host_ref!r}")
        recipe = recipe.model_copy(update={"host": self.host_ref})
        plan = plan_merge(recipe, open_source=self._open, check_compatibility=not self._checked)
        self._checked = True
        if plan.output_dtype != self.dtype:
            raise VlmMergeError(
                f"recipe writes {_name(plan.output_dtype)} tensors but the live model holds {_name(self.dtype)}; "
                f"set the recipe's dtype to {_name(self.dtype)} or load the live model in {_name(plan.output_dtype)}"
            )
        return plan

    @torch.inference_mode()
    def apply(self, recipe: Recipe) -> None:
        """Write the recipe's merged language tensors into the live model, in place."""
        start = time.perf_counter()
        plan = self.plan(recipe)
        for tensor in plan.tensors:
            if not tensor.merged:
                continue
            value = merge_tensor(plan, tensor, device=self.device)
            param = self._params.get(tensor.name)
            if param is None:
                raise VlmMergeError(f"live model has no parameter {tensor.name!r}")
            param.copy_(value.to(device=param.device, dtype=param.dtype))
        self.last_apply_seconds = time.perf_counter() - start

    def materialize(self, recipe: Recipe) -> tuple[torch.nn.Module, object]:
        """The recipe's merge as a ready model (this live model, overwritten) and its processor."""
        self.apply(recipe)
        return self.model, self.processor

    def state_of(self, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        state = self.model.state_dict()
        return {n: state[n].detach().clone() for n in (names or state)}

    @property
    def cached_bytes(self) -> int:
        return sum(s.cached_bytes for s in self.sources.values())

    @property
    def host_path(self) -> Path:
        return self.sources[self.host_ref].checkpoint.path


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
