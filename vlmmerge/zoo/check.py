"""`vlmmerge zoo check`: does the miniature world make merging matter?

Scores every source model (the VLM; the Japanese, math and base LMs, each also with the VLM's
vision tower + projector attached for the image tasks), constant-answer baselines, untuned merges
(task arithmetic, TIES and DARE-TIES with default-style parameters) and a merge whose per-layer
task-arithmetic coefficients are searched (a coarse grid, then CMA-ES) on the fitness split, all on
the test split with bootstrap confidence intervals.

Two merges, as in the paper:
- VLM case: host = the VLM; its language model becomes base + sum_i c_i(layer) (theta_i - base)
  over {VLM language model, Japanese LM}; vision tower and projector stay the VLM's. Searched on
  ja_caption.
- LLM case: base + sum over {math LM, Japanese LM}; searched on ja_math.

The merge arithmetic here is deliberately small and self-contained (state-dict arithmetic on one
loaded model); the product's merge engine and evolutionary search live elsewhere.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from vlmmerge.zoo.build import ZooPaths

IMAGE_TASKS = ("ja_caption", "ja_vqa", "en_caption")
TEXT_TASKS = ("ja_math", "en_math")
LANGUAGE_PREFIX = "model.language_model."


# ----------------------------------------------------------------------------- language sides
def language_state(model) -> dict[str, Tensor]:
    """The language model's tensors under causal-LM names (model.layers.0..., lm_head.weight)."""
    state = model.state_dict()
    if any(k.startswith(LANGUAGE_PREFIX) for k in state):
        out = {"model." + k[len(LANGUAGE_PREFIX):]: v.detach().clone() for k, v in state.items()
               if k.startswith(LANGUAGE_PREFIX)}
        out["lm_head.weight"] = state["lm_head.weight"].detach().clone()
        return out
    return {k: v.detach().clone() for k, v in state.items()}


def language_parameters(model) -> dict[str, Tensor]:
    """Live tensors of the language side of `model` (LLaVA or causal LM), under causal-LM names."""
    state = model.state_dict(keep_vars=True)
    if any(k.startswith(LANGUAGE_PREFIX) for k in state):
        out = {"model." + k[len(LANGUAGE_PREFIX):]: v for k, v in state.items() if k.startswith(LANGUAGE_PREFIX)}
        out["lm_head.weight"] = state["lm_head.weight"]
        return out
    return dict(state)


def layer_group(name: str, num_layers: int) -> int:
    """0 for embeddings, 1..L for decoder layers, L+1 for the final norm and the head."""
    m = re.search(r"\.layers\.(\d+)\.", name)
    if m:
        return int(m.group(1)) + 1
    if "embed_tokens" in name:
        return 0
    return num_layers + 1


def group_names(num_layers: int) -> list[str]:
    return ["embeddings"] + [f"layer {i}" for i in range(num_layers)] + ["norm+head"]


# ----------------------------------------------------------------------------- merges (pure)
def task_arithmetic_state(base: dict[str, Tensor], finetuned: Sequence[dict[str, Tensor]],
                          coefficients: Sequence[Sequence[float]], num_layers: int) -> dict[str, Tensor]:
    """base + sum_i c_i[group(name)] (theta_i - base), per tensor; coefficients[i] has L+2 entries."""
    out = {}
    for name, b in base.items():
        g = layer_group(name, num_layers)
        merged = b.clone()
        for theta, c in zip(finetuned, coefficients):
            merged.add_(theta[name] - b, alpha=float(c[g]))
        out[name] = merged
    return out


def method_state(method: str, base: dict[str, Tensor], finetuned: Sequence[dict[str, Tensor]],
                 weights: Sequence[float], densities: Sequence[float], seed: int = 0) -> dict[str, Tensor]:
    """An untuned merge with vlmmerge's own operators (mergekit semantics)."""
    from vlmmerge.methods import task_vectors

    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, b in base.items():
        tensors = [t[name] for t in finetuned]
        if method == "ties":
            out[name] = task_vectors.ties(b, tensors, weights, densities)
        elif method == "dare_ties":
            out[name] = task_vectors.dare_ties(b, tensors, weights, densities, generator=generator)
        elif method == "task_arithmetic":
            out[name] = task_vectors.task_arithmetic(b, tensors, weights)
        else:
            raise ValueError(f"unknown method {method!r}")
    return out


def load_into(live: dict[str, Tensor], state: dict[str, Tensor]) -> None:
    with torch.no_grad():
        for name, tensor in live.items():
            tensor.copy_(state[name])


# ----------------------------------------------------------------------------- results
@dataclass
class Score:
    mean: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.mean:5.1f} [{self.low:5.1f}, {self.high:5.1f}]"


