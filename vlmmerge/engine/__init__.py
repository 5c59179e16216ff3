"""Static merge, in rooms: `job` (recipe + engine options, validated once), `plan` (what every
output tensor reads and how), `params` (per-tensor method parameters), `layers` (layer stacks and
the config that follows from a plan), `compute` (one tensor's value; no files written),
`execute` (workers, memory budget, streaming into shards) and `side_files` (config, tokenizer,
recipe, model card). The in-memory path (`vlmmerge.live`) uses planning and computation only.
"""

from vlmmerge.engine.compute import (
    ELEMENTWISE_METHODS,
    HALF_INPUT_METHODS,
    TensorInputs,
    combine_tensor_inputs,
    input_dtype,
    mask_generators_for,
    merge_tensor,
    read_tensor_inputs,
)
from vlmmerge.engine.execute import MergeResult, execute_plan, memory_budget, output_layout, run_merge, write_merge
from vlmmerge.engine.job import DTYPES, EngineOptions, MergeJob, default_threads, parse_dtype
from vlmmerge.engine.layers import StackedLayer, output_config, stack_plan
from vlmmerge.engine.params import resolve_global_params, resolve_model_params, validate_parameter_names
from vlmmerge.engine.plan import (
    LayerOrigin,
    Member,
    MergePlan,
    Source,
    TensorPlan,
    TensorRead,
    check_model_count,
    choose_host,
    compare_with_host,
    filter_name,
    plan_job,
    plan_merge,
    plan_tensor,
    select_members,
)
from vlmmerge.engine.side_files import HOST_FILES, TOKENIZER_FILES, model_card, write_side_files

__all__ = [
    "DTYPES", "ELEMENTWISE_METHODS", "HALF_INPUT_METHODS", "HOST_FILES", "TOKENIZER_FILES",
    "EngineOptions", "LayerOrigin", "Member", "MergeJob", "MergePlan", "MergeResult", "Source", "StackedLayer",
    "TensorInputs", "TensorPlan", "TensorRead",
    "check_model_count", "choose_host", "combine_tensor_inputs", "compare_with_host", "default_threads",
    "execute_plan", "filter_name", "input_dtype", "mask_generators_for", "memory_budget", "merge_tensor",
    "model_card", "output_config", "output_layout", "parse_dtype", "plan_job", "plan_merge", "plan_tensor",
    "read_tensor_inputs", "resolve_global_params", "resolve_model_params", "run_merge", "select_members",
    "stack_plan", "validate_parameter_names", "write_merge", "write_side_files",
]
