"""Batched vs one-by-one generation in the evaluator, side by side in one run.

    .venv/bin/python benchmarks/generation_speed.py [--items 64 --repeats 3 --threads 1]

Uses the miniature world (`vlmmerge zoo build`; built on first use): the VLM on `en_caption`
(image + prompt -> caption) and the math LM on `en_math` (text only), greedy, the eval sets'
generation settings. The same `Evaluator` runs with `batch_size=1` and with `batch_size=N`
(left padding); the predictions must be identical, and the seconds per item are compared.
Writes its section of docs/benchmarks.md (between the generation-speed markers).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
BLOCK = "generation-speed"  # <!-- generation-speed:start --> ... :end --> in docs/benchmarks.md


def time_evaluation(task: str, model, processor, items: int, batch_size: int, repeats: int) -> tuple[float, list[str]]:
    from vlmmerge.evaluation import Evaluator, load_task

    evaluator = Evaluator([load_task(task)], split="test", limit=items, batch_size=batch_size, progress=False,
                          compute_ci=False)
    seconds = []
    predictions: list[str] = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = evaluator.evaluate(model, processor)
        seconds.append(time.perf_counter() - started)
        predictions = [sample["prediction"] for sample in result.samples if sample["task"] == task]
    return statistics.median(seconds), predictions


def main() -> None:
    from transformers import AutoProcessor, AutoTokenizer, LlamaForCausalLM, LlavaForConditionalGeneration

    from vlmmerge.zoo import ensure_zoo

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    zoo = ensure_zoo("demo", 0)
    cases = [
        ("en_caption", LlavaForConditionalGeneration.from_pretrained(str(zoo.vlm)).eval(), AutoProcessor.from_pretrained(str(zoo.vlm))),
        ("en_math", LlamaForCausalLM.from_pretrained(str(zoo.math_lm)).eval(), AutoTokenizer.from_pretrained(str(zoo.math_lm))),
    ]
    rows = []
    for task, model, processor in cases:
        one, one_predictions = time_evaluation(task, model, processor, args.items, 1, args.repeats)
        batched, batched_predictions = time_evaluation(task, model, processor, args.items, args.items, args.repeats)
        same = one_predictions == batched_predictions
        rows.append((task, one / args.items, batched / args.items, one / batched, same))
        print(f"{task}: one by one {one:.2f} s, batched {batched:.2f} s ({one / batched:.1f}x), same predictions: {same}")
    lines = [
        "## Evaluation: batched vs one-by-one generation",
        "",
        f"{date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.threads} thread(s); miniature world (`vlmmerge zoo`), {args.items} test items, greedy, "
        f"median of {args.repeats}.",
        f"Command: `.venv/bin/python benchmarks/generation_speed.py --items {args.items} --repeats {args.repeats} "
        f"--threads {args.threads}`",
        "",
        "| task (model) | s/item, batch 1 | s/item, batched | speed-up | identical predictions |",
        "|---|---:|---:|---:|---|",
    ]
    names = {"en_caption": "en_caption (VLM, image + text)", "en_math": "en_math (math LM, text)"}
    for task, one, batched, speedup, same in rows:
        lines.append(f"| {names[task]} | {one:.4f} | {batched:.4f} | {speedup:.1f}x | {'yes' if same else 'no'} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_doc:
        from vlmmerge.docblocks import replace_marked_block

        replace_marked_block(DOC, BLOCK, text, append_if_missing=True)


if __name__ == "__main__":
    main()