@dataclass
class Row:
    name: str
    kind: str  # source | baseline | untuned | searched
    scores: dict[str, Score] = field(default_factory=dict)  # task -> primary metric
    extra: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> all metrics
    note: str = ""


def _score_of(result, task: str, metric: str) -> Score:
    mean = result.scores[task][metric]
    low, high = result.ci.get(task, {}).get(metric, (math.nan, math.nan)) if result.ci else (math.nan, math.nan)
    return Score(mean, low, high)


# ----------------------------------------------------------------------------- the loaded world
class LoadedWorld:
    """The zoo's models in memory: one LLaVA host (the VLM's vision tower and projector) and one
    causal-LM host; any language state (a source or a merge) is written into both in place."""

    def __init__(self, paths: ZooPaths) -> None:
        from transformers import AutoProcessor, AutoTokenizer, LlamaForCausalLM, LlavaForConditionalGeneration

        self.paths = paths
        self.processor = AutoProcessor.from_pretrained(str(paths.vlm))
        self.tokenizer = AutoTokenizer.from_pretrained(str(paths.base))
        self.host = LlavaForConditionalGeneration.from_pretrained(str(paths.vlm)).eval()
        self.lm = LlamaForCausalLM.from_pretrained(str(paths.base)).eval()
        self.num_layers = self.lm.config.num_hidden_layers
        self.states = {
            "base": language_state(self.lm),
            "vlm": language_state(self.host),
            "ja_lm": language_state(LlamaForCausalLM.from_pretrained(str(paths.ja_lm))),
            "math_lm": language_state(LlamaForCausalLM.from_pretrained(str(paths.math_lm))),
        }
        self._live = (language_parameters(self.host), language_parameters(self.lm))

    def use(self, state: dict[str, Tensor]) -> None:
        for live in self._live:
            load_into(live, state)


@dataclass
class TaskGroup:
    """Evaluators for one split: image tasks run on the LLaVA host, text tasks on the causal LM."""

    image: object | None
    text: object | None

    @classmethod
    def build(cls, names: Sequence[str], split: str, eval_sets: Path | None, batch_size: int,
              compute_ci: bool) -> "TaskGroup":
        from vlmmerge.evaluation import Evaluator, load_task

        def load(name):
            return load_task(str(eval_sets / name)) if eval_sets is not None else load_task(name)

        tasks = [load(n) for n in names]
        image = [t for t in tasks if t.config.modality == "image"]
        text = [t for t in tasks if t.config.modality == "text"]
        kw = dict(split=split, batch_size=batch_size, progress=False, compute_ci=compute_ci)
        return cls(Evaluator(image, **kw) if image else None, Evaluator(text, **kw) if text else None)

    def evaluate(self, world: LoadedWorld) -> list:
        out = []
        if self.image is not None:
            out.append(self.image.evaluate(world.host, world.processor))
        if self.text is not None:
            out.append(self.text.evaluate(world.lm, world.tokenizer))
        return out

    def evaluators(self) -> list:
        return [e for e in (self.image, self.text) if e is not None]


def constant_baseline(fitness, test) -> tuple[dict[str, str], list]:
    """Per task, the single answer (one of the fitness references) that scores best on the fitness
    split under the primary metric, then scored on the test split."""
    chosen: dict[str, str] = {}
    for evaluator in fitness.evaluators():
        for task in evaluator.tasks:
            items = evaluator.items[task.name]
            candidates = list(dict.fromkeys(it.reference for it in items))
            best, best_score = candidates[0], -math.inf
            for cand in candidates:
                result = evaluator.score({t.name: [cand] * len(evaluator.items[t.name]) for t in evaluator.tasks})
                if result.primary(task.name) > best_score:
                    best, best_score = cand, result.primary(task.name)
            chosen[task.name] = best
    results = []
    for evaluator in test.evaluators():
        results.append(evaluator.score({t.name: [chosen[t.name]] * len(evaluator.items[t.name]) for t in evaluator.tasks},
                                       model_name="constant answer"))
    return chosen, results


# The score each case optimises and reports first: content in the right language.
OBJECTIVES = {"ja_caption": "exact_match", "ja_vqa": "exact_match", "en_caption": "exact_match",
              "ja_math": "accuracy_in_language", "en_math": "accuracy_in_language"}


@dataclass
class SearchResult:
    case: str
    models: list[str]  # the two fine-tuned sources whose task vectors are weighted
    objective: str  # task/metric
    best_coefficients: list[list[float]]  # per model, per layer group (embeddings, layers..., norm+head)
    best_fitness: float
    grid_best: list[float]
    grid_fitness: float
    journal: list[dict] = field(default_factory=list)


