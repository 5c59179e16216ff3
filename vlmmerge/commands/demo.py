"""`vlmmerge demo [--quick]`: build the miniature world, evolve the VLM and the LLM merge, print test scores."""

from __future__ import annotations

import argparse
from pathlib import Path

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
QUICK = {"budget": 24, "popsize": 6, "compare_random": True}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="the main job on the built-in miniature world: evolve a VLM + Japanese LM and a Japanese + math LM merge",
        description="Builds the miniature world if it is not cached, runs configs/demo-vlm.yaml and "
        "configs/demo-llm.yaml through `vlmmerge evolve`, and prints the test-split table.",
    )
    parser.add_argument("--quick", action="store_true", help="a few minutes: smaller search budget")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder (default runs/demo)")
    parser.add_argument("--configs", type=Path, default=REPO_CONFIGS, help="folder with demo-vlm.yaml and demo-llm.yaml")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from vlmmerge.search import run_evolution
    from vlmmerge.zoo import ensure_zoo

    console = Console()
    console.print("[bold]1/3[/bold] miniature world (cached after the first build)")
    ensure_zoo("demo", 0)
    out = args.out / ("quick" if args.quick else "full")
    summaries = {}
    for step, case in ((2, "vlm"), (3, "llm")):
        console.print(f"[bold]{step}/3[/bold] evolving the {case.upper()} merge")
        summaries[case] = run_evolution(
            args.configs / f"demo-{case}.yaml", out / case, overrides=QUICK if args.quick else None
        )
    for case, summary in summaries.items():
        test = summary.get("test", {})
        for task, by_model in test.get("scores", {}).items():
            table = Table(title=f"{case.upper()} merge — {task} (test split, 95% CI)")
            table.add_column("model")
            table.add_column(next(iter(by_model.values()))["metric"], justify="right")
            table.add_column("evolved better? (paired bootstrap)")
            for name, score in by_model.items():
                ci = score["ci"]
                interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
                verdict = test["evolved_vs"][task].get(name, {})
                mark = "" if name == "evolved" else ("yes" if verdict.get("significant") else "no")
                table.add_row(name, f"{score['value']:.3f}{interval}", mark)
            console.print(table)
        console.print(f"report: {test.get('report')}   fitness curve: {out / case / 'fitness.png'}")
        if "cma_evaluations_to_reach_random_best" in summary:
            console.print(
                f"CMA-ES reached random search's best fitness ({summary['random_best_fitness']:.3f}) after "
                f"{summary['cma_evaluations_to_reach_random_best']} of {summary['evaluations']['random']} evaluations"
            )
    return 0
