"""The metric names a task.yaml may use and the score names each produces: data only, so eval-set
loading can check a task's metrics without importing any scoring code."""

from __future__ import annotations

from collections.abc import Sequence

from vlmmerge.errors import EvalSetError

# metric -> (score names it produces; the first is its main score, description)
METRIC_TABLE: dict[str, tuple[tuple[str, ...], str]] = {
    "rouge_ja": (("rougeL",), "ROUGE-L F x 100 on MeCab tokens, non-Japanese answers to Japanese references "
                              "count as empty"),
    "rouge": (("rougeL",), "ROUGE-L F x 100 with rouge_score's default (English) tokenizer"),
    "exact_match": (("exact_match",), "100 if the prediction equals a reference after NFKC, case, space and "
                                      "punctuation normalisation"),
    "concepts": (("concepts",), "percentage of the item's concept strings present in the prediction"),
    "math_answer": (("accuracy", "accuracy_in_language"), "final-number accuracy, and the same counting only "
                                                          "replies in the task's language"),
    "clip_score": (("clip_score",), "CLIPScore: 100 * 2.5 * max(cos(image, text), 0) with an open_clip model"),
}
METRIC_KEYS: dict[str, tuple[str, ...]] = {name: keys for name, (keys, _) in METRIC_TABLE.items()}


def metric_keys(metric_names: Sequence[str]) -> list[str]:
    """Score names a task produces, in order; an unknown metric or two producing the same name is an error."""
    unknown = [m for m in metric_names if m not in METRIC_KEYS]
    if unknown:
        raise EvalSetError(f"unknown metric(s) {unknown}; available: {sorted(METRIC_KEYS)}")
    keys: list[str] = []
    for name in metric_names:
        for key in METRIC_KEYS[name]:
            if key in keys:
                raise EvalSetError(f"metrics {list(metric_names)} both produce {key!r}; use only one of them")
            keys.append(key)
    return keys
