"""Evaluation of VLMs and LLMs: captioning, VQA, math and CLIP score, offline.

    from vlmmerge.evaluation import load_task, Evaluator, load_model_for_eval, save_result
    ev = Evaluator([load_task("eval_sets/ja_caption")], split="fitness", batch_size=8)
    result = ev.evaluate(model, processor)      # in memory: no reload, no disk writes
    result.primary("ja_caption"); save_result(result, "out/")

Metrics are local `evaluate` modules (``load_metric(name)``); see README.md beside this file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmmerge.errors import VlmMergeError
from vlmmerge.evaluation.catalogue import load_task, load_tasks
from vlmmerge.evaluation.evaluator import Evaluator
from vlmmerge.evaluation.loading import load_model_for_eval
from vlmmerge.evaluation.metrics_registry import METRICS
from vlmmerge.evaluation.numbers import extract_final_number, find_numbers, parse_number
from vlmmerge.evaluation.report import save_result, write_comparison_report
from vlmmerge.evaluation.results import EvalResult
from vlmmerge.evaluation.stats import PairedDiff, bootstrap_ci, paired_bootstrap_diff
from vlmmerge.evaluation.tasks import Item, Task, TaskConfig
from vlmmerge.evaluation.text import (
    FastTextLanguageDetector, get_language_detector, is_japanese, japanese_share, language_verdict,
)

MODULES_DIR = Path(__file__).resolve().parent / "modules"


def metric_module_path(name: str) -> Path:
    path = MODULES_DIR / name / f"{name}.py"
    if not path.is_file():
        available = sorted(p.name for p in MODULES_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise VlmMergeError(f"unknown metric {name!r}; available: {available}")
    return path


def load_metric(name: str, **kwargs: Any):
    """The `evaluate` module shipped with vlmmerge, loaded by path (works offline), in memory."""
    import evaluate

    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(str(metric_module_path(name)), **kwargs)


__all__ = [
    "METRICS", "EvalResult", "Evaluator", "FastTextLanguageDetector", "Item", "PairedDiff", "Task", "TaskConfig",
    "bootstrap_ci", "extract_final_number", "find_numbers", "get_language_detector", "is_japanese",
    "japanese_share", "language_verdict", "load_metric", "load_model_for_eval", "load_task", "load_tasks",
    "metric_module_path", "paired_bootstrap_diff", "parse_number", "save_result", "write_comparison_report",
]
