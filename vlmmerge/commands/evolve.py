"""`vlmmerge evolve RECIPE --out RUN [--dry-run]`"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "evolve",
        help="search merge parameters with CMA-ES against a fitness set (resumable)",
        description="Evolve a merge recipe (Akiba et al. 2024: parameter space, or with `evolve.dataflow:` the "
        "data-flow space, a path through the layers of the sources). Run again with the same "
        "--out to resume: journaled evaluations are replayed, none is repeated.",
    )
    parser.add_argument("recipe", type=Path, help="recipe YAML with an `evolve:` section")
    parser.add_argument("--out", type=Path, help="run folder (journal, best recipe and model, plots, report)")
    parser.add_argument("--dry-run", action="store_true", help="validate and size the search; load no weights")
    parser.add_argument("--budget", type=int, help="override evolve.budget")
    parser.add_argument("--seed", type=int, help="override evolve.seed")
    parser.add_argument("--device", help="override options.device: where candidates are merged and scored (cpu, cuda, cuda:1)")
    parser.add_argument("--dtype", help="override the recipe's dtype: the scored and the written model's (bfloat16, float32)")
    parser.add_argument("--backend", choices=["local", "ray"], help="override evolve.backend.kind: score candidates "
                        "here one after another (local) or on a pool of Ray actors (pip install 'vlmmerge[ray]')")
    parser.add_argument("--ray-address", help="override evolve.backend.address: a running Ray cluster ('auto', "
                        "'ray://head:10001'); default: start one on this machine")
    parser.add_argument("--actors", type=int, help="override evolve.backend.actors: live models in the Ray pool")
    parser.add_argument("--retry-failed", action="store_true", help="on resume, evaluate the journal's failed candidates again")
    parser.add_argument("--no-model", action="store_true", help="do not write the merged best model")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--pick", help="multi-objective runs: choose one front member, e.g. "
                        "\"ja_caption>=40, en_caption max\" (constraints NAME>=N, then NAME max|min; "
                        "see vlmmerge/search/pick.py); writes picked/ (recipe, model, test report)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlmmerge.errors import VlmMergeError
    from vlmmerge.search import dry_run, run_evolution

    overrides = {k: v for k, v in {"budget": args.budget, "seed": args.seed}.items() if v is not None}
    backend = {k: v for k, v in {"kind": args.backend, "address": args.ray_address, "actors": args.actors}.items()
               if v is not None}
    if backend:
        overrides["backend"] = backend
    if args.dry_run:
        report = dry_run(args.recipe, overrides)
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    if args.out is None:
        raise VlmMergeError("--out RUN is required (or use --dry-run)")
    summary = run_evolution(
        args.recipe, args.out, progress=not args.quiet, overrides=overrides, save_model=not args.no_model,
        device=args.device, dtype=args.dtype, retry_failed=args.retry_failed, pick=args.pick,
    )
    if "front" in summary:
        print(f"front of {len(summary['front'])} members after {summary['evaluations']} evaluations: "
              f"{args.out / 'front.json'}, {args.out / 'front.png'}")
        if "picked" in summary:
            print(f"picked: {summary['picked']['recipe']}")
    else:
        print(f"best fitness {summary['best']['fitness']:.4f} after {summary['evaluations']} evaluations")
        print(f"static recipe: {args.out / 'best-recipe.yaml'}")
    if "test" in summary:
        print(f"test report: {summary['test']['report']}")
    return 0
