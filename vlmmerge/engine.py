"""Static merge: plan every output tensor, resolve its parameters, call the method, stream to disk.

Planning opens every checkpoint lazily and checks everything that can be checked before a single
tensor is read (host, shapes, vocabularies, method and parameter names), so bad input fails fast
and writes nothing. Execution reads the inputs of one tensor at a time.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vlmmerge.anatomy import Anatomy, compare
from vlmmerge.checkpoint import Checkpoint, PlannedTensor, StreamingSafetensorsWriter, atomic_output_dir
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


@dataclass
class TensorInputs:
    """What the merge of one output tensor reads.

    `host_value` (stored dtype) is read only when the output keeps some of the host's values: a
    tensor that is not merged, or a vocabulary tensor whose extra or special-token rows stay the
    host's. `base` and `members` are the method's inputs, in the compute dtype, on the device.
    """

    host_value: torch.Tensor | None
    base: torch.Tensor | None = None
    members: list[torch.Tensor] = field(default_factory=list)


def _keeps_host_rows(plan: MergePlan, tensor: TensorPlan) -> bool:
    rows = tensor.merged_rows
    if rows is None:
        return False
    return bool(tensor.host_rows) or rows < plan.host.checkpoint.info(tensor.name).shape[0]


# Methods whose kernels compute in float32 from half-precision inputs themselves (each input is
# promoted element by element inside the first operation that reads it, bit for bit what an
# explicit conversion gives; tests/test_engine_streaming.py checks it). With the default float32
# compute dtype their half-precision inputs are passed as stored: half the memory held per input
# and one conversion pass fewer.
HALF_INPUT_METHODS = frozenset(
    {"linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear"}
)


def input_dtype(plan: MergePlan, stored: torch.dtype) -> torch.dtype | None:
    """The dtype a method input is handed over in: the compute dtype, or the stored half precision
    for methods that promote it themselves (see HALF_INPUT_METHODS)."""
    compute_dtype = parse_dtype(plan.recipe.options.compute_dtype)
    if (
        compute_dtype == torch.float32
        and stored in (torch.bfloat16, torch.float16)
        and plan.method.name in HALF_INPUT_METHODS
    ):
        return stored
    return compute_dtype


def read_tensor_inputs(plan: MergePlan, tensor: TensorPlan, device: str = "cpu") -> TensorInputs:
    """Read (and convert for the method) everything `combine_tensor_inputs` needs for one tensor."""
    if not tensor.merged:
        return TensorInputs(plan.host.tensor(tensor.name))
    host_value = plan.host.tensor(tensor.name) if _keeps_host_rows(plan, tensor) else None
    rows = tensor.merged_rows

    def load(source: Source) -> torch.Tensor:
        value = source.lm_tensor(tensor.lm_name)
        if rows is not None:
            value = value[:rows]  # a view: a conversion below makes the only copy
        return value.to(device=device, dtype=input_dtype(plan, value.dtype))

    base = load(plan.base) if plan.base is not None else None
    return TensorInputs(host_value, base, [load(m.source) for m in plan.members])


def combine_tensor_inputs(plan: MergePlan, tensor: TensorPlan, inputs: TensorInputs, device: str = "cpu") -> torch.Tensor:
    """Run the method on inputs read by `read_tensor_inputs`; the value `merge_tensor` returns."""
    if not tensor.merged:
        return inputs.host_value
    generator = None
    if plan.method.random:
        generator = torch.Generator(device=device).manual_seed(tensor_seed(plan.recipe.seed, tensor.name))
    merged = plan.method.merge(inputs.base, inputs.members, plan.member_params(tensor), plan.global_params(tensor), generator)
    merged = merged.to("cpu")
    if inputs.host_value is not None:
        # Rows past the shared vocabulary and the host's special-token rows stay the host's.
        full = inputs.host_value.to(merged.dtype, copy=True)
        host_rows = list(tensor.host_rows)
        keep = full[host_rows] if host_rows else None  # advanced indexing copies
        full[: tensor.merged_rows] = merged
        if keep is not None:
            full[host_rows] = keep
        merged = full
    return merged


def merge_tensor(plan: MergePlan, tensor: TensorPlan, device: str = "cpu") -> torch.Tensor:
    """The merged value of one output tensor (float32 unless compute_dtype says otherwise), on CPU."""
    return combine_tensor_inputs(plan, tensor, read_tensor_inputs(plan, tensor, device), device)


@dataclass
class MergeResult:
    out_dir: Path
    tensors: int
    bytes_written: int
    merged_tensors: int


def default_threads() -> int:
    """Worker threads for `run_merge`: the usable cores, at most 8 (memory bandwidth saturates)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def output_layout(plan: MergePlan) -> list[PlannedTensor]:
    """Every output tensor's on-disk name, shape and dtype, known before any is merged."""
    checkpoint = plan.host.checkpoint
    layout = []
    for tensor in plan.tensors:
        info = checkpoint.info(tensor.name)
        floating = tensor.merged or info.dtype.is_floating_point
        layout.append(PlannedTensor(checkpoint.mapper.to_disk(tensor.name), info.shape, plan.output_dtype if floating else info.dtype))
    return layout


