"""Planning: which output tensors a merge writes, what each one reads and how.

Planning opens every checkpoint lazily and checks everything that can be checked before a single
tensor is read (host, shapes, vocabularies, method and parameter names), so bad input fails fast
and writes nothing. A planned output tensor names what it reads: the merge of one standalone-LM
tensor of every model of the merge (language side), or one tensor of any source, optionally
scaled (everything else, and layer stacks, see `vlmmerge.engine.layers`). The output's layout and
config follow from the plan.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from vlmmerge.anatomy import Anatomy, Compatibility, compare, kept_host_rows
from vlmmerge.anatomy.components import VISUAL, check_visual_shapes, choose_components, merges, model_components, vision_layers
from vlmmerge.checkpoint import Checkpoint
from vlmmerge.engine.job import MergeJob, parse_dtype
from vlmmerge.engine.params import resolve_global_params, resolve_model_params, validate_parameter_names
from vlmmerge.errors import IncompatibleModelsError, RecipeError
from vlmmerge.methods import MergeMethod, get_method
from vlmmerge.recipe import ModelEntry, Recipe
from vlmmerge.vocab import Vocabulary, VocabModel, align_vocabulary, build_vocabulary, tokenizer_settings
from vlmmerge.vocab.build import TokenizerSettings
from vlmmerge.vocab.chat_template import resolve_chat_template


@dataclass
class Source:
    ref: str
    checkpoint: Checkpoint
    anatomy: Anatomy

    @classmethod
    def open(cls, ref: str) -> "Source":
        checkpoint = Checkpoint(ref)
        return cls(ref, checkpoint, Anatomy(checkpoint))

    def tensor(self, name: str) -> torch.Tensor:
        """A tensor by this model's own runtime name."""
        return self.checkpoint.get(name)

    def lm_tensor(self, lm_name: str) -> torch.Tensor:
        """A language-side tensor by standalone-LM name; a tied model's head is its embedding."""
        return self.tensor(self.lm_runtime_name(lm_name))

    def lm_runtime_name(self, lm_name: str) -> str:
        anatomy = self.anatomy
        runtime = anatomy.lm_view.get(lm_name)
        if runtime is None and lm_name in self.checkpoint and anatomy.component(lm_name) in VISUAL:
            runtime = lm_name  # vision / projector tensors merge by their runtime name
        if runtime is None and anatomy.tied and lm_name == anatomy.to_lm_name(anatomy.head_name):
            runtime = anatomy.embed_name
        if runtime is None:
            raise IncompatibleModelsError(f"{self.ref}: has no tensor {lm_name!r}")
        return runtime


@dataclass(frozen=True)
class TensorRead:
    """One stored tensor of one source, optionally scaled."""

    source: str  # a ref of `MergePlan.sources`
    name: str  # that source's runtime name
    scale: float | None = None  # None: the stored value, bit for bit


@dataclass
class TensorPlan:
    name: str  # output runtime name, in the host's layout
    component: str
    lm_name: str | None = None  # merged tensors: the standalone-LM name read from every model of the merge
    t: float = 0.0  # relative depth for per-layer parameter lists
    merged_rows: int | None = None  # vocabulary tensors: rows [0, merged_rows) are merged ...
    host_rows: tuple[int, ...] = ()  # ... except these, kept from the host (its special tokens)
    read: TensorRead | None = None  # tensors that are not merged: where the value comes from
    shape: tuple[int, ...] = ()  # of the output tensor
    dtype: torch.dtype | None = None  # stored dtype of what is read (the output's, for non-floating tensors)

    @property
    def merged(self) -> bool:
        return self.lm_name is not None

    @property
    def numel(self) -> int:
        n = 1
        for dim in self.shape:
            n *= dim
        return n

    def leading_method_rows(self) -> int | None:
        """For a vocabulary tensor whose method rows are its first rows (every host row after
        them), how many; else None."""
        if self.merged_rows is None:
            return None
        count = self.merged_rows - len(set(self.host_rows))
        return count if all(row >= count for row in self.host_rows) else None

    def method_rows(self) -> slice | torch.Tensor | None:
        """The rows of a vocabulary tensor that go to the merge method (None: the whole tensor).

        Rows kept from the host never reach the method, so they cannot sway a whole-tensor
        statistic (TIES' top-k, SLERP's angle, Model Stock's cosine, DARE's rescale).
        """
        if self.merged_rows is None:
            return None
        if not self.host_rows:
            return slice(0, self.merged_rows)
        keep = torch.ones(self.merged_rows, dtype=torch.bool)
        keep[list(self.host_rows)] = False
        return torch.nonzero(keep).reshape(-1)