def search_merge(world: LoadedWorld, case: str, models: Sequence[str], task: str, eval_sets: Path | None,
                 grid: Sequence[float], cma_budget: int, seed: int, batch_size: int,
                 progress: bool = True) -> SearchResult:
    """A uniform (a, b) grid, then CMA-ES over per-layer-group coefficients started at the grid's best."""
    import cma
    from tqdm.auto import tqdm

    group = TaskGroup.build([task], "fitness", eval_sets, batch_size, compute_ci=False)
    metric = OBJECTIVES[task]
    base = world.states["base"]
    finetuned = [world.states[m] for m in models]
    n_groups = world.num_layers + 2
    journal: list[dict] = []

    def fitness(coefficients: list[list[float]], stage: str) -> float:
        world.use(task_arithmetic_state(base, finetuned, coefficients, world.num_layers))
        result = group.evaluate(world)[0]
        value = float(result.scores[task][metric])
        journal.append({"stage": stage, "coefficients": [[round(c, 4) for c in row] for row in coefficients],
                        "fitness": value})
        return value

    points = [(a, b) for a in grid for b in grid]
    bar = tqdm(total=len(points) + cma_budget, desc=f"search {case}", disable=not progress, leave=False)
    grid_best, grid_fit = (1.0, 1.0), -math.inf
    for a, b in points:
        value = fitness([[a] * n_groups, [b] * n_groups], "grid")
        bar.update(1)
        if value > grid_fit:
            grid_best, grid_fit = (a, b), value
    best = [[grid_best[0]] * n_groups, [grid_best[1]] * n_groups]
    best_fit = grid_fit
    if cma_budget > 0:
        x0 = [grid_best[0]] * n_groups + [grid_best[1]] * n_groups
        es = cma.CMAEvolutionStrategy(x0, 0.3, {"bounds": [0.0, 3.0], "popsize": 8, "seed": seed + 1,
                                                "verbose": -9, "maxfevals": cma_budget})
        used = 0
        while not es.stop() and used < cma_budget:
            xs = es.ask()
            values = []
            for x in xs:
                coeffs = [list(map(float, x[:n_groups])), list(map(float, x[n_groups:]))]
                value = fitness(coeffs, "cma")
                values.append(-value)
                used += 1
                bar.update(1)
                if value > best_fit:
                    best, best_fit = coeffs, value
            es.tell(xs, values)
    bar.close()
    bar.set_postfix(best=best_fit)
    return SearchResult(case=case, models=list(models), objective=f"{task}/{metric}",
                        best_coefficients=[[round(c, 4) for c in row] for row in best], best_fitness=best_fit,
                        grid_best=list(grid_best), grid_fitness=grid_fit, journal=journal)


# ----------------------------------------------------------------------------- CLIP
def clip_check(paths: ZooPaths, eval_sets: Path | None, split: str = "test") -> dict[str, dict[str, float]]:
    """Does the world's CLIP tell a scene's caption from another scene's? Per caption set: mean CLIP
    score of the reference and of a mismatched reference (the next item's), and how often the
    reference wins the pair."""
    from vlmmerge.evaluation import load_task
    from vlmmerge.evaluation.clip import get_clip_scorer

    scorer = get_clip_scorer(str(paths.clip))
    out = {}
    for name in ("en_caption", "ja_caption"):
        task = load_task(str(eval_sets / name)) if eval_sets is not None else load_task(name)
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


