"""`vlmmerge eval MODEL [MODEL ...] --task NAME [--task ...] --out DIR`: score models on eval sets."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from vlmmerge.errors import VlmMergeError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "eval", help="score models (captioning, VQA, math, CLIP score) with confidence intervals and reports",
        description="Generate with each model on each task and write scores.json, samples.jsonl, scores.md and "
                    "report.html (several models: one folder each plus comparison.md/.html in --out).",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="model folder or hub id (VLM or causal LM)")
    p.add_argument("--task", action="append", required=True, metavar="NAME",
                   help="eval set folder, .jsonl file, built-in set name, or benchmark "
                        "(ja-vg-vqa-500, ja-vlm-bench-in-the-wild, mgsm-ja); repeat for several")
    p.add_argument("--task-path", action="append", default=[], metavar="NAME=PATH",
                   help="local copy of a benchmark, e.g. mgsm-ja=/data/mgsm (offline use)")
    p.add_argument("--split", default="test", choices=("fitness", "test"))
    p.add_argument("--limit", type=int, default=None, help="first N items of each task")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--name", action="append", default=[], help="label for each model (default: folder name)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 | auto (default: float32 on CPU)")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--num-beams", type=int, default=None, help="the reference VLM setting is 5")
    p.add_argument("--repetition-penalty", type=float, default=None, help="the reference VLM setting is 1.5")
    p.add_argument("--metric", action="append", default=None, help="metrics for .jsonl tasks (default rouge_ja)")
    p.add_argument("--language", choices=("ja", "en"), default=None, help="language of .jsonl tasks")
    p.add_argument("--language-detector", default=None,
                   help="script, fasttext (bundled lid.176) or fasttext:/path/model.bin; default: each task's")
    p.add_argument("--clip-model", default=None, help="open_clip model (name, hf-hub:..., or folder) for clip_score")
    p.add_argument("--clip-pretrained", default=None, help="open_clip weights tag or checkpoint file")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _labels(models: list[str], names: list[str]) -> list[str]:
    if names and len(names) != len(models):
        raise VlmMergeError(f"--name given {len(names)} times for {len(models)} models")
    labels = names or [Path(m.rstrip("/")).name or m for m in models]
    out, seen = [], {}
    for label in labels:
        label = re.sub(r"[^\w.\-]+", "_", label) or "model"
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}-{seen[label]}")
    return out


def run(args: argparse.Namespace) -> int:
    from vlmmerge.evaluation import Evaluator, load_model_for_eval, load_task, save_result, write_comparison_report

    paths = {}
    for spec in args.task_path:
        if "=" not in spec:
            raise VlmMergeError(f"--task-path expects NAME=PATH, got {spec!r}")
        name, path = spec.split("=", 1)
        paths[name.strip().lower()] = path
    overrides = {"metrics": args.metric, "language": args.language}
    tasks = []
    for name in args.task:
        extra = overrides if name.endswith(".jsonl") else {}
        tasks.append(load_task(name, path=paths.get(name.lower()), **extra))
    generation = {k: v for k, v in {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams,
                                    "repetition_penalty": args.repetition_penalty}.items() if v is not None}
    evaluator = Evaluator(tasks, split=args.split, limit=args.limit, batch_size=args.batch_size, seed=args.seed,
                          progress=not args.no_progress, generation=generation,
                          language_detector=args.language_detector, clip_model=args.clip_model,
                          clip_pretrained=args.clip_pretrained)
    labels = _labels(args.models, args.name)
    results = {}
    for label, model_path in zip(labels, args.models):
        model, processor = load_model_for_eval(model_path, device=args.device, dtype=args.dtype,
                                               trust_remote_code=args.trust_remote_code)
        result = evaluator.evaluate(model, processor, model_name=str(model_path))
        del model
        results[label] = result
        target = args.out if len(args.models) == 1 else args.out / label
        save_result(result, target, title=f"Evaluation: {label}")
        print(f"== {label} ({model_path}) -> {target}")
        for task, scores in result.scores.items():
            cells = ", ".join(
                f"{metric} {value:.2f} [{result.ci[task][metric][0]:.2f}, {result.ci[task][metric][1]:.2f}]"
                for metric, value in scores.items()
            )
            print(f"  {task}: {cells}")
    if len(results) > 1:
        write_comparison_report(results, args.out)
        print(f"comparison: {args.out / 'comparison.html'}")
    return 0
