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
