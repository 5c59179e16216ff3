"""Peak memory and wall time of a learned merge of many sources: flat vs hierarchical (groups of k).

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/tune_memory.py [--sources 6 --group 2 --hidden 512 --layers 8]

Builds `--sources` fine-tunes of one synthetic Llama in a temporary folder, runs `vlmmerge tune` on
them (SuperMerge, per-layer coefficients, a few steps on zoo Japanese math prompts) in a fresh
process per mode, and writes the `tune-memory` block of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from datetime import date
from pathlib import Path

from tune_world import ROOT, build_sources, measure, tune_recipe

BLOCK = "tune-memory"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=6)
    parser.add_argument("--group", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="tune-memory-") as tmp:
        root = Path(tmp)
        paths = build_sources(root / "models", args.sources, args.hidden, args.layers)
        size_mb = sum(f.stat().st_size for f in Path(paths["ft0"]).glob("*.safetensors")) / 2**20
        for mode, group in (("flat", None), (f"hierarchical (groups of {args.group})", args.group)):
            recipe = tune_recipe(root / f"{group}.yaml", paths, args.sources, args.steps, group)
            code = (f"from vlmmerge.tune import run_tune\n"
                    f"s = run_tune({str(recipe)!r}, {str(root / f'run-{group}')!r}, progress=False, save_model=False)\n"
                    f"out['final_loss'] = s['final_loss']; out['task_vector_mb'] = s['task_vector_bytes'] / 2**20")
            rows[mode] = measure(code)
            print(mode, json.dumps(rows[mode]), flush=True)
        baseline = measure(f"from vlmmerge.checkpoint import model_class_for\nfrom vlmmerge.checkpoint import Checkpoint\n"
                           f"m = model_class_for(Checkpoint({paths['base']!r}).config).from_pretrained({paths['base']!r})")
    flat = rows["flat"]
    lines = [
        f"Measured by `benchmarks/tune_memory.py` ({date.today()}, {platform.processor() or platform.machine()}, "
        f"1 torch thread): SuperMerge with per-layer coefficients, {args.steps} steps, {args.sources} fine-tunes of a "
        f"Llama (hidden {args.hidden}, {args.layers} layers, {size_mb:.0f} MB each in float32). Peak RSS of the whole "
        f"process; a process that only loads the host model peaks at {baseline['peak_rss_mb']:.0f} MB.",
        "",
        "| mode | peak RSS (MB) | task vectors held (MB, last stage) | wall time (s) | vs flat: memory | vs flat: time |",
        "|---|---|---|---|---|---|",
    ]
    for mode, row in rows.items():
        lines.append(f"| {mode} | {row['peak_rss_mb']:.0f} | {row['task_vector_mb']:.0f} | {row['wall_seconds']:.1f} | "
                     f"{row['peak_rss_mb'] / flat['peak_rss_mb']:.2f}x | {row['wall_seconds'] / flat['wall_seconds']:.2f}x |")
    lines += ["", "Hierarchical: each group of sources is learned and merged to disk on its own, then the group "
              "models are merged (their coefficients learned too); one group's task vectors are in memory at a time."]
    from vlmmerge.docblocks import replace_marked_block

    replace_marked_block(ROOT / "docs" / "benchmarks.md", BLOCK, "\n".join(lines), append_if_missing=True)
    (ROOT / "docs" / "results").mkdir(exist_ok=True)
    (ROOT / "docs" / "results" / "tune-memory.json").write_text(json.dumps({"args": vars(args), "rows": rows,
                                                                            "load_only": baseline}, indent=1) + "\n")


if __name__ == "__main__":
    main()
