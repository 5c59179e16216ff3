"""Finding an eval set by name: a folder, a .jsonl file, a built-in set under ``eval_sets/``, or a
public benchmark (``benchmarks.py``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmmerge.errors import EvalSetError
from vlmmerge.evaluation.benchmarks import BENCHMARKS, load_benchmark
from vlmmerge.evaluation.tasks import Task, load_task_folder, load_task_jsonl


def eval_sets_dir() -> Path:
    """The built-in sets: $VLMMERGE_EVAL_SETS, else the repository's ``eval_sets/``."""
    env = os.environ.get("VLMMERGE_EVAL_SETS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "eval_sets"


def builtin_task_names() -> list[str]:
    root = eval_sets_dir()
    return sorted(p.name for p in root.iterdir() if (p / "task.yaml").is_file()) if root.is_dir() else []


def load_task(name_or_path: str | os.PathLike, path: str | os.PathLike | None = None, **overrides: Any) -> Task:
    """Load an eval set.

    ``name_or_path``: a folder with task.yaml, a .jsonl file (generic task; pass ``metrics=[...]``),
    a built-in set name (a folder under the repository's ``eval_sets/``), or a benchmark name
    ("ja-vg-vqa-500", "ja-vlm-bench-in-the-wild", "mgsm-ja"); ``path`` points a benchmark at a
    local copy. ``overrides`` replace task.yaml fields (e.g. ``generation={...}``, ``metrics=[...]``).
    """
    key = str(name_or_path)
    if key.lower() in BENCHMARKS:
        return load_benchmark(key.lower(), path=path, **overrides)
    candidate = Path(key).expanduser()
    if candidate.is_dir():
        return load_task_folder(candidate, **overrides)
    if candidate.is_file() and candidate.suffix == ".jsonl":
        return load_task_jsonl(candidate, **overrides)
    builtin = eval_sets_dir() / key
    if "/" not in key and (builtin / "task.yaml").is_file():
        return load_task_folder(builtin, **overrides)
    raise EvalSetError(
        f"no eval set {key!r}: not a folder with task.yaml, not a .jsonl file, not a built-in set "
        f"({', '.join(builtin_task_names()) or 'none found under ' + str(eval_sets_dir())}) and not a benchmark "
        f"({', '.join(sorted(BENCHMARKS))})"
    )


def load_tasks(specs: Sequence[str | Task], **overrides: Any) -> list[Task]:
    tasks = [s if isinstance(s, Task) else load_task(s, **overrides) for s in specs]
    names = [t.name for t in tasks]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise EvalSetError(f"several tasks are named {sorted(dup)}; task names must be unique")
    return tasks
