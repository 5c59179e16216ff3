"""Likelihood fitness: the one-pass reference log-probability equals a token-by-token recomputation
on the evaluator's own prompts (text and image tasks), and its rank correlation is Spearman's rho."""

from __future__ import annotations

import math

import pytest
import torch

from vlmmerge.evaluation import Evaluator, load_task
from vlmmerge.evaluation.likelihood import LikelihoodScorer, likelihood_value, rank_correlation, reference_logprobs
from vlmmerge.evaluation.prompts import tokenizer_of
from vlmmerge.evaluation.toy import write_toy_caption_set, write_toy_math_set
from vlmmerge.search.journal import JournalEntry
from vlmmerge.testing.tiny import build_tiny_model, tiny_processor

torch.set_num_threads(1)


def _token_by_token(model, processor, prompt, reference, image, add_special):
    """Sum of log p(token_t | tokens < t) over the reference tokens, one forward per prefix."""
    def enc(text):
        if image is not None:
            return processor(text=[text], images=[[image]], return_tensors="pt", add_special_tokens=add_special)
        return tokenizer_of(processor)([text], return_tensors="pt", add_special_tokens=add_special)

    prefix = enc(prompt)["input_ids"].shape[1]
    full = enc(prompt + reference)
    ids = full["input_ids"]
    total = []
    with torch.inference_mode():
        for t in range(prefix, ids.shape[1]):
            kwargs = {"input_ids": ids[:, :t], "attention_mask": full["attention_mask"][:, :t]}
            if image is not None:
                kwargs["pixel_values"] = full["pixel_values"]
            logits = model(**kwargs).logits[0, -1].float()
            total.append(float(torch.log_softmax(logits, -1)[ids[0, t]]))
    return sum(total) / len(total)


@pytest.mark.parametrize("kind", ["llama", "llava"])
def test_one_pass_logprob_equals_token_by_token(tmp_path, kind):
    if kind == "llava":
        task = load_task(write_toy_caption_set(tmp_path / "cap", name="cap"))
    else:
        task = load_task(write_toy_math_set(tmp_path / "math", name="math"))
    model, processor = build_tiny_model(kind, seed=0), tiny_processor(kind)
    evaluator = Evaluator([task], split="fitness", progress=False, compute_ci=False)
    items = evaluator.items[task.name]
    result = evaluator.evaluate(model, processor)
    prompts = [s["prompt"] for s in result.samples]
    scores = reference_logprobs(model, processor, task, items)
    assert len(scores) == len(items)
    fmt_special = evaluator._encoded[task.name].prompt_format.add_special_tokens
    for item, prompt, score in zip(items, prompts, scores):
        image = task.load_image(item) if kind == "llava" else None
        expected = _token_by_token(model, processor, prompt, str(item.reference), image, fmt_special)
        assert score == pytest.approx(expected, abs=1e-4)
        assert score < 0
    scorer = LikelihoodScorer(task, evaluator.items)
    assert scorer(model, processor) == pytest.approx(100 * math.exp(sum(scores) / len(scores)), rel=1e-6)


def test_likelihood_value_and_rank_correlation():
    assert likelihood_value([0.0, 0.0]) == 100.0
    assert likelihood_value([math.log(0.5)] * 3) == pytest.approx(50.0)
    entries = [JournalEntry("cma", i, 0, [0.0], {}, f) for i, f in enumerate([3.0, 1.0, 2.0, 5.0])]
    same = rank_correlation(entries, lambda e: e.fitness ** 3)
    assert same["spearman"] == pytest.approx(1.0) and same["candidates"] == 4
    reverse = rank_correlation(entries, lambda e: -e.fitness)
    assert reverse["spearman"] == pytest.approx(-1.0)
