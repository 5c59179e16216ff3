"""Static merge: plan every output tensor, resolve its parameters, call the method, stream to disk.

Planning opens every checkpoint lazily and checks everything that can be checked before a single
tensor is read (host, shapes, vocabularies, method and parameter names), so bad input fails fast
and writes nothing. Execution reads the inputs of one tensor at a time.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vlmmerge.anatomy import Anatomy, compare
from vlmmerge.checkpoint import Checkpoint, ShardedSafetensorsWriter, atomic_output_dir
from vlmmerge.errors import IncompatibleModelsError, MergeNumericsError, RecipeError, VlmMergeError
from vlmmerge.methods import MergeMethod, get_method
from vlmmerge.recipe import ModelEntry, Recipe, load_recipe, resolve_setting

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}

# Files copied from the tokenizer source and from the host (processor, generation settings).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
HOST_FILES = (
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "image_processor_config.json",
)


def parse_dtype(name: str | None, where: str = "dtype") -> torch.dtype | None:
    if name is None:
        return None
    try:
        return DTYPES[str(name).lower()]
    except KeyError:
        raise RecipeError(f"{where}: unknown dtype {name!r}; use one of {sorted(set(DTYPES))}") from None


def tensor_seed(seed: int, name: str) -> int:
    """A per-tensor seed: random masks depend on (seed, tensor), never on processing order."""
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


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
        anatomy = self.anatomy
        runtime = anatomy.lm_view.get(lm_name)
        if runtime is None and anatomy.tied and lm_name == anatomy.to_lm_name(anatomy.head_name):
            runtime = anatomy.embed_name
        if runtime is None:
            raise IncompatibleModelsError(f"{self.ref}: has no tensor {lm_name!r}")
        return self.tensor(runtime)


@dataclass
class TensorPlan:
    name: str  # host runtime name
    component: str
    lm_name: str | None = None  # set for language-side tensors, which are merged
    t: float = 0.0  # relative depth for per-layer parameter lists
    merged_rows: int | None = None  # vocabulary tensors: rows [0, merged_rows) are merged
    host_rows: tuple[int, ...] = ()  # rows below merged_rows kept from the host (its special tokens)

    @property
    def merged(self) -> bool:
        return self.lm_name is not None


@dataclass
class Member:
    """A model taking part in the method call (the base is passed separately)."""

    source: Source
    entry: ModelEntry


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

    @property
    def is_vlm(self) -> bool:
        return self.host.anatomy.is_vlm

    def member_params(self, tensor: TensorPlan) -> list[dict[str, Any]]:
        return [resolve_model_params(self.recipe, self.method, m.entry, filter_name(tensor), tensor.t) for m in self.members]

    def global_params(self, tensor: TensorPlan) -> dict[str, Any]:
        return resolve_global_params(self.recipe, self.method, filter_name(tensor), tensor.t)


def filter_name(tensor: TensorPlan) -> str:
    """Parameter filters match the standalone-LM name, as in a mergekit recipe for the text model."""
    return tensor.lm_name or tensor.name


def resolve_model_params(
    recipe: Recipe, method: MergeMethod, entry: ModelEntry, name: str, t: float
) -> dict[str, Any]:
    values = {}
    for key, default in method.model_params.items():
        if key in entry.parameters:
            value = resolve_setting(entry.parameters[key], name, t)
        elif key in recipe.parameters:
            value = resolve_setting(recipe.parameters[key], name, t)
        else:
            value = None
        if value is None:
            value = default
        if value is None:
            raise RecipeError(
                f"merge_method {method.name}: parameter {key!r} is required for model {entry.model!r} "
                f"(tensor {name})"
            )
        values[key] = value
    return values


def resolve_global_params(recipe: Recipe, method: MergeMethod, name: str, t: float) -> dict[str, Any]:
    values = {}
    for key, default in method.global_params.items():
        value = resolve_setting(recipe.parameters[key], name, t) if key in recipe.parameters else None
        values[key] = default if value is None else value
    return values


def validate_parameter_names(recipe: Recipe, method: MergeMethod) -> None:
    known_model = set(method.model_params)
    known_global = set(method.global_params) | known_model | {"int8_mask"}
    for key in recipe.parameters:
        if key not in known_global:
            raise RecipeError(
                f"parameters.{key}: unknown parameter for merge_method {method.name} "
                f"(known: {sorted(known_global)})"
            )
    for index, entry in enumerate(recipe.models):
        for key in entry.parameters:
            if key not in known_model:
                raise RecipeError(
                    f"models[{index}].parameters.{key} ({entry.model}): unknown per-model parameter for "
                    f"merge_method {method.name} (known: {sorted(known_model)})"
                )


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
    for entry in recipe.models:
        if method.takes_base and entry.model == recipe.base_model:
            continue
        members.append(Member(sources[entry.model], entry))
    return members


def check_model_count(method: MergeMethod, count: int) -> None:
    if count < method.min_models or (method.max_models is not None and count > method.max_models):
        expected = f"at least {method.min_models}" if method.max_models is None else (
            f"{method.min_models} to {method.max_models}" if method.max_models != method.min_models
            else f"exactly {method.min_models}"
        )
        raise RecipeError(f"merge_method {method.name}: merges {expected} models (base included), the recipe gives {count}")


def plan_merge(
    recipe: Recipe | str | Path | dict,
    open_source: Callable[[str], Source] = Source.open,
    check_compatibility: bool = True,
) -> MergePlan:
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    method = get_method(recipe.merge_method)
    if method.needs_base and not recipe.base_model:
        raise RecipeError(f"base_model: merge_method {method.name} needs a `base_model`")
    validate_parameter_names(recipe, method)
    tokenizer_ref = recipe.tokenizer_ref
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
    for other in {id(s): s for s in participants}.values():
        if check_compatibility and other is not host:
            compare(host.anatomy, other.anatomy).raise_if_incompatible()

    if tokenizer_ref in (None, "base", "union"):
        if tokenizer_ref == "union":
            raise RecipeError("tokenizer_source: 'union' is not supported; name a model or use 'base'")
        tokenizer_source = host if host.anatomy.is_vlm else (sources.get(recipe.base_model or "") or host)
    else:
        tokenizer_source = sources[tokenizer_ref]

    shared_rows = min(s.anatomy.vocab_rows for s in [host, *participants])
    special_rows = tuple(sorted(r for r in set(host.anatomy.special_token_ids.values()) if r < shared_rows))
    tensors = [plan_tensor(host.anatomy, name, shared_rows, special_rows) for name in host.checkpoint.names]
    output_dtype = parse_dtype(recipe.output_dtype) or host.checkpoint.dtype
    parse_dtype(recipe.options.compute_dtype, "options.compute_dtype")
    return MergePlan(recipe, method, host, base, members, tokenizer_source, tensors, output_dtype, sources)


def plan_tensor(anatomy: Anatomy, name: str, shared_rows: int, special_rows: tuple[int, ...]) -> TensorPlan:
    component = anatomy.component(name)
    if component not in ("embeddings", "language", "head"):
        return TensorPlan(name, component)
    layer = anatomy.layer_index(name)
    layers = anatomy.num_layers
    if layer is None:
        t = 0.0  # embeddings, final norm, head (mergekit's rule)
    else:
        t = layer / (layers - 1) if layers > 1 else 1.0
    plan = TensorPlan(name, component, lm_name=anatomy.to_lm_name(name), t=t)
    if component in ("embeddings", "head"):
        plan.merged_rows = shared_rows
        plan.host_rows = special_rows
    return plan


def merge_tensor(plan: MergePlan, tensor: TensorPlan, device: str = "cpu") -> torch.Tensor:
    """The merged value of one output tensor (float32 unless compute_dtype says otherwise), on CPU."""
    host_value = plan.host.tensor(tensor.name)
    if not tensor.merged:
        return host_value
    compute_dtype = parse_dtype(plan.recipe.options.compute_dtype)
    rows = tensor.merged_rows

    def load(source: Source) -> torch.Tensor:
        value = source.lm_tensor(tensor.lm_name)
        if rows is not None:
            value = value[:rows]
        return value.to(device=device, dtype=compute_dtype)

    base = load(plan.base) if plan.base is not None else None
    inputs = [load(m.source) for m in plan.members]
    generator = None
    if plan.method.random:
        generator = torch.Generator(device=device).manual_seed(tensor_seed(plan.recipe.seed, tensor.name))
    merged = plan.method.merge(base, inputs, plan.member_params(tensor), plan.global_params(tensor), generator)
    merged = merged.to("cpu")
    if rows is not None:
        full = host_value.to(merged.dtype).clone()
        keep = full[list(tensor.host_rows)].clone() if tensor.host_rows else None
        full[:rows] = merged
        if keep is not None:
            full[list(tensor.host_rows)] = keep
        merged = full
    return merged


@dataclass
class MergeResult:
    out_dir: Path
    tensors: int
    bytes_written: int
    merged_tensors: int


def run_merge(
    recipe: Recipe | str | Path | dict,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    device: str | None = None,
    threads: int | None = None,
    max_shard_size: str | None = None,
    progress: bool = True,
    recipe_text: str | None = None,
) -> MergeResult:
    """Merge as the recipe says and write a Hugging Face folder at `out_dir` (all or nothing)."""
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    options = recipe.options.model_copy(
        update={k: v for k, v in dict(device=device, threads=threads, max_shard_size=max_shard_size).items() if v is not None}
    )
    recipe = recipe.model_copy(update={"options": options})
    if options.threads:
        torch.set_num_threads(options.threads)
    if options.device.startswith("cuda") and not torch.cuda.is_available():
        raise VlmMergeError(f"device {options.device!r} requested but CUDA is not available")
    plan = plan_merge(recipe)
    host_mapper = plan.host.checkpoint.mapper
    merged_count = 0
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        writer = ShardedSafetensorsWriter(tmp, options.max_shard_size, metadata={"merged_by": "vlmmerge"})
        for tensor in tqdm(plan.tensors, desc="merging", unit="tensor", disable=not progress):
            value = merge_tensor(plan, tensor, device=options.device)
            out_dtype = plan.output_dtype if value.is_floating_point() else value.dtype
            value = value.to(out_dtype)
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise MergeNumericsError(
                    f"merged tensor {tensor.name!r} contains NaN or Inf (method {plan.method.name}); "
                    "check the inputs and the weights/densities"
                )
            writer.add(host_mapper.to_disk(tensor.name), value)
            merged_count += tensor.merged
        writer.finish()
        write_side_files(plan, tmp, recipe_text or recipe.to_yaml())
        total = writer.total_bytes
    return MergeResult(Path(out_dir), len(plan.tensors), total, merged_count)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def write_side_files(plan: MergePlan, folder: Path, recipe_yaml: str) -> None:
    host_dir = plan.host.checkpoint.path
    config = json.loads((host_dir / "config.json").read_text())
    dtype_name = _dtype_name(plan.output_dtype)
    config["dtype"] = dtype_name
    if "torch_dtype" in config:
        config["torch_dtype"] = dtype_name
    (folder / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    for name in HOST_FILES:
        if (host_dir / name).exists():
            shutil.copy2(host_dir / name, folder / name)
    tok_dir = plan.tokenizer_source.checkpoint.path
    for name in TOKENIZER_FILES:
        if (tok_dir / name).exists():
            shutil.copy2(tok_dir / name, folder / name)
    (folder / "recipe.yaml").write_text(recipe_yaml, encoding="utf-8")
    (folder / "README.md").write_text(model_card(plan, recipe_yaml), encoding="utf-8")


def model_card(plan: MergePlan, recipe_yaml: str) -> str:
    from vlmmerge import __version__

    refs = plan.recipe.model_refs
    front = ["---", "library_name: transformers", "tags:", "- merge", "- vlmmerge", "base_model:"]
    front += [f"- {ref}" for ref in refs]
    front.append("---")
    kind = "vision-language model" if plan.is_vlm else "causal language model"
    lines = [
        *front,
        "",
        f"# {plan.recipe.name or 'Merged model'}",
        "",
        f"A {kind} merged with [vlmmerge](https://pypi.org/project/vlmmerge/) {__version__} "
        f"using **{plan.method.name}** (seed {plan.recipe.seed}).",
        "",
        f"- Architecture and config: `{plan.host.ref}` ({plan.host.checkpoint.architecture})",
    ]
    if plan.is_vlm:
        lines.append("- Vision encoder, projector, extra vocabulary rows and special-token rows: copied unchanged from the host")
    lines += [
        f"- Tokenizer: `{plan.tokenizer_source.ref}`",
        f"- Models: {', '.join(f'`{r}`' for r in refs)}",
        "",
        "## Recipe",
        "",
        "Reproduce with `vlmmerge merge recipe.yaml OUT_DIR`:",
        "",
        "```yaml",
        recipe_yaml.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)