@dataclass(frozen=True)
class LayerOrigin:
    """Where an output decoder layer comes from: its per-layer config values follow this layer."""

    source: str
    layer: int


@dataclass
class Member:
    """A model taking part in the method call (the base is passed separately)."""

    source: Source
    entry: ModelEntry
    index: int = 0  # position in the recipe's `models:` list: the model's part of its mask seeds


@dataclass
class MergePlan:
    recipe: Recipe
    method: MergeMethod
    host: Source
    base: Source | None
    members: list[Member]
    tokenizer_source: Source
    tensors: list[TensorPlan]
    output_dtype: torch.dtype
    sources: dict[str, Source] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # said in the summary and the model card
    compute_dtype: torch.dtype = torch.float32
    layers: tuple[LayerOrigin, ...] | None = None  # None: the host's own decoder layers, in order
    tied: bool | None = None  # None: as the host (a plan that writes its own head unties it)
    components: tuple[str, ...] = ("language",)  # what merges (`vlmmerge.anatomy.components`); the rest is the host's
    vocabulary: Vocabulary | None = None  # mergekit's re-indexed vocabulary (`tokenizer_source`), None: rows as stored
    chat_template: str | None = None  # the recipe's `chat_template`, resolved; None: the tokenizer source's

    def aligned_vocabulary_inputs(self, base: torch.Tensor | None, members: list[torch.Tensor]):
        """A vocabulary tensor's method inputs re-indexed to `vocabulary` (mergekit's PermutedVocabulary)."""
        refs = ([self.base.ref] if base is not None else []) + [m.source.ref for m in self.members]
        aligned = align_vocabulary(self.vocabulary, dict(zip(refs, [*([base] if base is not None else []), *members])),
                                   self.recipe.base_model)
        return (aligned[refs[0]] if base is not None else None), [aligned[r] for r in refs[len(refs) - len(members):]]

    @property
    def copied_components(self) -> tuple[str, ...]:
        """Mergeable components the host has that this plan copies from it."""
        return tuple(c for c in model_components(self.host.anatomy) if c not in self.components)

    @property
    def is_vlm(self) -> bool:
        return self.host.anatomy.is_vlm

    def member_params(self, tensor: TensorPlan) -> list[dict[str, Any]]:
        return [resolve_model_params(self.recipe, self.method, m.entry, filter_name(tensor), tensor.t) for m in self.members]

    def global_params(self, tensor: TensorPlan) -> dict[str, Any]:
        return resolve_global_params(self.recipe, self.method, filter_name(tensor), tensor.t)

    def keeps_host_rows(self, tensor: TensorPlan) -> bool:
        """Whether a merged vocabulary tensor keeps some of the host's rows (extra or special-token)."""
        rows = tensor.merged_rows
        if rows is None:
            return False
        return bool(tensor.host_rows) or rows < tensor.shape[0]


def filter_name(tensor: TensorPlan) -> str:
    """Parameter filters match the standalone-LM name, as in a mergekit recipe for the text model."""
    return tensor.lm_name or tensor.name


def choose_host(recipe: Recipe, sources: Mapping[str, Source]) -> Source:
    """The VLM named by `host:`, else the first VLM listed; for LLM-only merges the base model, else the first."""
    if recipe.host is not None:
        if recipe.host not in sources:
            raise RecipeError(f"host: {recipe.host!r} is not one of the recipe's models")
        host = sources[recipe.host]
        if not host.anatomy.is_vlm and any(s.anatomy.is_vlm for s in sources.values()):
            raise RecipeError(f"host: {recipe.host!r} is a text-only model but the recipe has a VLM")
        return host
    for entry in recipe.models:
        if sources[entry.model].anatomy.is_vlm:
            return sources[entry.model]
    if recipe.base_model is not None and sources[recipe.base_model].anatomy.is_vlm:
        return sources[recipe.base_model]
    return sources[recipe.base_model] if recipe.base_model else sources[recipe.models[0].model]


