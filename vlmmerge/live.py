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

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vlmmerge.engine import MergePlan, Source, plan_merge
from vlmmerge.engine.compute import (
    ELEMENTWISE_METHODS, FUSED_IN_PLACE_METHODS, FUSED_METHODS, HALF_INPUT_METHODS, TensorInputs, combine_tensor_inputs,
    merged_slices, merges_in_slices, read_tensor_inputs,
)
from vlmmerge.errors import VlmMergeError
from vlmmerge.methods import fused
from vlmmerge.methods.kept import KeptTaskVector, keeping
from vlmmerge.methods.masks import DrawnUniforms, mask_seed
from vlmmerge.recipe import Recipe


MASK_CACHE_BYTES = 4 * 1024**3
KEPT_CACHE_BYTES = 8 * 1024**3
# Methods whose kernels use kept values (`methods.kept`): tau, sorted |tau|, DELLA ranks; SLERP's angle inputs.
KEPT_METHODS = frozenset({"ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear",
                          "task_arithmetic", "slerp"})
_KEPT_BYTES_PER_ELEMENT = {"slerp": 0}  # what a kept entry may hold per element and model (else tau + sorted |tau|)


def keeps_task_vectors(method: str) -> bool:
    """Whether a live merge of `method` keeps per-element values (task vectors) of its inputs."""
    return method in KEPT_METHODS and _KEPT_BYTES_PER_ELEMENT.get(method, 8) > 0


