"""Speed and memory of a learned-merge training step against one forward pass of the host model.

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/tune_speed.py [--hidden 512 --layers 8 --steps 10]

Two worlds: the shipped miniature EvoVLM-JP (zoo VLM + Japanese LM, LLaVA, images) and two fine-tunes
of a synthetic Llama (hidden/layers as given). Per world, fresh 1-thread processes measure: (a) one
no-grad forward pass of the host on a batch of the same prompts and (b) SuperMerge training steps
(merged parameters rebuilt from the task vectors, forward, backward to the coefficients). Writes the
`tune-speed` block of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from datetime import date
from pathlib import Path

from tune_world import ROOT, build_sources, measure, tune_recipe

BLOCK = "tune-speed"

FORWARD = """
from vlmmerge.tune.run import load_tune, build_data
from vlmmerge.tune.prompts import answer_ids, collate, pad_id
from vlmmerge.live import LiveMerge
from vlmmerge.engine import Source, choose_host
raw, template, config = load_tune({recipe!r})
sources = {{r: Source.open(r) for r in template.model_refs}}
live = LiveMerge(template.model_refs, choose_host(template, sources).ref)
class Holder: processor = live.processor
data = build_data(Holder, config)
task = data[0]
prompts = task.prompts[:config.batch_size]
batch = collate(prompts, [answer_ids(live.processor, p.answer) for p in prompts], pad_id(live.processor))
batch.pop('labels')
with torch.no_grad():
    live.model(**batch)
    t = time.perf_counter()
    for _ in range({repeats}):
        live.model(**batch)
out['forward_seconds'] = (time.perf_counter() - t) / {repeats}
"""

TRAIN = """
from vlmmerge.tune.run import load_tune, train
raw, template, config = load_tune({recipe!r}, {{'steps': {steps}}})
merge, w, entries, seconds = train(template, config, __import__('pathlib').Path({out!r}), progress=False)
steady = entries[1:] or entries
out['step_seconds'] = sum(e['seconds'] for e in steady) / len(steady)
out['coefficients'] = merge.space.size
out['task_vector_mb'] = merge.task_vector_bytes / 2**20
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="tune-speed-") as tmp:
        root = Path(tmp)
        paths = build_sources(root / "models", 2, args.hidden, args.layers)
        worlds = {"miniature EvoVLM-JP (zoo, LLaVA)": str(ROOT / "configs" / "demo-vlm-tune.yaml"),
                  f"synthetic Llama (hidden {args.hidden}, {args.layers} layers), 2 sources":
                      str(tune_recipe(root / "llama.yaml", paths, 2, args.steps))}
        for name, recipe in worlds.items():
            forward = measure(FORWARD.format(recipe=recipe, repeats=5))
            steps = measure(TRAIN.format(recipe=recipe, steps=args.steps, out=str(root / f"run-{len(rows)}")))
            rows[name] = {"forward": forward, "train": steps}
            print(name, json.dumps(rows[name]), flush=True)
    lines = [
        f"Measured by `benchmarks/tune_speed.py` ({date.today()}, {platform.processor() or platform.machine()}, "
        f"1 torch thread, batch 8, SuperMerge, per-layer coefficients, {args.steps} steps, float32). A step rebuilds "
        "every merged tensor from the frozen task vectors, runs the forward pass through `functional_call` and "
        "back-propagates to the coefficients. Peak RSS is the whole process's (a fresh one per measurement).",
        "",
        "| world | host forward (s) | training step (s) | step / forward | steps per minute | peak RSS forward (MB) | peak RSS training (MB) | task vectors (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        f, t = row["forward"], row["train"]
        lines.append(f"| {name} | {f['forward_seconds']:.3f} | {t['step_seconds']:.3f} | "
                     f"{t['step_seconds'] / f['forward_seconds']:.1f}x | {60 / t['step_seconds']:.0f} | "
                     f"{f['peak_rss_mb']:.0f} | {t['peak_rss_mb']:.0f} | {t['task_vector_mb']:.0f} |")
    from vlmmerge.docblocks import replace_marked_block

    replace_marked_block(ROOT / "docs" / "benchmarks.md", BLOCK, "\n".join(lines), append_if_missing=True)
    (ROOT / "docs" / "results" / "tune-speed.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