def select_members(recipe: Recipe, method: MergeMethod, sources: Mapping[str, Source]) -> list[Member]:
    """The models passed to the method as `tensors`: all listed models, minus the base for base methods."""
    members = []
    for index, entry in enumerate(recipe.models):
        if method.takes_base and entry.model == recipe.base_model:
            continue
        members.append(Member(sources[entry.model], entry, index))
    return members


def check_model_count(method: MergeMethod, count: int) -> None:
    method.check_model_count(count)


def plan_merge(
    recipe: MergeJob | Recipe | str | Path | dict,
    open_source: Callable[[str], Source] = Source.open,
    check_compatibility: bool = True,
) -> MergePlan:
    """The plan of a recipe (a path, YAML text, dict, Recipe or MergeJob: converted here, once)."""
    return plan_job(MergeJob.build(recipe), open_source, check_compatibility)


def plan_job(job: MergeJob, open_source: Callable[[str], Source] = Source.open, check_compatibility: bool = True) -> MergePlan:
    recipe = job.recipe
    method = get_method(recipe.merge_method)
    if method.needs_base and not recipe.base_model:
        raise RecipeError(f"base_model: merge_method {method.name} needs a `base_model`")
    ignored_params = validate_parameter_names(recipe, method)
    settings = tokenizer_settings(recipe.tokenizer_source, recipe.tokenizer)
    tokenizer_ref = settings.source if settings else None
    if tokenizer_ref not in (None, "base", "union") and tokenizer_ref not in recipe.model_refs:
        refs = [*recipe.model_refs, tokenizer_ref]
    else:
        refs = recipe.model_refs
    if recipe.host and recipe.host not in refs:
        refs = [*refs, recipe.host]  # a host may lend only its architecture, vision encoder and projector
    sources = {ref: open_source(ref) for ref in refs}
    host = choose_host(recipe, sources)
    base = sources[recipe.base_model] if (recipe.base_model and method.takes_base) else None
    members = select_members(recipe, method, sources)
    check_model_count(method, len(members) + (base is not None))

    participants = ([base] if base else []) + [m.source for m in members]
    vocabulary = plan_vocabulary(settings, recipe, sources, host)
    reports = compare_with_host(host, participants, check_compatibility, vocabulary=vocabulary is None)
    pairs = [(s.ref, s.anatomy) for s in participants]
    components = choose_components(recipe.components, (host.ref, host.anatomy), pairs)
    if check_compatibility:
        check_visual_shapes((host.ref, host.anatomy), pairs, components)

    if tokenizer_ref in (None, "base", "union"):
        tokenizer_source = host if host.anatomy.is_vlm else (sources.get(recipe.base_model or "") or host)
    else:
        tokenizer_source = sources[tokenizer_ref]

    shared_rows = min(s.anatomy.vocab_rows for s in [host, *participants])
    host_rows = kept_host_rows(host.anatomy, reports, shared_rows)
    tensors = [plan_tensor(host, name, shared_rows, host_rows, components) for name in host.checkpoint.names]
    if vocabulary is not None:
        tensors = [reindexed(t, vocabulary.rows) for t in tensors]
    output_dtype = parse_dtype(recipe.output_dtype) or host.checkpoint.dtype
    notes = list(dict.fromkeys([*ignored_params, *(note for report in reports for note in report.notes())]))
    plan = MergePlan(
        recipe, method, host, base, members, tokenizer_source, tensors, output_dtype, sources, notes,
        compute_dtype=job.options.compute_dtype, components=components, vocabulary=vocabulary,
        chat_template=resolve_chat_template(recipe.chat_template, [sources[r].checkpoint.path for r in recipe.model_refs]),
    )
    if host.anatomy.is_vlm:
        copied = ", ".join(plan.copied_components) or "none"
        plan.notes.append(f"components merged: {', '.join(components)}; copied from the host {host.ref}: {copied}")
    return plan


