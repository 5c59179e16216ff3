"""Metrics by name, as used in task.yaml. Each turns (predictions, items) into per-item score dicts;
the `evaluate` modules in ``modules/`` wrap the same scoring functions. The names and score keys
are data in ``metric_names``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from vlmmerge.errors import EvalSetError
from vlmmerge.evaluation import scoring
from vlmmerge.evaluation.metric_names import METRIC_TABLE, metric_keys

if TYPE_CHECKING:
    from vlmmerge.evaluation.tasks import Item

__all__ = ["METRICS", "MetricSpec", "ScoringContext", "metric_keys"]


@dataclass
class ScoringContext:
    """What a metric needs to know about the task it scores, already resolved by the caller."""

    task_name: str
    language: str = "ja"
    detector: Any = None  # LanguageDetector or spec string (None: the default detector)
    clip_model: str | None = None
    clip_pretrained: str | None = None
    clip_prefix: str = ""
    load_image: Callable[["Item"], Image.Image] | None = None
    device: str = "cpu"
    extras: dict[str, Any] = field(default_factory=dict)


ScoreFn = Callable[[Sequence[str], Sequence["Item"], ScoringContext], list[dict[str, float | None]]]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    keys: tuple[str, ...]  # score names it produces; keys[0] is its main score
    description: str
    score: ScoreFn


def _rouge_ja(preds, items, ctx):
    refs = [it.all_references for it in items]
    vals = scoring.rouge_l_scores(preds, refs, tokenizer="mecab", language_gate="ja", detector=ctx.detector)
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
    rows = scoring.math_answer_scores(preds, [it.answer for it in items], language=ctx.language,
                                      detector=ctx.detector)
    return [{"accuracy": r["accuracy"], "accuracy_in_language": r["accuracy_in_language"]} for r in rows]


def _clip_score(preds, items, ctx):
    from vlmmerge.evaluation.clip import get_clip_scorer  # open_clip is heavy; only CLIP tasks load it

    if ctx.clip_model is None:
        raise EvalSetError(f"task {ctx.task_name!r} uses clip_score but names no CLIP model")
    scorer = get_clip_scorer(ctx.clip_model, ctx.clip_pretrained, device=ctx.device, prefix=ctx.clip_prefix)
    # The Evaluator's items and images never change, so their embeddings are computed once.
    cache = ctx.extras.setdefault("clip_image_cache", {})
    keys = [(scorer.spec, ctx.task_name, it.id) for it in items]
    if all(k in cache for k in keys):
        images = [None] * len(items)
    else:
        if ctx.load_image is None:
            raise EvalSetError(f"task {ctx.task_name!r} uses clip_score but the scoring context cannot load images")
        images = [ctx.load_image(it) for it in items]
    return [{"clip_score": v} for v in scorer.scores(images, list(preds), keys=keys, cache=cache)]


_SCORERS: dict[str, ScoreFn] = {
    "rouge_ja": _rouge_ja, "rouge": _rouge, "exact_match": _exact_match, "concepts": _concepts,
    "math_answer": _math_answer, "clip_score": _clip_score,
}
METRICS: dict[str, MetricSpec] = {
    name: MetricSpec(name, keys, description, _SCORERS[name]) for name, (keys, description) in METRIC_TABLE.items()
}