def _working_set_bytes(plan: MergePlan, tensor: TensorPlan) -> int:
    """A generous estimate of the memory one tensor's merge holds at its peak."""
    info = plan.host.checkpoint.info(tensor.name)
    if not tensor.merged:
        return 2 * info.numel * info.dtype.itemsize
    itemsize = (parse_dtype(plan.recipe.options.compute_dtype) or torch.float32).itemsize
    inputs = len(plan.members) + (plan.base is not None)
    if _merges_in_slices(plan, tensor, plan.recipe.options.device):
        # the mapped inputs, plus a few slices
        return info.numel * info.dtype.itemsize * inputs + 8 * _SLICE_ELEMENTS * max(itemsize, 4) * (inputs + 2)
    # inputs in compute dtype, one delta per model, masks/scratch, result, output copy
    return info.numel * max(itemsize, 4) * (2 * inputs + 4)


def memory_budget(plan: MergePlan, workers: int) -> int:
    """How many bytes of estimated working sets may be in flight at once.

    Room for `workers` typical tensors, but never more than the largest tensor alone needs: the
    largest one (usually the embedding or the head) then runs by itself, so the peak is set by
    it and not by it plus others. Capped at half the available memory.
    """
    estimates = sorted(_working_set_bytes(plan, t) for t in plan.tensors)
    if not estimates:
        return 0
    largest, typical = estimates[-1], estimates[len(estimates) // 2]
    budget = max(largest, workers * typical)
    available = _available_memory()
    if available is not None:
        budget = max(largest, min(budget, available // 2))
    return budget


def _all_finite(value: torch.Tensor) -> bool:
    if value.numel() == 0:
        return True
    try:
        low, high = torch.aminmax(value)  # one pass, propagates NaN; much cheaper than isfinite().all()
    except (RuntimeError, NotImplementedError):  # dtypes without aminmax (float8)
        return bool(torch.isfinite(value).all())
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        import ctypes

        return ctypes.CDLL(None).malloc_trim  # glibc
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _find_malloc_trim()


# Methods whose value at each element depends only on the inputs at that element (their
# parameters are per tensor): on CPU they run on cache-sized flat slices of the inputs, written
# out slice by slice, instead of on whole tensors. Same bits: the kernels are elementwise and
# every slice is a multiple of the SIMD width, so each element takes the same code path
# (tests/test_engine_streaming.py compares with `merge_tensor`).
ELEMENTWISE_METHODS = frozenset({"linear", "task_arithmetic"})
_SLICE_ELEMENTS = 1 << 18


def _merges_in_slices(plan: MergePlan, tensor: TensorPlan, device: str) -> bool:
    return (
        tensor.merged
        and plan.method.name in ELEMENTWISE_METHODS
        and not plan.method.random
        and torch.device(device).type == "cpu"
        and not _keeps_host_rows(plan, tensor)
    )


def _merged_slices(plan: MergePlan, tensor: TensorPlan, device: str) -> Iterator[torch.Tensor]:
    inputs = read_tensor_inputs(plan, tensor, device)
    base = inputs.base.reshape(-1) if inputs.base is not None else None
    members = [m.reshape(-1) for m in inputs.members]
    member_params, global_params = plan.member_params(tensor), plan.global_params(tensor)
    compute_dtype = parse_dtype(plan.recipe.options.compute_dtype)
    numel = members[0].numel() if members else (base.numel() if base is not None else 0)

    def piece(value: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        # Converted here, in cache: same values as the kernel's own promotion, on a faster path.
        return value[start:stop].to(compute_dtype)

    for start in range(0, numel, _SLICE_ELEMENTS):
        stop = min(start + _SLICE_ELEMENTS, numel)
        yield plan.method.merge(
            None if base is None else piece(base, start, stop),
            [piece(m, start, stop) for m in members],
            member_params,
            global_params,
            None,
        )


def _merge_and_write(plan: MergePlan, tensor: TensorPlan, planned: PlannedTensor, writer: StreamingSafetensorsWriter, device: str) -> None:
    def check(chunk: torch.Tensor) -> None:
        if chunk.is_floating_point() and not _all_finite(chunk):
            raise MergeNumericsError(
                f"merged tensor {tensor.name!r} contains NaN or Inf (method {plan.method.name}); "
                "check the inputs and the weights/densities"
            )

    # Converted to the output dtype chunk by chunk while writing; the check sees the converted
    # values (a finite float32 beyond the output dtype's range becomes Inf and is caught).
    if _merges_in_slices(plan, tensor, device):
        writer.write_parts(planned.name, _merged_slices(plan, tensor, device), convert=True, check=check)
    else:
        value = merge_tensor(plan, tensor, device=device)
        writer.write(planned.name, value, convert=True, check=check)
        del value
    if _MALLOC_TRIM is not None:
        # glibc keeps freed blocks below its mmap threshold in per-thread arenas; without this the
        # resident set grows by what the previous tensors left there (~15% at the peak).
        _MALLOC_TRIM(0)


def execute_plan(
    plan: MergePlan,
    writer: StreamingSafetensorsWriter,
    layout: Sequence[PlannedTensor],
    *,
    device: str = "cpu",
    workers: int = 1,
    memory_budget: int | None = None,
    progress: bool = True,
) -> None:
    """Merge every planned tensor and hand it to `writer`, `workers` tensors at a time.

    Each worker reads one tensor's inputs, merges, converts and writes it, then drops it, so
    reading, math and writing of different tensors overlap. A new tensor starts only while the
    estimated working sets in flight stay within `memory_budget` (a tensor too large for it runs
    alone). Results do not depend on the order or the number of workers.
    """
    budget = memory_budget if memory_budget is not None else float("inf")
    in_flight: dict[Future, int] = {}
    used = 0
    bar = tqdm(total=len(layout), desc="merging", unit="tensor", disable=not progress)
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="vlmmerge-merge")

    def collect(block_until: Callable[[], bool]) -> None:
        nonlocal used
        while in_flight and block_until():
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                used -= in_flight.pop(future)
                future.result()  # re-raises a worker's error here
                bar.update()

    try:
        for tensor, planned in zip(plan.tensors, layout):
            cost = _working_set_bytes(plan, tensor)
            collect(lambda: len(in_flight) >= workers or used + cost > budget)
            in_flight[pool.submit(_merge_and_write, plan, tensor, planned, writer, device)] = cost
            used += cost
        collect(lambda: True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()


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
    """Merge as the recipe says and write a Hugging Face folder at `out_dir` (all or nothing).

    `threads` tensors are merged at once (default: the usable cores, at most 8), each with
    single-threaded torch ops: coarse-grained parallelism that needs no synchronisation inside
    an operation. Each merged tensor is streamed into its place in the output shards and dropped,
    so memory holds only the tensors in flight.
    """
    # Planning imports model code and builds meta-device models: many objects, no cycles worth
    # collecting. The cyclic collector stays off for the merge (about 15% of planning time).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _run_merge(recipe, out_dir, overwrite, device, threads, max_shard_size, progress, recipe_text)
    finally:
        if collecting:
            gc.enable()


def _run_merge(
    recipe: Recipe | str | Path | dict,
    out_dir: str | Path,
    overwrite: bool,
    device: str | None,
    threads: int | None,
    max_shard_size: str | None,
    progress: bool,
    recipe_text: str | None,
) -> MergeResult:
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    options = recipe.options.model_copy(
        update={k: v for k, v in dict(device=device, threads=threads, max_shard_size=max_shard_size).items() if v is not None}
    )
    recipe = recipe.model_copy(update={"options": options})
    if options.threads is not None and options.threads < 1:
        raise VlmMergeError(f"threads must be at least 1, got {options.threads}")
    if options.device.startswith("cuda") and not torch.cuda.is_available():
        raise VlmMergeError(f"device {options.device!r} requested but CUDA is not available")
    plan = plan_merge(recipe)
    layout = output_layout(plan)
    workers = options.threads or default_threads()
    budget = memory_budget(plan, workers)
    intra_op_threads = torch.get_num_threads()
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        writer = StreamingSafetensorsWriter(tmp, layout, options.max_shard_size, metadata={"merged_by": "vlmmerge"})
        try:
            torch.set_num_threads(1)
            execute_plan(plan, writer, layout, device=options.device, workers=workers, memory_budget=budget, progress=progress)
        finally:
            torch.set_num_threads(intra_op_threads)
            writer.close()
        writer.finish()
        write_side_files(plan, tmp, recipe_text or recipe.to_yaml())
        total = writer.total_bytes
    merged_count = sum(tensor.merged for tensor in plan.tensors)
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
