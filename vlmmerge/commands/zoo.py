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
    build.add_argument("--threads", type=int, default=1,
                       help="torch CPU threads; trained weights depend on it (default 1, the shipped world's)")
    build.set_defaults(func=run_build)

    study = zoo_sub.add_parser(
        "study", help="do the demo's conclusions survive reseeding? both demo searches on several rebuilt worlds",
        description="Builds the demo world for every (seed, threads) pair (cached), runs both demo searches and the "
        "world table on each in parallel worker processes, and checks the README's claims per world: the evolved "
        "merge beats every source and untuned baseline (paired bootstrap), CMA-ES reaches random search's best "
        "within half the budget, and the search has plateaued. Resumes: studied worlds are reused.")
    study.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    study.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="build thread counts")
    study.add_argument("--jobs", type=int, default=2, help="worlds studied at once (one torch thread each)")
    study.add_argument("--out", type=Path, default=Path("runs/study"))
    study.add_argument("--quick", action="store_true", help="the demo's --quick budgets")
    study.add_argument("--write-doc", type=Path, default=None, metavar="MD",
                       help="replace the <!-- zoo-study:start/end --> block of MD (docs/miniature-world.md)")
    study.set_defaults(func=run_study)

    path = zoo_sub.add_parser("path", help="print the cached world's folders (JSON); builds nothing")
    common(path)
    path.add_argument("--threads", type=int, default=1, help="build thread count of the world")
    path.set_defaults(func=run_path)

    check = zoo_sub.add_parser(
        "check", help="score sources, untuned merges, constant answers and CLIP on the eval sets",
        description="Evaluates every source model, untuned two- and three-source merges (through the product's "
        "live merge: `vlmmerge merge` of the same recipe reproduces each row), a constant answer per set and the "
        "world's CLIP on the built-in eval sets, with bootstrap 95%% intervals. The searched merges are "
        "`vlmmerge demo`'s.")
    common(check)
    check.add_argument("--threads", type=int, default=1, help="build thread count of the world (default 1)")
    check.add_argument("--zoo", type=Path, default=None, help="a built world folder (default: the shipped world "
                       "for seed 0 and 1 thread, else the cached one, built if missing)")
    check.add_argument("--eval-sets", type=Path, default=None, help="folder holding the eval sets "
                       "(default: the built-in eval_sets/)")
    check.add_argument("--split", default="test", choices=("fitness", "test"))
    check.add_argument("--out", type=Path, default=None, help="write check.json and check.md here")
    check.add_argument("--write-doc", type=Path, default=None, metavar="MD",
                       help="replace the block between <!-- zoo-check:start/end --> in MD (docs/miniature-world.md) "
                       "with the tables")
    check.set_defaults(func=run_check)


def run_build(args: argparse.Namespace) -> int:
    import shutil

    from vlmmerge.zoo import ZooPaths, build_zoo, zoo_dir

    from vlmmerge.zoo.refs import SHIPPED_SPEC
    from vlmmerge.zoo.shipped import compare_with_shipped

    target = args.out if args.out is not None else zoo_dir(args.size, args.seed, args.threads)
    if ZooPaths(target).is_complete() and not args.force:
        print(f"already built: {target} (use --force to rebuild)")
        paths = ZooPaths(target)
    else:
        if args.force and args.out is None and target.exists():
            shutil.rmtree(target)
        paths = build_zoo(args.size, args.seed, out=args.out, threads=args.threads)
        manifest = json.loads(paths.manifest.read_text(encoding="utf-8"))
        print(f"built the {args.size} world (seed {args.seed}, {args.threads} thread(s)) in "
              f"{manifest['total_seconds']:.0f}s: {paths.root}")
        for name, folder in paths.as_dict().items():
            if name != "root":
                print(f"  {name:9s} {folder}")
    if (args.size, args.seed, args.threads) == (SHIPPED_SPEC.size, SHIPPED_SPEC.seed, SHIPPED_SPEC.threads):
        same = compare_with_shipped(paths.root)
        differ = [rel for rel, ok in same.items() if not ok]
        if differ:
            print(f"{paths.root} differs from the shipped world in {len(differ)} of {len(same)} weights files: "
                  + ", ".join(differ))
        else:
            print(f"{paths.root} matches the shipped world's checksums ({len(same)} weights files identical)")
    return 0


def run_study(args: argparse.Namespace) -> int:
    from vlmmerge.zoo.refs import WorldSpec
    from vlmmerge.zoo.study import run_study as study
    from vlmmerge.zoo.study_report import study_block

    worlds = [WorldSpec("demo", seed, threads) for seed in args.seeds for threads in args.threads]
    results = study(worlds, args.out, jobs=args.jobs, quick=args.quick)
    block = study_block(results)
    print(block)
    (args.out / "study.md").write_text(block + "\n", encoding="utf-8")
    if len(results) < len(worlds):
        print(f"{len(worlds) - len(results)} world(s) failed; see their worker.log under {args.out}")
    if args.write_doc is not None:
        from vlmmerge.docblocks import replace_marked_block

        replace_marked_block(args.write_doc, "zoo-study", block)
        print(f"updated: {args.write_doc}")
    return 0 if len(results) == len(worlds) else 1


def run_path(args: argparse.Namespace) -> int:
    from vlmmerge.zoo import ZooPaths, zoo_dir

    paths = ZooPaths(zoo_dir(args.size, args.seed, args.threads))
    print(json.dumps(paths.as_dict() | {"built": paths.is_complete()}, indent=2))
    return 0


def run_check(args: argparse.Namespace) -> int:
    import torch

    from vlmmerge.zoo import ZooError, ZooPaths
    from vlmmerge.zoo.check import run_check as check
    from vlmmerge.zoo.refs import WorldSpec, world_paths
    from vlmmerge.zoo.refs import SHIPPED_SPEC
    from vlmmerge.zoo.study import EVAL_THREADS

    torch.set_num_threads(EVAL_THREADS)
    if args.zoo is not None:
        paths = ZooPaths(args.zoo)
        if not paths.is_complete():
            raise ZooError(f"{args.zoo} is not a built zoo (missing {paths.manifest.name} or a model folder)")
    elif (args.size, args.seed, args.threads) == (SHIPPED_SPEC.size, SHIPPED_SPEC.seed, SHIPPED_SPEC.threads):
        paths = world_paths(SHIPPED_SPEC)
    else:
        paths = world_paths(WorldSpec(args.size, args.seed, args.threads))
    report = check(paths, eval_sets=args.eval_sets, split=args.split)
    body = report.table() + "\n\n" + report.clip_table()
    print(body)
    print(f"({report.seconds:.0f}s)")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "check.json").write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False),
                                             encoding="utf-8")
        (args.out / "check.md").write_text(body + "\n", encoding="utf-8")
        print(f"written: {args.out / 'check.json'}, {args.out / 'check.md'}")
    if args.write_doc is not None:
        from vlmmerge.docblocks import replace_marked_block

        replace_marked_block(args.write_doc, "zoo-check", body)
        print(f"updated: {args.write_doc}")
    return 0