def plan_vocabulary(settings: TokenizerSettings | None, recipe: Recipe, sources: Mapping[str, Source],
                    host: Source) -> Vocabulary | None:
    """mergekit's output vocabulary for a text-only merge with a tokenizer source; None when there is
    no source, or when every model keeps its own rows (same tokens at the same ids, same row count:
    the stored rows are kept, padding rows included). A VLM host keeps its own vocabulary handling."""
    if settings is None:
        return None
    plain = not settings.tokens and not settings.pad_to_multiple_of
    vlm = host.anatomy.is_vlm
    if vlm and (not plain or settings.source != "union"):
        if plain:
            return None  # a named tokenizer (or the base's) is copied; rows as stored, image-token rows kept
        raise RecipeError("tokenizer.tokens / pad_to_multiple_of: supported for text-only merges; a VLM host "
                          "keeps its own vocabulary (image-token rows)")
    base_ref = recipe.base_model or recipe.models[0].model
    refs = list(dict.fromkeys([*recipe.model_refs, *([settings.source] if settings.source in sources else [])]))
    models = [VocabModel(ref, sources[ref].checkpoint.path, sources[ref].anatomy.vocab_rows) for ref in refs]
    vocabulary = build_vocabulary(settings, base_ref, models)
    merged_refs = recipe.model_refs
    vocabulary.permutations = {r: p for r, p in vocabulary.permutations.items() if r in merged_refs}
    rows = {sources[r].anatomy.vocab_rows for r in merged_refs} | {host.anatomy.vocab_rows}
    if plain and len(rows) == 1 and vocabulary.is_identity(rows.pop()):
        return None
    if vlm:
        raise RecipeError("tokenizer_source: union would re-index the vocabulary of a VLM (its image-token rows); "
                          "supported for text-only merges; name a model or use 'base'")
    return vocabulary


def reindexed(tensor: TensorPlan, rows: int) -> TensorPlan:
    """A vocabulary tensor merged whole over the re-indexed rows."""
    if tensor.component not in ("embeddings", "head") or not tensor.merged:
        return tensor
    return replace(tensor, merged_rows=None, host_rows=(), shape=(rows, *tensor.shape[1:]))


def compare_with_host(host: Source, participants: Sequence[Source], check: bool = True,
                      vocabulary: bool = True) -> list[Compatibility]:
    """`compare(host, model)` for every other model of the merge; with `check`, the first problem
    found raises (before anything is read or written). Tokenizers are read once per model."""
    reports = []
    for other in {id(s): s for s in participants}.values():
        if other is host:
            continue
        report = compare(host.anatomy, other.anatomy, check_tokens=vocabulary)
        if check:
            report.raise_if_incompatible(vocabulary=vocabulary)
        reports.append(report)
    return reports


def relative_depth(layer: int | None, layers: int) -> float:
    """mergekit's t for per-layer parameter lists: layer / (layers - 1); embeddings, norm and head take 0."""
    if layer is None:
        return 0.0
    return layer / (layers - 1) if layers > 1 else 1.0


def plan_tensor(host: Source, name: str, shared_rows: int, special_rows: tuple[int, ...],
                components: Sequence[str] = ("language",)) -> TensorPlan:
    """The host tensor `name`, merged (a component in `components`) or copied (the rest, and buffers)."""
    anatomy = host.anatomy
    info = host.checkpoint.info(name)
    component = anatomy.component(name)
    if not merges(component, components) or (component in VISUAL and not info.dtype.is_floating_point):
        return TensorPlan(name, component, read=TensorRead(host.ref, name), shape=info.shape, dtype=info.dtype)
    if component in VISUAL:
        depth = relative_depth(anatomy.layer_index(name), vision_layers(anatomy)) if component == "vision" else 0.0
        return TensorPlan(name, component, lm_name=name, t=depth, shape=info.shape, dtype=info.dtype)
    t = relative_depth(anatomy.layer_index(name), anatomy.num_layers)
    plan = TensorPlan(name, component, lm_name=anatomy.to_lm_name(name), t=t, shape=info.shape, dtype=info.dtype)
    if component in ("embeddings", "head"):
        plan.merged_rows = shared_rows
        plan.host_rows = special_rows
    return plan
