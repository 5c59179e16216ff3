"""What each model of a miniature world can do, scored with the product's own merge and evaluation.

Every row is a recipe applied by `LiveMerge` (the code path of `vlmmerge evolve`) to one loaded
host, the VLM: a source alone (its language weights with the VLM's vision tower and projector),
or an untuned merge. The columns are the built-in eval sets' test splits with bootstrap 95%
intervals. Two rows of headroom for the next steps are derived from them:

- three skills in one model: min(Japanese captions, Japanese math)  (VLM + Japanese LM + math LM)
- English kept while Japanese is gained: min(English captions, Japanese captions)

A world has headroom when no source and no untuned merge already scores well on either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmmerge.recipe import ModelEntry, Recipe

TASKS = ("ja_caption", "ja_vqa", "en_caption", "ja_math", "en_math")
METRICS = {"ja_caption": "exact_match", "ja_vqa": "exact_match", "en_caption": "exact_match",
           "ja_math": "accuracy_in_language", "en_math": "accuracy_in_language"}
SOURCES = {"vlm": "VLM", "ja_lm": "Japanese LM (+ VLM vision)", "math_lm": "math LM (+ VLM vision)",
           "base": "base LM (+ VLM vision)"}
UNTUNED = (  # (row label, method, models, weight, density)
    ("VLM + Japanese LM: task arithmetic (1, 1)", "task_arithmetic", ("vlm", "ja_lm"), 1.0, None),
    ("VLM + Japanese LM: TIES (w=1, d=0.5)", "ties", ("vlm", "ja_lm"), 1.0, 0.5),
    ("VLM + Japanese LM: DARE-TIES (w=1, d=0.5)", "dare_ties", ("vlm", "ja_lm"), 1.0, 0.5),
    ("Japanese LM + math LM: TIES (w=1, d=0.5)", "ties", ("ja_lm", "math_lm"), 1.0, 0.5),
    ("Japanese LM + math LM: DARE-TIES (w=1, d=0.5)", "dare_ties", ("ja_lm", "math_lm"), 1.0, 0.5),
    ("three sources: task arithmetic (1, 1, 1)", "task_arithmetic", ("vlm", "ja_lm", "math_lm"), 1.0, None),
    ("three sources: TIES (w=1, d=0.5)", "ties", ("vlm", "ja_lm", "math_lm"), 1.0, 0.5),
    ("three sources: DARE-TIES (w=1, d=0.5)", "dare_ties", ("vlm", "ja_lm", "math_lm"), 1.0, 0.5),
)
HEADROOM = {"three skills": ("ja_caption", "ja_math"), "English kept": ("en_caption", "ja_caption")}


@dataclass
class WorldRow:
    name: str
    kind: str  # source | untuned
    scores: dict[str, float] = field(default_factory=dict)  # task -> score (0-100)
    ci: dict[str, list[float]] = field(default_factory=dict)

    def headroom(self) -> dict[str, float]:
        return {name: min(self.scores[a], self.scores[b]) for name, (a, b) in HEADROOM.items()}

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "scores": self.scores, "ci": self.ci,
                "headroom": self.headroom()}


def row_recipes(paths) -> list[tuple[str, str, Recipe]]:
    folder = {name: str(getattr(paths, name)) for name in ("base", "vlm", "ja_lm", "math_lm")}
    rows = []
    for name, label in SOURCES.items():
        rows.append((label, "source", Recipe(merge_method="linear", host=folder["vlm"], dtype="float32",
                                             models=[ModelEntry(model=folder[name], parameters={"weight": 1.0})])))
    for label, method, members, weight, density in UNTUNED:
        params = {"weight": weight} | ({"density": density} if density is not None else {})
        rows.append((label, "untuned", Recipe(
            merge_method=method, base_model=folder["base"], host=folder["vlm"], dtype="float32", seed=0,
            models=[ModelEntry(model=folder[m], parameters=dict(params)) for m in members])))
    return rows


def score_world(paths, split: str = "test", batch_size: int = 100, eval_sets=None) -> list[WorldRow]:
    """Every row of the world table on `split` (LiveMerge on the VLM host, the product Evaluator)."""
    from vlmmerge.evaluation import Evaluator, load_task
    from vlmmerge.live import LiveMerge

    tasks = [load_task(str(eval_sets / t)) if eval_sets is not None else load_task(t) for t in TASKS]
    evaluator = Evaluator(tasks, split=split, batch_size=batch_size, seed=0, progress=False,
                          compute_ci=True)
    folders = [str(getattr(paths, n)) for n in ("base", "vlm", "ja_lm", "math_lm")]
    live = LiveMerge(folders, str(paths.vlm))
    rows = []
    for label, kind, recipe in row_recipes(paths):
        live.apply(recipe)
        result = evaluator.evaluate(live.model, live.processor, model_name=label)
        rows.append(WorldRow(
            label, kind,
            {t: round(result.scores[t][METRICS[t]], 2) for t in TASKS},
            {t: [round(v, 2) for v in result.ci[t][METRICS[t]]] for t in TASKS if result.ci.get(t)}))
    return rows


def _cell(row: dict, task: str) -> str:
    value = row["scores"][task]
    ci = row["ci"].get(task)
    return f"{value:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]" if ci and ci[1] > ci[0] else f"{value:.1f}"


def world_table_markdown(rows: list[dict]) -> str:
    """rows: `WorldRow.to_json()` dicts."""
    head = ("| model | kind | " + " | ".join(f"{t} ({METRICS[t]})" for t in TASKS)
            + " | " + " | ".join(HEADROOM) + " |")
    lines = [head, "|---|---|" + "---|" * (len(TASKS) + len(HEADROOM))]
    for row in rows:
        lines.append(f"| {row['name']} | {row['kind']} | " + " | ".join(_cell(row, t) for t in TASKS) + " | "
                     + " | ".join(f"{row['headroom'][h]:.1f}" for h in HEADROOM) + " |")
    return "\n".join(lines)
