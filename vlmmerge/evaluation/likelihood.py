"""Likelihood fitness: how probable a model finds the reference answers, without generating.

For each item the prompt is built exactly as the evaluator builds it (`prompts.build_prompt`
with the task's system message and template, image token and image for image tasks), the
reference answer is appended, and one forward pass gives the log-probability of every reference
token. An item's score is the mean log-probability of its reference tokens; the objective value is

    100 * exp(mean over items of the item scores)

(the geometric-mean probability of a reference token, in (0, 100], monotone in the mean
log-probability; >= 0 like every other objective, so hypervolumes stay meaningful).

    evolve:
      objectives: [{task: ja_caption, kind: likelihood}, {task: en_caption, kind: likelihood}]

`rank_correlation` measures on a run's journal how well it ranks candidates like the generated
metric does (Spearman's rho, scipy.stats).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from vlmmerge.evaluation.prompts import build_prompt, tokenizer_of


def _encode(processor: Any, text: str, image: Any, add_special_tokens: bool) -> dict[str, torch.Tensor]:
    if image is not None:
        enc = processor(text=[text], images=[[image]], return_tensors="pt", add_special_tokens=add_special_tokens)
    else:
        enc = tokenizer_of(processor)([text], return_tensors="pt", add_special_tokens=add_special_tokens)
    return {k: v for k, v in enc.items() if isinstance(v, torch.Tensor)}


def reference_logprobs(model: Any, processor: Any, task: Any, items: Sequence[Any]) -> list[float]:
    """Per item: the mean log-probability of its reference answer's tokens after its prompt."""
    with_image = task.config.modality == "image"
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    scores = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for item in items:
                prompt, fmt = build_prompt(processor, task.user_text(item), system=task.config.system,
                                           with_image=with_image, template=task.config.template)
                image = task.load_image(item) if with_image else None
                prefix = _encode(processor, prompt, image, fmt.add_special_tokens)["input_ids"].shape[1]
                inputs = _encode(processor, prompt + str(item.reference), image, fmt.add_special_tokens)
                ids = inputs["input_ids"]
                if ids.shape[1] <= prefix:
                    scores.append(0.0)  # an empty reference is certain
                    continue
                inputs = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
                          for k, v in inputs.items()}
                logits = model(**inputs).logits[0, prefix - 1 : -1].float()
                targets = inputs["input_ids"][0, prefix:]
                logp = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)
                scores.append(float(logp.mean()))
    finally:
        if was_training:
            model.train()
    return scores


def likelihood_value(item_logprobs: Sequence[float]) -> float:
    """The objective value of per-item mean log-probabilities: 100 * exp(their mean)."""
    return 100.0 * math.exp(sum(item_logprobs) / len(item_logprobs)) if item_logprobs else float("nan")


class LikelihoodScorer:
    """(model, processor) -> likelihood objective value on a task's fitness items."""

    def __init__(self, task: Any, items: Mapping[str, Sequence[Any]]):
        self.task = task
        self.items = list(items[task.name])

    def __call__(self, model: Any, processor: Any) -> float:
        return likelihood_value(reference_logprobs(model, processor, self.task, self.items))


def rank_correlation(entries: Sequence[Any], likelihood_of: Callable[[Any], float],
                     generated_of: Callable[[Any], float] | None = None) -> dict[str, Any]:
    """Spearman's rho between the likelihood objective and the generated metric over journal entries
    (`likelihood_of(entry)` scores the entry's candidate; `generated_of` default: its fitness)."""
    from scipy.stats import spearmanr

    entries = [e for e in entries if not e.failed]
    likelihood = [float(likelihood_of(e)) for e in entries]
    generated = [float(generated_of(e) if generated_of else e.fitness) for e in entries]
    result = spearmanr(likelihood, generated)
    return {"candidates": len(entries), "spearman": float(result.statistic), "p_value": float(result.pvalue),
            "likelihood": likelihood, "generated": generated}
