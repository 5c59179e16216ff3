"""Metrics by name, as used in task.yaml. Each turns (predictions, items) into per-item score dicts;
the `evaluate` modules in ``modules/`` wrap the same scoring functions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vlmmerge.errors import EvalSetError
from vlmmerge.evaluation import scoring

if TYPE_CHECKING:
    from vlmmerge.evaluation.tasks import Item, Task


@dataclass
class ScoringContext:
    task: "Task"
    detector: Any = None  # LanguageDetector or spec string
    clip_model: str | None = None  # overrides the task's clip section
    clip_pretrained: str | None = None
    device: str = "cpu"
    extras: dict[str, Any] = field(default_factory=dict)


ScoreFn = Callable[[Sequence[str], Sequence["Item"], ScoringContext], list[dict[str, float | None]]]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    keys: tuple[str, ...]  # score names it produces; keys[0] is its main score
    description: str
    score: ScoreFn


def _detector(ctx: ScoringContext):
    return ctx.detector if ctx.detector is not None else ctx.task.config.language_detector


def _rouge_ja(preds, items, ctx):
    refs = [it.all_references for it in items]
    vals = scoring.rouge_l_scores(preds, refs, tokenizer="mecab", language_gate="ja", detector=_detector(ctx))
    return [{"rougeL": v} for v in vals]


def _rouge(preds, items, ctx):
    refs = [it.all_references for it in items]
    vals = scoring.rouge_l_scores(preds, refs, tokenizer="default", language_gate=None)
    return [{"rougeL": v} for v in vals]


def _exact_match(preds, items, ctx):
    return [{"exact_match": v} for v in scoring.exact_match_scores(preds, [it.all_references for it in items])]


def _concepts(preds, items, ctx):
    return [{"concepts": v} for v in scoring.concept_scores(preds, [it.concepts for it in items])]


def _math_answer(preds, items, ctx):
    rows = scoring.math_answer_scores(preds, [it.answer for it in items], language=ctx.task.config.language,
                                      detector=_detector(ctx))
    return [{"accuracy": r["accuracy"], "accuracy_in_language": r["accuracy_in_language"]} for r in rows]


def _clip_score(preds, items, ctx):
    from vlmmerge.evaluation.clip import get_clip_scorer

    clip = ctx.task.config.clip
    model = ctx.clip_model or (clip.model if clip else None)
    pretrained = ctx.clip_pretrained if ctx.clip_model else (clip.pretrained if clip else None)
    if model is None:
        raise EvalSetError(f"task {ctx.task.name!r} uses clip_score but names no CLIP model")
    scorer = get_clip_scorer(model, pretrained, device=ctx.device, prefix=clip.prefix if clip else "")
    # The Evaluator's items and images never change, so their embeddings are computed once.
    cache = ctx.extras.setdefault("clip_image_cache", {})
    keys = [(scorer.spec, ctx.task.name, it.id) for it in items]
    if all(k in cache for k in keys):
        images = [None] * len(items)
    else:
        images = [ctx.task.load_image(it) for it in items]
    return [{"clip_score": v} for v in scorer.scores(images, list(preds), keys=keys, cache=cache)]


METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec("rouge_ja", ("rougeL",), "ROUGE-L F x 100 on MeCab tokens, non-Japanese answers to Japanese references count as empty", _rouge_ja),
        MetricSpec("rouge", ("rougeL",), "ROUGE-L F x 100 with rouge_score's default (English) tokenizer", _rouge),
        MetricSpec("exact_match", ("exact_match",), "100 if the prediction equals a reference after NFKC, case, space and punctuation normalisation", _exact_match),
        MetricSpec("concepts", ("concepts",), "percentage of the item's concept strings present in the prediction", _concepts),
        MetricSpec("math_answer", ("accuracy", "accuracy_in_language"), "final-number accuracy, and the same counting only replies in the task's language", _math_answer),
        MetricSpec("clip_score", ("clip_score",), "CLIPScore: 100 * 2.5 * max(cos(image, text), 0) with an open_clip model", _clip_score),
    )
}


def metric_keys(metric_names: Sequence[str]) -> list[str]:
    """Score names a task produces, in order; two metrics producing the same name are an error."""
    keys: list[str] = []
    for name in metric_names:
        for key in METRICS[name].keys:
            if key in keys:
                from vlmmerge.errors import EvalSetError

                raise EvalSetError(f"metrics {list(metric_names)} both produce {key!r}; use only one of them")
            keys.append(key)
    return keys
