"""`vlmmerge zoo check`: does the miniature world make merging matter?

Scores, on the test split with bootstrap 95% intervals: every source, untuned merges of two and
three sources (`world_table`, through the product's `LiveMerge`, so `vlmmerge merge` of the same
recipe reproduces every row), a constant answer per set (the fitness reference that scores best
on the fitness split), and the world's CLIP (does a scene's caption beat another scene's?).
The searched merges are the demo's (`vlmmerge demo`, the product's `vlmmerge evolve`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmmerge.zoo.build import ZooPaths
from vlmmerge.zoo.world_table import METRICS, TASKS, WorldRow, score_world, world_table_markdown


def _load(name: str, eval_sets: Path | None):
    from vlmmerge.evaluation import load_task

    return load_task(str(eval_sets / name)) if eval_sets is not None else load_task(name)


def constant_answers(eval_sets: Path | None, split: str = "test") -> dict[str, dict[str, Any]]:
    """Per set, the single fitness reference that scores best on the fitness split, scored on `split`."""
    from vlmmerge.evaluation import Evaluator

    out = {}
    for name in TASKS:
        task = _load(name, eval_sets)
        fitness = Evaluator([task], split="fitness", progress=False, compute_ci=False)
        n_fit = len(task.items("fitness"))
        candidates = list(dict.fromkeys(item.reference for item in task.items("fitness")))
        scored = [(fitness.score({task.name: [c] * n_fit}).scores[task.name][METRICS[name]], -i, c)
                  for i, c in enumerate(candidates)]
        best = max(scored)[2]
        test = Evaluator([task], split=split, progress=False, compute_ci=True)
        result = test.score({task.name: [best] * len(task.items(split))}, model_name="constant answer")
        out[name] = {"answer": best, "value": round(result.scores[task.name][METRICS[name]], 2),
                     "ci": [round(v, 2) for v in result.ci[task.name][METRICS[name]]]}
    return out


def clip_check(paths: ZooPaths, eval_sets: Path | None, split: str = "test") -> dict[str, dict[str, float]]:
    """Does the world's CLIP tell a scene's caption from another scene's? Per caption set: mean CLIP
    score of the reference and of a mismatched reference (the next item's), and how often the
    reference wins the pair."""
    from vlmmerge.evaluation.clip import get_clip_scorer

    scorer = get_clip_scorer(str(paths.clip))
    out = {}
    for name in ("en_caption", "ja_caption"):
        task = _load(name, eval_sets)
        items = task.items(split)
        images = [task.load_image(item) for item in items]
        keys = [item.id for item in items]
        cache: dict = {}
        matched = scorer.scores(images, [item.reference for item in items], keys, cache)
        mismatched = scorer.scores(images, [items[(i + 1) % len(items)].reference for i in range(len(items))], keys, cache)
        out[name] = {
            "matched": round(sum(matched) / len(matched), 2),
            "mismatched": round(sum(mismatched) / len(mismatched), 2),
            "matched_wins": round(100.0 * sum(m > n for m, n in zip(matched, mismatched)) / len(items), 1),
        }
    return out


@dataclass
class CheckReport:
    rows: list[dict[str, Any]]
    constants: dict[str, dict[str, Any]]
    clip: dict[str, dict[str, float]]
    seconds: float
    zoo: dict[str, str] = field(default_factory=dict)

    def table(self) -> str:
        constant = WorldRow("constant answer", "baseline", {t: c["value"] for t, c in self.constants.items()},
                            {t: c["ci"] for t, c in self.constants.items()}).to_json()
        return world_table_markdown(self.rows + [constant])

    def clip_table(self) -> str:
        lines = ["| CLIP (test split) | reference caption | another scene's caption | reference wins (%) |",
                 "|---|---|---|---|"]
        for name, c in self.clip.items():
            lines.append(f"| {name} | {c['matched']:.1f} | {c['mismatched']:.1f} | {c['matched_wins']:.1f} |")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "constants": self.constants, "clip": self.clip, "seconds": self.seconds,
                "zoo": self.zoo}


def run_check(paths: ZooPaths, *, eval_sets: Path | None = None, split: str = "test",
              batch_size: int = 100) -> CheckReport:
    started = time.perf_counter()
    rows = [r.to_json() for r in score_world(paths, split=split, batch_size=batch_size, eval_sets=eval_sets)]
    return CheckReport(rows=rows, constants=constant_answers(eval_sets, split), clip=clip_check(paths, eval_sets, split),
                       seconds=round(time.perf_counter() - started, 1),
                       zoo={k: str(v) for k, v in paths.as_dict().items()})