def _own_memory(model: torch.nn.Module) -> None:
    """Move each CPU parameter out of the checkpoint's file mapping (where `from_pretrained` leaves
    it) into memory of its own, tied parameters staying tied. Every candidate overwrites the
    language parameters, and writing the mapping's copy-on-write pages measured ~1.5x slower than
    writing freshly allocated memory (benchmarks/candidate_speed.py)."""
    copies: dict[tuple, torch.Tensor] = {}
    with torch.no_grad():
        for param in model.parameters():
            if param.device.type != "cpu":
                continue
            key = (param.data_ptr(), param.dtype, tuple(param.shape), param.stride())
            if key not in copies:
                copies[key] = param.data.clone()
            param.data = copies[key]


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
    # random masks' uniforms kept between candidates (4 bytes per element per model; no draw per
    # candidate) up to this many bytes; past it, tensors draw afresh (the same numbers, slower)
    mask_cache_bytes: int = MASK_CACHE_BYTES
    # task vectors in the compute dtype and their sorted magnitudes / DELLA ranks (8 bytes per
    # float32 element per model, charged up front), kept up to this many bytes; past it, computed afresh
    kept_cache_bytes: int = KEPT_CACHE_BYTES
    sources: dict[str, CachedSource] = field(init=False)
    model: torch.nn.Module = field(init=False)
    processor: object = field(init=False)
    last_apply_seconds: float = field(init=False, default=0.0)
    _checked: bool = field(init=False, default=False)
    _uniforms: dict[tuple[int, str, int, str], DrawnUniforms] = field(init=False, default_factory=dict)
    _kept_bytes: int = field(init=False, default=0)
    _task_vectors: dict[tuple, KeptTaskVector] = field(init=False, default_factory=dict)
    _task_vector_bytes: int = field(init=False, default=0)
    _inputs_kept: dict[tuple, TensorInputs] = field(init=False, default_factory=dict)
    _workspace: dict = field(init=False, default_factory=dict)  # fused kernels' buffers, reused per tensor

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
        _own_memory(self.model)
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
        if recipe.slices:
            raise VlmMergeError("a `slices:` recipe changes the layer stack; a live merge keeps the host's layers "
                                "(data-flow candidates run on `vlmmerge.dataflow`'s layer-path runtime)")
        plan = plan_merge(recipe, open_source=self._open, check_compatibility=not self._checked)
        self._checked = True
        if plan.vocabulary is not None:
            raise VlmMergeError("tokenizer_source / tokenizer: this recipe re-indexes the vocabulary; a live merge "
                                "keeps the host's embedding rows: use a tokenizer source whose vocabulary is the "
                                "host's, or `vlmmerge merge`")
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
            param = self._params.get(tensor.name)
            if param is None:
                raise VlmMergeError(f"live model has no parameter {tensor.name!r}")
            host_rows = _patchable_host_rows(plan, tensor)
            if host_rows:
                # an elementwise method's rows do not depend on each other: merge every row straight
                # into the parameter, then put the host's special-token rows back (the same values as
                # merging the other rows only, without gathering and scattering the large rest)
                self._write(plan, dataclasses.replace(tensor, host_rows=()), param)
                kept = plan.host.tensor(tensor.name)[list(host_rows)]
                param[list(host_rows)] = kept.to(plan.compute_dtype).to(device=param.device, dtype=param.dtype)
            else:
                self._write(plan, tensor, param)
        self.last_apply_seconds = time.perf_counter() - start

    def _write(self, plan: MergePlan, tensor, param: torch.Tensor) -> None:
        direct = param.detach() if param.dtype == torch.float32 and param.device.type == "cpu" \
            and param.is_contiguous() else None
        fusable = plan.method.name in FUSED_METHODS or (plan.method.name in FUSED_IN_PLACE_METHODS and direct is not None)
        whole = fusable and fused.enabled(tensor.numel)
        if merges_in_slices(plan, tensor, self.device) and not whole and param.device.type == "cpu" \
                and param.is_contiguous():
            # elementwise methods: cache-sized slices written straight into the parameter (same bits)
            flat, offset = param.detach().view(-1), 0
            into = flat if param.dtype == torch.float32 else None
            for piece in merged_slices(plan, tensor, self.device, into, self._workspace):
                if piece.data_ptr() != flat[offset:].data_ptr():
                    flat[offset:offset + piece.numel()].copy_(piece)
                offset += piece.numel()
            return
        # merge_tensor, on kept inputs; the fused kernels write a float32 parameter in place
        with keeping(self._kept(plan, tensor)), fused.reusing(self._workspace, direct, tensor.leading_method_rows()):
            value = combine_tensor_inputs(plan, tensor, self._inputs(plan, tensor), self.device,
                                          self._generators(plan, tensor))
        if value.data_ptr() != param.data_ptr():
            param.copy_(value.to(device=param.device, dtype=param.dtype))

    def _generators(self, plan: MergePlan, tensor) -> list[DrawnUniforms] | None:
        """A random method's mask generators with kept draws: the uniforms `vlmmerge merge` draws
        for (recipe seed, tensor, model), drawn on first use only."""
        if not plan.method.random:
            return None
        seed, kind = plan.recipe.seed, plan.recipe.mask_generator
        if kind == "counter" and torch.device(self.device).type != "cpu":
            return None  # counter streams drawn on the device itself: cheaper than copying kept draws there
        keys = [(seed, tensor.name, member.index, kind) for member in plan.members]
        new = sum(k not in self._uniforms for k in keys) * tensor.numel * 4
        if new and self._kept_bytes + new > self.mask_cache_bytes:
            return None  # fresh generators of the same seeds: the same masks
        self._kept_bytes += new
        return [self._uniforms.setdefault(k, DrawnUniforms(mask_seed(*k[:3]), kind)).rewind() for k in keys]

    def _kept(self, plan: MergePlan, tensor) -> list[KeptTaskVector] | None:
        """Per member, its kept task vector of this tensor (same inputs, same bits), or None."""
        if plan.method.name not in KEPT_METHODS or plan.base is None \
                or (plan.vocabulary is not None and tensor.component in ("embeddings", "head")):
            return None
        rows = (tensor.merged_rows, tuple(sorted(tensor.host_rows or ())))  # what `method_rows` selects
        keys = [(tensor.name, tensor.lm_name, rows, plan.base.ref, member.source.ref, plan.compute_dtype)
                for member in plan.members]
        new = sum(k not in self._task_vectors for k in keys) * tensor.numel \
            * _KEPT_BYTES_PER_ELEMENT.get(plan.method.name, 8)
        if new and self._task_vector_bytes + new > self.kept_cache_bytes:
            return None
        self._task_vector_bytes += new
        return [self._task_vectors.setdefault(k, KeptTaskVector()) for k in keys]

    def _inputs(self, plan: MergePlan, tensor) -> TensorInputs:
        """`read_tensor_inputs`, kept for vocabulary tensors whose merged rows are gathered (a copy
        per read otherwise); the other inputs are views of the cached source tensors."""
        if not tensor.merged or not tensor.host_rows or plan.vocabulary is not None:
            return read_tensor_inputs(plan, tensor, self.device)
        key = (tensor.name, tensor.merged_rows, tuple(sorted(tensor.host_rows)), plan.method.name in HALF_INPUT_METHODS,
               plan.compute_dtype,
               plan.base.ref if plan.base is not None else None, tuple(m.source.ref for m in plan.members))
        inputs = self._inputs_kept.get(key)
        if inputs is None:
            inputs = read_tensor_inputs(plan, tensor, self.device)
            size = sum(t.numel() * t.element_size() for t in [inputs.base, *inputs.members] if t is not None)
            if self._task_vector_bytes + size > self.kept_cache_bytes:
                return inputs
            self._task_vector_bytes += size
            self._inputs_kept[key] = inputs
        return inputs

    @property
    def kept_bytes(self) -> int:
        """Bytes held by kept task vectors and gathered inputs (see `kept_cache_bytes`)."""
        inputs = sum(t.numel() * t.element_size() for i in self._inputs_kept.values()
                     for t in [i.base, *i.members] if t is not None)
        return inputs + sum(k.nbytes for k in self._task_vectors.values())

    @property
    def mask_bytes(self) -> int:
        return sum(u.nbytes for u in self._uniforms.values())

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


