"""lm-evaluation-harness tasks as objectives of text merges (optional extra: `pip install vlmmerge[lmeval]`).

    evolve:
      objectives:
        - {task: my_arc_copy, kind: lmeval, metric: acc, local_path: lm_tasks/, limit: 200}

`task` is any lm-eval task (or group) name; `local_path` a folder of task yamls handed to lm-eval's
`TaskManager(include_path=...)`, whose `dataset_path: json` + `dataset_kwargs.data_files` point at
local files, so nothing is downloaded (set HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1 as for every
offline run). The live candidate model is wrapped in lm-eval's `HFLM` (no copy, no reload), so
each candidate is scored in place. `metric` is the metric's name (`acc`, `exact_match`, ...; its
filter defaults to `none`: `acc,none`), default: the task's first metric. Values are reported
0-100 like every other objective (lm-eval's fractions times 100).
"""

from __future__ import annotations

from typing import Any

from vlmmerge.errors import RecipeError, VlmMergeError


def _lm_eval():
    try:
        import lm_eval  # noqa: F401
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:  # the optional extra
        raise VlmMergeError("lm-eval objectives need lm-evaluation-harness: pip install 'vlmmerge[lmeval]'") from exc
    return lm_eval, HFLM, TaskManager


def metric_value(results: dict[str, Any], task: str, metric: str | None) -> float:
    """The chosen metric of a task from lm-eval's `results` (key `metric,filter`), times 100."""
    if task not in results:
        raise RecipeError(f"evolve.objectives: lm-eval returned no results for task {task!r} (have {sorted(results)})")
    row = {k: v for k, v in results[task].items() if "," in k and not k.split(",")[0].endswith("_stderr")}
    if metric is None:
        if not row:
            raise RecipeError(f"evolve.objectives: lm-eval task {task!r} reported no metric")
        key = next(iter(row))
    else:
        key = metric if "," in metric else f"{metric},none"
        if key not in row:
            raise RecipeError(f"evolve.objectives: lm-eval task {task!r} has no metric {metric!r} "
                              f"(have {sorted(row)})")
    return 100.0 * float(row[key])


def evaluate_lmeval(model: Any, tokenizer: Any, task: str, metric: str | None = None, include_path: str | None = None,
                    limit: int | None = None, seed: int = 0, batch_size: int = 8) -> float:
    """One lm-eval task on an in-memory model: the metric's value (0-100)."""
    lm_eval, HFLM, TaskManager = _lm_eval()
    tokenizer = getattr(tokenizer, "tokenizer", None) or tokenizer
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    output = lm_eval.simple_evaluate(
        model=lm, tasks=[task], task_manager=manager, limit=limit, random_seed=seed, numpy_random_seed=seed,
        torch_random_seed=seed, fewshot_random_seed=seed, log_samples=False, verbosity="ERROR",
    )
    return metric_value(output["results"], task, metric)


class LmEvalScorer:
    """(model, tokenizer) -> the lm-eval task's metric; checks the extra is installed when built."""

    def __init__(self, task: str, metric: str | None, include_path: str | None, limit: int | None = None,
                 seed: int = 0):
        _lm_eval()
        self.task, self.metric, self.include_path, self.limit, self.seed = task, metric, include_path, limit, seed

    def __call__(self, model: Any, processor: Any) -> float:
        return evaluate_lmeval(model, processor, self.task, self.metric, self.include_path, self.limit, self.seed)