# ----------------------------------------------------------------------------- the check
@dataclass
class CheckReport:
    tasks: list[str]
    rows: list[Row]
    searches: list[SearchResult]
    constants: dict[str, str]
    seconds: float
    zoo: dict[str, str]
    clip: dict[str, dict[str, float]] = field(default_factory=dict)

    def clip_table(self) -> str:
        lines = ["| CLIP (test split) | reference caption | another scene's caption | reference wins (%) |",
                 "|---|---|---|---|"]
        for name, c in self.clip.items():
            lines.append(f"| {name} | {c['matched']:.1f} | {c['mismatched']:.1f} | {c['matched_wins']:.1f} |")
        return "\n".join(lines)

    def table(self) -> str:
        header = "| model | kind | " + " | ".join(f"{t} ({OBJECTIVES.get(t, 'primary')})" for t in self.tasks) + " |"
        lines = [header, "|" + "---|" * (len(self.tasks) + 2)]
        for row in self.rows:
            cells = [str(row.scores[t]) if t in row.scores else "—" for t in self.tasks]
            lines.append(f"| {row.name} | {row.kind} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def coefficients_table(self) -> str:
        out = []
        for s in self.searches:
            n = len(s.best_coefficients[0])
            names = group_names(n - 2)
            out.append(f"{s.case}: objective {s.objective} on fitness = {s.best_fitness:.1f} "
                       f"(grid best a={s.grid_best[0]}, b={s.grid_best[1]}: {s.grid_fitness:.1f})")
            out.append("| group | " + " | ".join(s.models) + " |")
            out.append("|---|" + "---|" * len(s.models))
            for g in range(n):
                out.append(f"| {names[g]} | " + " | ".join(f"{row[g]:.3f}" for row in s.best_coefficients) + " |")
            out.append("")
        return "\n".join(out)

    def to_json(self) -> dict:
        return {
            "tasks": self.tasks,
            "rows": [{"name": r.name, "kind": r.kind, "note": r.note,
                      "scores": {t: {"mean": s.mean, "ci": [s.low, s.high]} for t, s in r.scores.items()},
                      "all_metrics": r.extra} for r in self.rows],
            "searches": [s.__dict__ for s in self.searches],
            "constants": self.constants,
            "clip": self.clip,
            "seconds": self.seconds,
            "zoo": self.zoo,
        }


def _row(name: str, kind: str, results: Sequence, note: str = "") -> Row:
    row = Row(name, kind, note=note)
    for result in results:
        for task in result.scores:
            metric = OBJECTIVES.get(task, result.primary_metrics[task])
            row.scores[task] = _score_of(result, task, metric)
            row.extra[task] = dict(result.scores[task])
    return row


def run_check(paths: ZooPaths, *, eval_sets: Path | None = None, split: str = "test",
              grid: Sequence[float] = (0.0, 0.5, 1.0, 1.5, 2.0), cma_budget: int = 48, seed: int = 0,
              batch_size: int = 100, progress: bool = True, log: Callable[[str], None] = print) -> CheckReport:
    torch.manual_seed(seed)
    started = time.perf_counter()
    tasks = list(IMAGE_TASKS + TEXT_TASKS)
    world = LoadedWorld(paths)
    test = TaskGroup.build(tasks, split, eval_sets, batch_size, compute_ci=True)
    fitness = TaskGroup.build(tasks, "fitness", eval_sets, batch_size, compute_ci=False)
    rows: list[Row] = []

    def evaluate(name: str, kind: str, state: dict[str, Tensor], note: str = "") -> Row:
        world.use(state)
        row = _row(name, kind, test.evaluate(world), note)
        rows.append(row)
        log(f"  {name:38s} " + "  ".join(f"{t}={row.scores[t].mean:5.1f}" for t in tasks))
        return row

    log("sources (image tasks use the VLM's vision tower + projector):")
    evaluate("VLM", "source", world.states["vlm"])
    evaluate("Japanese LM (+ VLM vision)", "source", world.states["ja_lm"])
    evaluate("math LM (+ VLM vision)", "source", world.states["math_lm"])
    evaluate("base LM (+ VLM vision)", "reference", world.states["base"])
    constants, results = constant_baseline(fitness, test)
    rows.append(_row("constant answer", "baseline", results, note=json.dumps(constants, ensure_ascii=False)))
    log("  constant answer                        " + "  ".join(f"{t}={rows[-1].scores[t].mean:5.1f}" for t in tasks))

    cases = {"VLM case": (["vlm", "ja_lm"], "ja_caption"), "LLM case": (["math_lm", "ja_lm"], "ja_math")}
    base = world.states["base"]
    searches = []
    for case, (models, task) in cases.items():
        finetuned = [world.states[m] for m in models]
        label = " + ".join(models)
        log(f"{case}: untuned merges of {label}")
        evaluate(f"{case}: task arithmetic (1, 1)", "untuned",
                 method_state("task_arithmetic", base, finetuned, [1.0, 1.0], [1.0, 1.0]))
        evaluate(f"{case}: TIES (w=1, d=0.5)", "untuned",
                 method_state("ties", base, finetuned, [1.0, 1.0], [0.5, 0.5]))
        evaluate(f"{case}: DARE-TIES (w=1, d=0.5)", "untuned",
                 method_state("dare_ties", base, finetuned, [1.0, 1.0], [0.5, 0.5], seed=seed))
        log(f"{case}: searching per-layer task-arithmetic coefficients on {task} fitness")
        found = search_merge(world, case, models, task, eval_sets, grid, cma_budget, seed, batch_size, progress)
        searches.append(found)
        evaluate(f"{case}: searched merge", "searched",
                 task_arithmetic_state(base, finetuned, found.best_coefficients, world.num_layers),
                 note=json.dumps(found.best_coefficients))
    clip = clip_check(paths, eval_sets, split)
    log("CLIP: " + json.dumps(clip))
    return CheckReport(tasks=tasks, rows=rows, searches=searches, constants=constants,
                       seconds=round(time.perf_counter() - started, 1), zoo=paths.as_dict(), clip=clip)