def _patchable_host_rows(plan: MergePlan, tensor) -> tuple[int, ...]:
    """The host rows to restore after merging a whole vocabulary tensor with an elementwise method
    (every model holds all of its rows); () where the rows must be gathered for the method."""
    if plan.method.name not in ELEMENTWISE_METHODS or plan.method.random or plan.vocabulary is not None:
        return ()
    if not tensor.host_rows or tensor.merged_rows != (tensor.shape[0] if tensor.shape else None):
        return ()
    return tuple(tensor.host_rows)


@dataclass(frozen=True)
class LiveMemory:
    """What one live model holds, in bytes, from checkpoint headers (nothing is loaded)."""

    model: int  # the host model, every tensor in the live dtype
    cached: dict[str, int]  # per source: its language-side tensors in their stored dtype
    working: int  # one tensor's merge: every input in float32 plus the output
    masks: int = 0  # kept uniforms of random masks (DARE, DELLA), at most `LiveMerge.mask_cache_bytes`
    kept: int = 0  # kept task vectors (KEPT_METHODS), at most `LiveMerge.kept_cache_bytes`

    @property
    def total(self) -> int:
        return self.model + sum(self.cached.values()) + self.working + self.masks + self.kept

    def describe(self) -> dict[str, object]:
        gib = 1024**3
        return {"total_bytes": self.total, "total_gib": round(self.total / gib, 4), "model_gib": round(self.model / gib, 4),
                "cached_gib": {ref: round(b / gib, 4) for ref, b in self.cached.items()},
                "working_gib": round(self.working / gib, 4), "kept_masks_gib": round(self.masks / gib, 4),
                "kept_task_vectors_gib": round(self.kept / gib, 4)}


def live_memory(sources: dict[str, Source], host_ref: str, refs: Sequence[str],
                dtype: torch.dtype | None = None, masked_models: int = 0,
                mask_cache_bytes: int = MASK_CACHE_BYTES, kept_models: int = 0,
                kept_cache_bytes: int = KEPT_CACHE_BYTES) -> LiveMemory:
    """The memory a `LiveMerge(refs, host_ref, dtype=dtype)` needs, from `sources` (each ref and the
    host, opened: headers only): the host model in `dtype` (None: its stored dtype), the language
    tensors of every model in `refs` as cached (only the vocabulary tensors of a host outside
    `refs`), and the float32 temporaries of merging the largest language tensor."""
    host = sources[host_ref]
    size = torch.empty((), dtype=dtype or host.checkpoint.dtype).element_size()
    infos = [host.checkpoint.info(n) for n in host.checkpoint.names]
    model = sum(i.numel * (size if i.dtype.is_floating_point else i.dtype.itemsize) for i in infos)
    cached, largest = {}, 0
    for ref in dict.fromkeys([host_ref, *refs]):
        anatomy = sources[ref].anatomy
        names = anatomy.language_names
        if ref not in refs:
            names = [n for n in names if n in (anatomy.embed_name, anatomy.head_name)]
        tensors = [sources[ref].checkpoint.info(n) for n in names]
        cached[ref] = sum(t.numel * t.dtype.itemsize for t in tensors)
        largest = max([largest, *(t.numel for t in tensors)])
    working = largest * 4 * (len(refs) + 2)
    host_language = sum(host.checkpoint.info(n).numel for n in host.anatomy.language_names)
    masks = min(mask_cache_bytes, host_language * 4 * masked_models)
    # what `LiveMerge._kept` charges at most, plus the gathered vocabulary rows `_inputs` keeps (base + models)
    vocabulary = sum(host.checkpoint.info(n).numel for n in dict.fromkeys([host.anatomy.embed_name, host.anatomy.head_name])
                     if n is not None and n in host.checkpoint)
    kept = min(kept_cache_bytes, (host_language * 8 + vocabulary * 4) * kept_models + vocabulary * 4) if kept_models else 0
    return LiveMemory(model, cached, working, masks, kept)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
