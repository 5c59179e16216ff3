"""Pictures and tables of an evolve run: the fitness curve and the test-split comparison.

Pure writers: they get journal entries and evaluation results, and evaluate nothing themselves.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlmmerge.search.files import atomic_write_bytes
from vlmmerge.search.journal import JournalEntry


def plot_fitness(runs: dict[str, list[JournalEntry]], popsize: int, out: Path) -> Path:
    """Population fitness (dots) and best-so-far (line) per generation, one colour per optimizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    colours = {"cma": "tab:blue", "random": "tab:orange"}
    for name, entries in runs.items():
        finite = [e for e in entries if math.isfinite(e.fitness)]
        ax.scatter([e.index / popsize for e in finite], [e.fitness for e in finite], s=8, alpha=0.35,
                   color=colours.get(name), label=f"{name}: population")
        best, curve = -math.inf, []
        for entry in entries:
            best = max(best, entry.fitness)
            curve.append(best)
        ax.plot([i / popsize for i in range(len(curve))], curve, color=colours.get(name), lw=2, label=f"{name}: best so far")
    ax.set_xlabel(f"generation ({popsize} evaluations each)")
    ax.set_ylabel("fitness (fitness split)")
    ax.set_title("Evolutionary merge: fitness per generation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return atomic_write_bytes(out, buffer.getvalue())


def write_test_report(results: Mapping[str, Any], metrics: Mapping[str, str | None], seed: int, out_dir: Path,
                      figures: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """The test-split comparison of already evaluated models (one must be "evolved"); returns its summary.

    `metrics`: task name -> the metric the recipe's test section names (None: the task's primary).
    The report's one paired-difference table (evolved minus each other model, on that metric) and
    the summary's `evolved_vs` are the same computation. Each model's full result (scores, samples
    with predictions) goes to `models/<slug>/`.
    """
    from vlmmerge.evaluation import save_result, write_comparison_report
    from vlmmerge.evaluation.report import paired_differences

    evolved = results["evolved"]
    chosen = {task: metrics.get(task) or evolved.primary_metrics[task] for task in evolved.scores}
    pairs = [("evolved", name) for name in results if name != "evolved"]
    differences = paired_differences(results, pairs, chosen, seed=seed)
    write_comparison_report(results, out_dir, title="Evolved merge vs sources and untuned baselines (test split)",
                            differences=differences, figures=figures)
    for name, result in results.items():
        save_result(result, out_dir / "models" / slug(name), title=f"{name} (test split)")
    summary: dict[str, Any] = {"report": str(out_dir / "comparison.html"), "scores": {}, "evolved_vs": {}}
    for task, metric in chosen.items():
        summary["scores"][task] = {
            name: {"value": r.scores[task][metric], "ci": r.ci.get(task, {}).get(metric), "metric": metric}
            for name, r in results.items()
        }
        summary["evolved_vs"][task] = {}
    for d in differences:
        summary["evolved_vs"][d.task][d.other] = {"diff": d.diff.mean_diff, "ci": [d.diff.lo, d.diff.hi],
                                                  "significant": d.better}
    summary["beats_all"] = {task: all(c["significant"] for c in by_other.values())
                            for task, by_other in summary["evolved_vs"].items()}
    return summary


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower()
