"""`vlmmerge tune RECIPE --out RUN`"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "tune",
        help="learn merge coefficients by gradient (SuperMerge, AdaMerging) on a few examples (resumable)",
        description="Learn per-model, per-layer (or per-component, per-tensor) task-arithmetic coefficients "
        "c = scale * tanh(w) by gradient: SuperMerge (cross-entropy of reference answers) or AdaMerging "
        "(entropy of the model's own answers). Run again with the same --out to resume after a kill.",
    )
    parser.add_argument("recipe", type=Path, help="recipe YAML with a `tune:` section")
    parser.add_argument("--out", type=Path, required=True, help="run folder (journal, best recipe and model, plots, report)")
    parser.add_argument("--steps", type=int, help="override tune.steps")
    parser.add_argument("--seed", type=int, help="override tune.seed")
    parser.add_argument("--method", choices=["supermerge", "adamerging"], help="override tune.method")
    parser.add_argument("--no-model", action="store_true", help="do not write the merged best model")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlmmerge.tune import run_tune

    overrides = {k: v for k, v in {"steps": args.steps, "seed": args.seed, "method": args.method}.items() if v is not None}
    summary = run_tune(args.recipe, args.out, progress=not args.quiet, overrides=overrides, save_model=not args.no_model)
    print(f"{summary['method']}: loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f} "
          f"in {summary['steps']} steps ({summary['train_seconds']:.1f} s)")
    print(f"static recipe: {args.out / 'best-recipe.yaml'}")
    if "test" in summary:
        print(f"test report: {summary['test']['report']}")
    return 0
