"""lm-evaluation-harness tasks as objectives: a tiny custom multiple-choice task on local jsonl data,
offline, scored on an in-memory model; the accuracy equals an independent argmax over the
choices' log-likelihoods, and the metric lookup names what is missing."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# lm_eval: the `lmeval` extra, part of the `test` extra (CI installs it)
from vlmmerge.errors import RecipeError  # noqa: E402
from vlmmerge.evaluation.lmeval import LmEvalScorer, metric_value  # noqa: E402
from vlmmerge.testing.tiny import build_tiny_model, tiny_processor  # noqa: E402

torch.set_num_threads(1)

ROWS = [{"question": f"{a} plus {b} is", "choices": [str(a + b), str(a + b + 1), str(a * b + 3)], "label": i % 3}
        for i, (a, b) in enumerate([(1, 2), (3, 4), (2, 2), (5, 1), (0, 3), (4, 4), (6, 2), (7, 1)])]


def _task(folder):
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (folder / "tiny_sum.yaml").write_text(
        "task: tiny_sum\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    return folder


def _loglikelihood(model, tok, context, continuation):
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([whole])
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(float(logp[t - 1, whole[t]]) for t in range(len(ctx), len(whole)))


def test_lmeval_task_on_local_data_matches_an_independent_accuracy(tmp_path):
    folder = _task(tmp_path / "tasks")
    model, tok = build_tiny_model("llama", seed=0), tiny_processor("llama")
    scorer = LmEvalScorer("tiny_sum", "acc", str(folder))
    value = scorer(model, tok)
    correct = 0
    for row in ROWS:
        scores = [_loglikelihood(model, tok, row["question"], " " + c) for c in row["choices"]]
        correct += max(range(len(scores)), key=scores.__getitem__) == row["label"]
    assert value == pytest.approx(100.0 * correct / len(ROWS))


def test_metric_lookup():
    results = {"t": {"alias": "t", "acc,none": 0.25, "acc_stderr,none": 0.1}}
    assert metric_value(results, "t", "acc") == 25.0 and metric_value(results, "t", None) == 25.0
    with pytest.raises(RecipeError, match="no metric 'f1'"):
        metric_value(results, "t", "f1")
    with pytest.raises(RecipeError, match="no results for task 'u'"):
        metric_value(results, "u", None)
