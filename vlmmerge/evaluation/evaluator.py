"""The evaluator: batched deterministic generation on a model in memory, then scoring.

Built for search loops: the same ``Evaluator`` is called on one loaded model whose weights change
between calls. Prompts are rendered, tokenised and images preprocessed once per processor and
kept; each call only runs ``generate`` (under ``torch.inference_mode``) and scores. No disk I/O
happens in ``evaluate`` (eval-set images are read on the first call only).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from vlmmerge.errors import VlmMergeError
from vlmmerge.evaluation.catalogue import load_task
from vlmmerge.evaluation.metrics_registry import METRICS, ScoringContext
from vlmmerge.evaluation.prompts import PromptFormat, build_prompt, tokenizer_of
from vlmmerge.evaluation.results import EvalResult
from vlmmerge.evaluation.stats import bootstrap_ci, mean
from vlmmerge.evaluation.tasks import GenerationSettings, Item, Task
from vlmmerge.evaluation.text import detector_label, get_language_detector


@dataclass
class _Batch:
    indices: list[int]
    inputs: dict[str, torch.Tensor]  # on CPU, as the processor returned them
    input_length: int


@dataclass
class _Encoded:
    prompts: list[str]
    prompt_format: PromptFormat
    batches: list[_Batch]


@contextlib.contextmanager
def left_padding(processor: Any) -> Iterator[Any]:
    """Pad on the left (decoder-only generation) with a pad token, restoring the tokenizer after."""
    tok = tokenizer_of(processor)
    old_side, old_pad = tok.padding_side, tok.pad_token
    tok.padding_side = "left"
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise VlmMergeError("the tokenizer has neither a pad nor an eos token; cannot pad batches")
        tok.pad_token = tok.eos_token
    try:
        yield tok
    finally:
        tok.padding_side = old_side
        if old_pad is None:
            tok.pad_token = None


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = len(text)
    for stop in stops:
        pos = text.find(stop)
        if stop and pos != -1:
            cut = min(cut, pos)
    return text[:cut].strip()


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters())
    dtype = param.dtype if param.dtype.is_floating_point else torch.float32
    return param.device, dtype


class Evaluator:
    """Score models on tasks.

    ``tasks``: Task objects or names/paths for ``load_task``. ``split``: "fitness" or "test".
    ``limit``: first N items of each task. ``generation``: overrides every task's settings
    (e.g. ``{"num_beams": 1, "max_new_tokens": 16}``). ``language_detector`` replaces every task's:
    "script", "fasttext" (bundled lid.176) or "fasttext:/path/model.bin". ``clip_model``/``clip_pretrained`` replace the tasks' CLIP model.
    """

    def __init__(self, tasks: Task | str | os.PathLike | Sequence[Task | str | os.PathLike], split: str = "fitness",
                 limit: int | None = None, batch_size: int = 8, seed: int = 0, progress: bool = True,
                 generation: Mapping[str, Any] | None = None, language_detector: str | None = None,
                 clip_model: str | None = None, clip_pretrained: str | None = None, compute_ci: bool = True,
                 n_bootstrap: int = 1000) -> None:
        if isinstance(tasks, (Task, str, os.PathLike)):
            tasks = [tasks]
        self.tasks: list[Task] = [t if isinstance(t, Task) else load_task(t) for t in tasks]
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise VlmMergeError(f"task names must be unique, got {names}")
        if batch_size < 1:
            raise VlmMergeError(f"batch_size must be >= 1, got {batch_size}")
        if limit is not None and limit < 1:
            raise VlmMergeError(f"limit must be >= 1, got {limit}")
        self.split, self.limit, self.batch_size, self.seed = split, limit, batch_size, seed
        self.progress, self.compute_ci, self.n_bootstrap = progress, compute_ci, n_bootstrap
        self.generation_overrides = dict(generation or {})
        self.detector = get_language_detector(language_detector) if language_detector else None
        self.clip_model, self.clip_pretrained = clip_model, clip_pretrained
        self.items: dict[str, list[Item]] = {}
        for task in self.tasks:
            items = task.items(split, limit)
            if not items:
                raise VlmMergeError(f"task {task.name!r} has no items in split {split!r}")
            self.items[task.name] = items
        self.settings = {t.name: self._settings(t) for t in self.tasks}
        self._encoded: dict[str, _Encoded] = {}
        self._encoded_for: Any = None  # the processor the cache was built with
        self._scoring_cache: dict[str, dict[str, Any]] = {}  # per task: e.g. CLIP image embeddings

    def _settings(self, task: Task) -> GenerationSettings:
        merged = {**task.config.generation.model_dump(), **self.generation_overrides}
        try:
            return GenerationSettings.model_validate(merged)
        except Exception as exc:
            raise VlmMergeError(f"invalid generation settings for task {task.name!r}: {exc}") from exc

    # ----------------------------------------------------------------- encoding (cached)
    def _encode(self, task: Task, processor: Any) -> _Encoded:
        if self._encoded_for is not processor:
            self._encoded = {}
            self._encoded_for = processor
        if task.name in self._encoded:
            return self._encoded[task.name]
        items = self.items[task.name]
        with_image = task.config.modality == "image"
        prompts, fmt = [], None
        for item in items:
            text, fmt = build_prompt(processor, task.user_text(item), system=task.config.system,
                                     with_image=with_image, template=task.config.template)
            prompts.append(text)
        tok = tokenizer_of(processor)
        # Similar lengths share a batch (less padding); a stable sort keeps this deterministic.
        lengths = [len(tok(p, add_special_tokens=fmt.add_special_tokens)["input_ids"]) for p in prompts]
        order = sorted(range(len(items)), key=lambda i: lengths[i])
        batches = []
        with left_padding(processor):
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                texts = [prompts[i] for i in idx]
                if with_image:
                    images = [[task.load_image(items[i])] for i in idx]  # one image per sample
                    enc = processor(text=texts, images=images, padding=True, return_tensors="pt",
                                    add_special_tokens=fmt.add_special_tokens)
                else:  # text only: the tokenizer alone (some processors insist on images)
                    enc = tok(texts, padding=True, return_tensors="pt", add_special_tokens=fmt.add_special_tokens)
                inputs = {k: v for k, v in enc.items() if isinstance(v, torch.Tensor)}
                batches.append(_Batch(indices=idx, inputs=inputs, input_length=inputs["input_ids"].shape[1]))
        encoded = _Encoded(prompts=prompts, prompt_format=fmt, batches=batches)
        self._encoded[task.name] = encoded
        return encoded

    # ----------------------------------------------------------------- generation
    def _generation_config(self, model: Any, settings: GenerationSettings, tok: Any):
        from transformers import GenerationConfig

        base = getattr(model, "generation_config", None)
        eos = getattr(base, "eos_token_id", None) if base is not None else None
        if eos is None:
            eos = tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
        kwargs = dict(
            max_new_tokens=settings.max_new_tokens, num_beams=settings.num_beams, do_sample=False,
            repetition_penalty=settings.repetition_penalty, no_repeat_ngram_size=settings.no_repeat_ngram_size,
            pad_token_id=pad, eos_token_id=eos, bos_token_id=getattr(base, "bos_token_id", None),
        )
        if settings.num_beams > 1:
            kwargs["length_penalty"] = settings.length_penalty
        return GenerationConfig(**kwargs)

    def generate(self, model: Any, processor: Any, task: Task | str) -> list[str]:
        """Predictions for the task's items, in item order."""
        task = self._task(task)
        settings = self.settings[task.name]
        encoded = self._encode(task, processor)
        tok = tokenizer_of(processor)
        device, dtype = _model_device_dtype(model)
        gen_config = self._generation_config(model, settings, tok)
        predictions: list[str | None] = [None] * len(self.items[task.name])
        bar = tqdm(total=len(predictions), desc=f"eval {task.name}", unit="item", disable=not self.progress,
                   leave=False)
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                for batch in encoded.batches:
                    inputs = {
                        k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
                        for k, v in batch.inputs.items()
                    }
                    out = model.generate(**inputs, generation_config=gen_config)
                    texts = tok.batch_decode(out[:, batch.input_length :], skip_special_tokens=True)
                    for i, text in zip(batch.indices, texts):
                        predictions[i] = cut_at_stop(text, settings.stop)
                    bar.update(len(batch.indices))
        finally:
            bar.close()
            if was_training:
                model.train()
        return [p if p is not None else "" for p in predictions]

    def _task(self, task: Task | str) -> Task:
        name = task if isinstance(task, str) else task.name
        for t in self.tasks:
            if t.name == name:
                return t
        raise VlmMergeError(f"task {name!r} is not one of this evaluator's tasks {[t.name for t in self.tasks]}")

    def _scoring_context(self, task: Task, device: str) -> ScoringContext:
        """The evaluator's detector and CLIP model override the task's (a CLIP override brings its own weights)."""
        clip = task.config.clip
        model = self.clip_model or (clip.model if clip else None)
        pretrained = self.clip_pretrained if self.clip_model else (clip.pretrained if clip else None)
        return ScoringContext(
            task_name=task.name, language=task.config.language,
            detector=self.detector if self.detector is not None else task.config.language_detector,
            clip_model=model, clip_pretrained=pretrained, clip_prefix=clip.prefix if clip else "",
            load_image=task.load_image, device=device, extras=self._scoring_cache.setdefault(task.name, {}),
        )

    # ----------------------------------------------------------------- public entry points
    def evaluate(self, model: Any, processor: Any, model_name: str | None = None) -> EvalResult:
        """Generate and score every task. ``model`` may have had its weights changed in place since
        the last call; nothing is reloaded."""
        torch.manual_seed(self.seed)
        predictions, timings, formats = {}, {}, {}
        for task in self.tasks:
            start = time.perf_counter()
            predictions[task.name] = self.generate(model, processor, task)
            timings[task.name] = time.perf_counter() - start
            formats[task.name] = self._encoded[task.name].prompt_format.kind
        prompts = {name: enc.prompts for name, enc in self._encoded.items()}
        device = str(_model_device_dtype(model)[0])
        return self.score(predictions, model_name=model_name, prompts=prompts, device=device,
                          meta={"generation_seconds": timings, "prompt_format": formats})

    def score(self, predictions: Mapping[str, Sequence[str]], model_name: str | None = None,
              prompts: Mapping[str, Sequence[str]] | None = None, device: str = "cpu",
              meta: Mapping[str, Any] | None = None) -> EvalResult:
        """Score given predictions (one per item, in item order) — for baselines and saved outputs."""
        scores: dict[str, dict[str, float]] = {}
        cis: dict[str, dict[str, tuple[float, float]]] = {}
        slices: dict[str, dict[str, dict[str, float]]] = {}
        samples: list[dict[str, Any]] = []
        primary: dict[str, str] = {}
        images: dict[tuple[str, str], Any] = {}
        for task in self.tasks:
            items = self.items[task.name]
            preds = list(predictions.get(task.name, []))
            if len(preds) != len(items):
                raise VlmMergeError(f"task {task.name!r}: {len(preds)} predictions for {len(items)} items")
            ctx = self._scoring_context(task, device)
            per_item: list[dict[str, float | None]] = [{} for _ in items]
            for metric in task.config.metrics:
                for row, values in zip(per_item, METRICS[metric].score(preds, items, ctx)):
                    row.update(values)
            keys = list(per_item[0].keys())
            primary[task.name] = task.primary_metric
            scores[task.name] = {k: mean([r[k] for r in per_item]) for k in keys}
            if self.compute_ci:
                cis[task.name] = {k: bootstrap_ci([r[k] for r in per_item], n=self.n_bootstrap, seed=self.seed)
                                  for k in keys}
            by_slice: dict[str, list[int]] = {}
            for i, item in enumerate(items):
                if item.slice is not None:
                    by_slice.setdefault(item.slice, []).append(i)
            if by_slice:
                slices[task.name] = {s: {k: mean([per_item[i][k] for i in idx]) for k in keys} | {"n": len(idx)}
                                     for s, idx in sorted(by_slice.items())}
            for i, (item, pred) in enumerate(zip(items, preds)):
                path = task.image_path(item)
                samples.append({
                    "task": task.name, "id": item.id, "split": self.split,
                    "input": task.user_text(item),
                    "prompt": prompts[task.name][i] if prompts and task.name in prompts else task.user_text(item),
                    "question": item.question, "prediction": pred, "reference": item.reference,
                    "references": item.all_references, "answer": item.answer, "concepts": item.concepts or None,
                    "image": str(path) if path is not None else item.image, "slice": item.slice,
                    "scores": per_item[i],
                })
                if item.image is not None:
                    images[(task.name, item.id)] = path if path is not None else task.memory_images.get(item.id)
        info = {
            "model": model_name, "split": self.split, "limit": self.limit, "seed": self.seed,
            "batch_size": self.batch_size, "n_items": {t.name: len(self.items[t.name]) for t in self.tasks},
            "generation": {t.name: self.settings[t.name].model_dump() for t in self.tasks},
            "metrics": {t.name: t.config.metrics for t in self.tasks},
            "language": {t.name: t.config.language for t in self.tasks},
            "language_detector": {t.name: detector_label(t.config.language_detector if self.detector is None
                                                         else self.detector) for t in self.tasks},
            "bootstrap": {"n": self.n_bootstrap, "seed": self.seed, "interval": 0.95} if self.compute_ci else None,
            **dict(meta or {}),
        }
        return EvalResult(scores=scores, ci=cis, samples=samples, primary_metrics=primary, slices=slices,
                          meta=info, images=images)

