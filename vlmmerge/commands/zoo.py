"""`vlmmerge zoo build|check|path`: the miniature world (tiny VLM, Japanese LM, math LM, CLIP)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "zoo",
        help="build or check the miniature world: a tiny VLM, Japanese LM, math LM and CLIP trained offline",
        description="The miniature world is a scale model of the paper's setting, trained locally from real "
        "transformers classes: a base LM, a VLM fine-tuned from it on English captions, a Japanese LM and a "
        "math LM fine-tuned from it, and a tiny open_clip model. See docs/miniature-world.md.",
    )
    zoo_sub = parser.add_subparsers(dest="zoo_command", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--size", default="demo", choices=("demo", "micro"),
                       help="demo: the skilled world (minutes); micro: a structurally complete toy (seconds)")
        p.add_argument("--seed", type=int, default=0, help="seed of every random choice of the build")

    build = zoo_sub.add_parser("build", help="train the world (cached under the user cache folder)")
    common(build)
    build.add_argument("--out", type=Path, default=None,
                       help="write the world here instead of the cache (~/.cache/vlmmerge/zoo/SIZE-sSEED-vN)")
    build.add_argument("--force", action="store_true", help="rebuild even if the cached world exists")
    build.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    build.set_defaults(func=run_build)

    path = zoo_sub.add_parser("path", help="print the cached world's folders (JSON); builds nothing")
    common(path)
    path.set_defaults(func=run_path)

    check = zoo_sub.add_parser(
        "check", help="score sources, constant answers, untuned and searched merges on the eval sets",
        description="Evaluates every source model and merge on the test split of the built-in eval sets "
        "(with bootstrap 95%% intervals) and searches per-layer task-arithmetic coefficients on the fitness "
        "split: a uniform grid, then CMA-ES.")
    common(check)
    check.add_argument("--zoo", type=Path, default=None, help="a built world folder (default: the cached one, "
                       "built if missing)")
    check.add_argument("--eval-sets", type=Path, default=None, help="folder holding the eval sets "
                       "(default: the built-in eval_sets/)")
    check.add_argument("--split", default="test", choices=("fitness", "test"))
    check.add_argument("--cma-budget", type=int, default=48, help="CMA-ES evaluations per search after the grid")
    check.add_argument("--grid", type=float, nargs="+", default=[0.0, 0.5, 1.0, 1.5, 2.0],
                       help="uniform coefficient values tried for each of the two task vectors")
    check.add_argument("--out", type=Path, default=None, help="write check.json and check.md here")
    check.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    check.add_argument("--write-doc", type=Path, default=None, metavar="MD",
                       help="replace the block between <!-- zoo-check:start/end --> in MD (docs/miniature-world.md) "
                       "with the tables")
    check.set_defaults(func=run_check)


def run_build(args: argparse.Namespace) -> int:
    import shutil

    from vlmmerge.zoo import ZooPaths, build_zoo, zoo_dir

    target = args.out if args.out is not None else zoo_dir(args.size, args.seed)
    if ZooPaths(target).is_complete() and not args.force:
        print(f"already built: {target} (use --force to rebuild)")
        return 0
    if args.force and args.out is None and target.exists():
        shutil.rmtree(target)
    paths = build_zoo(args.size, args.seed, out=args.out, threads=args.threads)
    manifest = json.loads(paths.manifest.read_text(encoding="utf-8"))
    print(f"built the {args.size} world (seed {args.seed}) in {manifest['total_seconds']:.0f}s: {paths.root}")
    for name, folder in paths.as_dict().items():
        if name != "root":
            print(f"  {name:9s} {folder}")
    return 0


def run_path(args: argparse.Namespace) -> int:
    from vlmmerge.zoo import ZooPaths, zoo_dir

    paths = ZooPaths(zoo_dir(args.size, args.seed))
    print(json.dumps(paths.as_dict() | {"built": paths.is_complete()}, indent=2))
    return 0


def run_check(args: argparse.Namespace) -> int:
    import torch

    from vlmmerge.zoo import ZooError, ZooPaths, ensure_zoo
    from vlmmerge.zoo.check import run_check as check

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.zoo is not None:
        paths = ZooPaths(args.zoo)
        if not paths.is_complete():
            raise ZooError(f"{args.zoo} is not a built zoo (missing {paths.manifest.name} or a model folder)")
    else:
        paths = ensure_zoo(args.size, args.seed)
    report = check(paths, eval_sets=args.eval_sets, split=args.split, grid=args.grid, cma_budget=args.cma_budget,
                   seed=args.seed)
    print()
    print(report.table())
    print()
    print(report.coefficients_table())
    print(report.clip_table())
    print(f"({report.seconds:.0f}s)")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "check.json").write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False),
                                             encoding="utf-8")
        (args.out / "check.md").write_text(report.table() + "\n\n" + report.coefficients_table() + "\n" + report.clip_table() + "\n",
                                           encoding="utf-8")
        print(f"written: {args.out / 'check.json'}, {args.out / 'check.md'}")
    if args.write_doc is not None:
        from vlmmerge.docblocks import replace_marked_block

        replace_marked_block(args.write_doc, "zoo-check",
                             report.table() + "\n\n" + report.coefficients_table() + "\n" + report.clip_table())
        print(f"updated: {args.write_doc}")
    return 0

