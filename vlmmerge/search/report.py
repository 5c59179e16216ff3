"""Pictures and tables of an evolve run: the fitness curve and the test-split comparison."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

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
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def write_test_report(run, best_recipe, out_dir: Path) -> dict[str, Any]:
    """Evaluate sources, untuned baselines and the evolved merge on the test split; write the report."""
    from vlmmerge.evaluation import paired_bootstrap_diff, write_comparison_report

    config = run.config
    evaluator = run.evaluator(config.test, split="test")
    live = run.start_live()
    results = {}
    for name, recipe in run.comparison_recipes(best_recipe).items():
        live.apply(recipe)
        results[name] = evaluator.evaluate(live.model, live.processor, model_name=name)
    write_comparison_report(results, out_dir, title="Evolved merge vs sources and untuned baselines (test split)")
    evolved = results["evolved"]
    from vlmmerge.search.evolve import task_name

    # the metric a test task names in the recipe (e.g. accuracy_in_language), else the task's primary
    chosen = {task_name(ref.task): ref.metric for ref in config.test.tasks if ref.metric}
    summary: dict[str, Any] = {"report": str(out_dir / "comparison.html"), "scores": {}, "evolved_vs": {}}
    for task in evolved.scores:
        metric = chosen.get(task) or evolved.primary_metrics[task]
        summary["scores"][task] = {
            name: {"value": r.scores[task][metric], "ci": r.ci.get(task, {}).get(metric), "metric": metric}
            for name, r in results.items()
        }
        comparisons = {}
        for name, other in results.items():
            if name == "evolved":
                continue
            diff = paired_bootstrap_diff(
                evolved.per_item(task, metric), other.per_item(task, metric), seed=config.seed
            )
            comparisons[name] = {"diff": diff.mean_diff, "ci": [diff.lo, diff.hi], "significant": diff.lo > 0}
        summary["evolved_vs"][task] = comparisons
        summary.setdefault("beats_all", {})[task] = all(c["significant"] for c in comparisons.values())
    _append_evolved_section(out_dir, summary)
    return summary


def _append_evolved_section(out_dir: Path, summary: dict[str, Any]) -> None:
    """Add 'evolved minus each other model' (paired bootstrap, the recipe's test metric) to the report."""
    import html

    lines = ["", "## Evolved against every other model (paired bootstrap, metric named in the recipe's test tasks)", "",
             "| task | metric | model | evolved - model | 95% CI | evolved better |", "|---|---|---|---:|---|---|"]
    rows_html = []
    for task, comparisons in summary["evolved_vs"].items():
        metric = next(iter(summary["scores"][task].values()))["metric"]
        for name, c in comparisons.items():
            verdict = "yes" if c["significant"] else "no"
            lines.append(f"| {task} | {metric} | {name} | {c['diff']:+.2f} | [{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}] | {verdict} |")
            rows_html.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
                task, metric, name, f"{c['diff']:+.2f}", f"[{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}]", verdict)) + "</tr>")
    md = out_dir / "comparison.md"
    md.write_text(md.read_text(encoding="utf-8").rstrip("\n") + "\n" + "\n".join(lines) + "\n", encoding="utf-8")
    page = out_dir / "comparison.html"
    section = ("<h2>Evolved against every other model (paired bootstrap, the recipe's test metric)</h2><table>"
               "<tr><th>task</th><th>metric</th><th>model</th><th>evolved - model</th><th>95% CI</th>"
               "<th>evolved better</th></tr>" + "".join(rows_html) + "</table>")
    text = page.read_text(encoding="utf-8")
    text = text.replace("</body>", section + "</body>") if "</body>" in text else text + section
    page.write_text(text, encoding="utf-8")
