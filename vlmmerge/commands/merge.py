"""`vlmmerge merge RECIPE.yaml OUT_DIR`"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "merge",
        help="merge models as a recipe says and write a Hugging Face folder",
        description="Run a static merge (mergekit-style YAML recipe). Every component all models share "
        "merges (VLM + LLM: the language side, the vision encoder and projector copied from the host VLM; "
        "VLM + VLM of one family: every component); `components:` in the recipe narrows it.",
        epilog="Engine knobs (command line > recipe `options:` > default). Tensors are merged by "
        "--threads workers at once, each with single-threaded torch ops, and streamed into their place "
        "in the output shards as soon as they are merged, so memory holds only the tensors in flight; "
        "the largest tensor (usually the embedding or head) runs alone. Inputs are memory-mapped from "
        "the page cache. See docs/benchmarks.md for measurements.",
    )
    parser.add_argument("recipe", type=Path, help="recipe YAML file")
    parser.add_argument("out_dir", type=Path, help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    parser.add_argument(
        "--device", default=None,
        help="where the merge math runs, e.g. cpu, cuda, cuda:1 (default: recipe, else cpu); reading "
        "and writing stay on the host",
    )
    parser.add_argument(
        "--threads", type=int, default=None,
        help="tensors merged at once (default: recipe, else the usable cores, at most 8); 1 gives "
        "the lowest memory",
    )
    parser.add_argument(
        "--max-shard-size", default=None,
        help="output safetensors shard size, e.g. 2GB, 500MB, 5GiB (default: recipe, else 2GB)",
    )
    parser.add_argument(
        "--compute-dtype", default=None, choices=["float32", "float64"],
        help="precision of the merge math (default: recipe, else float32); the output dtype is the "
        "recipe's `dtype`",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run, teardown_free=True)  # all on disk when it returns


def run(args: argparse.Namespace) -> int:
    import gc

    # Importing torch and transformers creates a great many objects and no garbage worth a
    # cyclic collection pass; this process ends after the merge.
    gc.disable()
    from vlmmerge.engine import MergeJob, write_merge

    job = MergeJob.build(
        args.recipe,
        device=args.device,
        threads=args.threads,
        max_shard_size=args.max_shard_size,
        compute_dtype=args.compute_dtype,
        progress=not args.quiet,
        recipe_text=args.recipe.read_text(encoding="utf-8") if args.recipe.exists() else None,
    )
    result = write_merge(job, args.out_dir, overwrite=args.overwrite)
    print(
        f"wrote {result.out_dir} ({result.tensors} tensors, {result.merged_tensors} merged, "
        f"{result.bytes_written / 1e6:.1f} MB)"
    )
    for note in result.notes:
        print(f"note: {note}")
    return 0
