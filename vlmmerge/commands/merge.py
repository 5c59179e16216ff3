"""`vlmmerge merge RECIPE.yaml OUT_DIR`"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "merge",
        help="merge models as a recipe says and write a Hugging Face folder",
        description="Run a static merge (mergekit-style YAML recipe). For VLM + LLM recipes only the "
        "language side merges; vision encoder and projector are copied from the host VLM.",
    )
    parser.add_argument("recipe", type=Path, help="recipe YAML file")
    parser.add_argument("out_dir", type=Path, help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    parser.add_argument("--device", default=None, help="compute device, e.g. cpu or cuda (default: recipe or cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--max-shard-size", default=None, help="output shard size, e.g. 2GB (default 2GB)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlmmerge.engine import run_merge

    result = run_merge(
        args.recipe,
        args.out_dir,
        overwrite=args.overwrite,
        device=args.device,
        threads=args.threads,
        max_shard_size=args.max_shard_size,
        progress=not args.quiet,
        recipe_text=args.recipe.read_text(encoding="utf-8") if args.recipe.exists() else None,
    )
    print(
        f"wrote {result.out_dir} ({result.tensors} tensors, {result.merged_tensors} merged, "
        f"{result.bytes_written / 1e6:.1f} MB)"
    )
    return 0
