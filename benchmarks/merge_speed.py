"""Merge speed and memory: vlmmerge against mergekit 0.1.5 and the I/O floor, side by side.

    .venv/bin/python benchmarks/merge_speed.py                 # ~1B checkpoints, 3 repeats
    .venv/bin/python benchmarks/merge_speed.py --size tiny --repeats 1   # smoke run, seconds

Builds (once, cached under ~/.cache/vlmmerge/bench) three Mistral-shaped bf16 safetensors
checkpoints: a base and two "fine-tunes" (base + small seeded noise). Tensors are generated one
at a time from a meta-device model's shapes, so no full-precision model is ever materialised.
Then, for each method, runs vlmmerge and mergekit-yaml on the same recipe in fresh processes,
alternating which goes first, plus an I/O floor process (reads every input tensor, writes one
output of the same size with safetensors). Each child's wall time and peak RSS (the kernel's
`ru_maxrss` reported by GNU time, i.e. that process's high-water resident set) is recorded.

Results go to a JSON file and, with --write-doc, into the results block of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, also when loaded by path

from merge_speed_checkpoints import (  # noqa: E402
    DEFAULT_CACHE, FINETUNE_STD, INIT_STD, MODEL_NAMES, SIZES, build_checkpoints,
)
from merge_speed_report import DOC, RESULTS_END, RESULTS_START, markdown, summarise, write_doc  # noqa: E402
from merge_speed_runs import (  # noqa: E402
    COUNTER_VARIANTS, METHODS, REPO, Benchmark, Run, io_floor, load_results, recipe_for, run_benchmark,
)

__all__ = [
    "COUNTER_VARIANTS", "DEFAULT_CACHE", "DOC", "FINETUNE_STD", "INIT_STD", "METHODS", "MODEL_NAMES", "RESULTS_END", "RESULTS_START",
    "SIZES", "Benchmark", "Run", "build_checkpoints", "io_floor", "load_results", "markdown", "recipe_for",
    "run_benchmark", "summarise", "write_doc",
]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["floor"]:
        seconds = io_floor(Path(argv[1]), [Path(p) for p in argv[2:]])
        print(f"floor_seconds={seconds:.3f}", flush=True)
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--tools", default="vlmmerge,mergekit", help="comma-separated: vlmmerge,mergekit")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--json", type=Path, default=None, help="where to save raw results (default: cache dir)")
    parser.add_argument("--write-doc", action="store_true", help=f"update the results block of {DOC.relative_to(REPO)}")
    parser.add_argument("--build-only", action="store_true", help="only build the cached checkpoints")
    parser.add_argument("--from-json", type=Path, default=None, help="render (and with --write-doc, write) saved results")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        text = markdown(load_results(args.from_json))
        print(text)
        if args.write_doc:
            write_doc(text)
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for method in methods:
        if method not in METHODS:
            parser.error(f"--methods: unknown method {method!r}; choose from {','.join(METHODS)}")
    if args.build_only:
        print(build_checkpoints(args.size, args.cache_dir))
        return 0
    tools = tuple(t.strip() for t in args.tools.split(",") if t.strip())
    bench = run_benchmark(args.size, args.repeats, methods, args.cache_dir, tools=tools)
    json_path = args.json or (args.cache_dir / f"results-{args.size}.json")
    json_path.write_text(json.dumps(asdict(bench), indent=2))
    text = markdown(bench)
    print(text)
    print(f"raw results: {json_path}")
    if args.write_doc:
        write_doc(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
