"""Markdown and single-file HTML reports (images embedded as base64), for one model or several.

Each report is rendered once from a Jinja2 template (`templates/`) and a plain context built
here; the comparison's paired-difference table is part of that one rendering.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from PIL import Image

from vlmmerge.errors import VlmMergeError
from vlmmerge.evaluation.results import EvalResult, _jsonable, write_atomically
from vlmmerge.evaluation.stats import PairedDiff, paired_bootstrap_diff

THUMBNAIL = 224

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _clean(text: Any) -> str:
    """Control characters (invalid in HTML) shown as U+FFFD; the templates escape the rest."""
    return _CONTROL.sub("\ufffd", str(text))


@functools.cache
def _templates(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("vlmmerge.evaluation", "templates"), autoescape=autoescape,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
    )
    env.filters["clean"] = _clean
    return env


def _render(template: str, **context: Any) -> str:
    return _templates(template.endswith(".html.jinja")).get_template(template).render(**context)


def _fmt(value: float | None, digits: int = 2, sign: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:{sign}.{digits}f}"


def _fmt_ci(ci: Any, sign: str = "") -> str:
    if not ci:
        return "-"
    lo, hi = ci
    if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)):
        return "-"
    return f"[{lo:{sign}.2f}, {hi:{sign}.2f}]"


def image_data_uri(source: Any) -> str | None:
    """A small JPEG/PNG data URI of an image path or PIL image, or None if it cannot be read."""
    try:
        if isinstance(source, (str, os.PathLike)):
            with Image.open(source) as im:
                im = im.convert("RGB")
        elif isinstance(source, Image.Image):
            im = source.convert("RGB")
        else:
            return None
    except (OSError, ValueError):
        return None
    small = max(im.size) <= 64
    im.thumbnail((THUMBNAIL, THUMBNAIL))
    buf = io.BytesIO()
    if small:
        im.save(buf, format="PNG")
        mime = "image/png"
    else:
        im.save(buf, format="JPEG", quality=85)
        mime = "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


# ------------------------------------------------------------------------------ what the templates show
def _n_items(result: EvalResult, task: str) -> int:
    return sum(1 for s in result.samples if s["task"] == task)


def _score_rows(result: EvalResult) -> list[dict[str, Any]]:
    return [
        {"task": task, "metric": metric, "primary": metric == result.primary_metrics.get(task), "score": _fmt(value),
         "ci": _fmt_ci(result.ci.get(task, {}).get(metric)), "n": _n_items(result, task)}
        for task, metrics in result.scores.items() for metric, value in metrics.items()
    ]


def _slice_rows(result: EvalResult) -> list[dict[str, Any]]:
    return [
        {"task": task, "slice": slice_name, "metric": metric, "score": _fmt(value), "n": int(values["n"])}
        for task, by_slice in result.slices.items() for slice_name, values in by_slice.items()
        for metric, value in values.items() if metric != "n"
    ]


def _reference_text(sample: Mapping[str, Any]) -> str:
    text = sample["reference"]
    if sample.get("answer") and sample["answer"] not in text:
        text += f"\n(answer: {sample['answer']})"
    return text


def _image(result: EvalResult, sample: Mapping[str, Any]) -> dict[str, Any] | None:
    """None: the item has no image; uri None: its image could not be read (its path is shown)."""
    source = result.images.get((sample["task"], sample["id"]))
    if source is None:
        return None
    uri = image_data_uri(source)
    return {"uri": uri, "alt": str(sample["id"]) if uri else str(sample.get("image"))}


def _item(result: EvalResult, sample: Mapping[str, Any]) -> dict[str, Any]:
    prompt = sample.get("input") or sample.get("question") or sample.get("prompt") or ""
    return {"image": _image(result, sample), "id": str(sample["id"]), "prompt": str(prompt),
            "reference": _reference_text(sample)}


def _prediction(sample: Mapping[str, Any]) -> dict[str, Any]:
    return {"prediction": sample["prediction"], "scores": [(k, _fmt(v, 1)) for k, v in sample["scores"].items()]}


def _single_context(result: EvalResult, title: str) -> dict[str, Any]:
    meta = result.meta
    tasks = [{"name": task, "samples": [{**_item(result, s), **_prediction(s)} for s in result.samples if s["task"] == task]}
             for task in result.scores]
    return {"title": title, "split": meta.get("split"), "seed": meta.get("seed"),
            "generation": json.dumps(_jsonable(meta.get("generation", {})), ensure_ascii=False),
            "score_rows": _score_rows(result), "slice_rows": _slice_rows(result), "tasks": tasks}


def render_markdown(result: EvalResult, title: str | None = None) -> str:
    title = title or f"Evaluation: {result.meta.get('model') or 'model'}"
    return _render("scores.md.jinja", **_single_context(result, title))


def render_html(result: EvalResult, title: str | None = None) -> str:
    title = title or f"Evaluation: {result.model_name or 'model'}"
    return _render("report.html.jinja", **_single_context(result, title))


# ------------------------------------------------------------------------------------------ comparisons
@dataclass(frozen=True)
class Difference:
    """Paired bootstrap of `model` - `other` on one task's metric, items matched by id."""

    task: str
    metric: str
    model: str
    other: str
    diff: PairedDiff

    @property
    def better(self) -> bool:
        """The 95% interval lies above 0."""
        return self.diff.lo > 0


def paired_differences(
    results: Mapping[str, EvalResult], pairs: Sequence[tuple[str, str]] | None = None,
    metrics: Mapping[str, str | None] | None = None, seed: int = 0,
) -> list[Difference]:
    """One Difference per task and pair (model, other); default pairs: every model against the
    first. `metrics`: task -> metric (None or absent: the first model's primary metric)."""
    names = list(results)
    pairs = pairs if pairs is not None else [(name, names[0]) for name in names[1:]]
    first = results[names[0]]
    out = []
    for task, primary in first.primary_metrics.items():
        metric = (metrics or {}).get(task) or primary
        for model, other in pairs:
            mine = {s["id"]: s["scores"].get(metric) for s in results[model].samples if s["task"] == task}
            theirs = {s["id"]: s["scores"].get(metric) for s in results[other].samples if s["task"] == task}
            ids = [i for i in mine if i in theirs]
            if ids:
                diff = paired_bootstrap_diff([mine[i] for i in ids], [theirs[i] for i in ids], seed=seed)
                out.append(Difference(task, metric, model, other, diff))
    return out


def _differences_context(differences: Sequence[Difference]) -> dict[str, Any]:
    models, others = {d.model for d in differences}, {d.other for d in differences}
    if len(models) == 1:
        model = next(iter(models))
        heading = f"{model[:1].upper() + model[1:]} against every other model"
    elif len(others) == 1:
        heading = f"Every model against {next(iter(others))}"
    else:
        heading = "Paired differences"
    note = ("Paired bootstrap difference (model − other) of each task's metric over the items both answered, "
            "with its 95% interval; better: the interval lies above 0.")
    rows = [{"task": d.task, "metric": d.metric, "model": d.model, "other": d.other, "diff": _fmt(d.diff.mean_diff, sign="+"),
             "ci": _fmt_ci((d.diff.lo, d.diff.hi), sign="+"), "p": _fmt(d.diff.p_value, 3),
             "better": "yes" if d.better else "no"} for d in differences]
    return {"heading": heading, "note": note, "rows": rows}


def _comparison_context(results: Mapping[str, EvalResult], title: str, differences: Sequence[Difference],
                        with_items: bool = True) -> dict[str, Any]:
    names = list(results)
    first = results[names[0]]
    score_rows = [
        {"task": task, "metric": metric, "primary": metric == first.primary_metrics.get(task),
         "cells": [{"score": _fmt(results[n].scores.get(task, {}).get(metric)),
                    "ci": _fmt_ci(results[n].ci.get(task, {}).get(metric))} for n in names]}
        for task, metrics in first.scores.items() for metric in metrics
    ]
    tasks = []
    for task in first.scores if with_items else ():
        by_model = {n: {s["id"]: s for s in results[n].samples if s["task"] == task} for n in names}
        samples = [
            {**_item(first, s), "cells": [_prediction(by_model[n][s["id"]]) if s["id"] in by_model[n] else None
                                          for n in names]}
            for s in first.samples if s["task"] == task
        ]
        tasks.append({"name": task, "samples": samples})
    return {"title": title, "names": names, "score_rows": score_rows, "tasks": tasks,
            "differences": _differences_context(differences)}


# A picture linked from a report: (caption, path relative to the report's folder), e.g. a Pareto front.
Figure = tuple[str, str]


def comparison_markdown(results: Mapping[str, EvalResult], title: str = "Model comparison",
                        differences: Sequence[Difference] | None = None, figures: Sequence[Figure] = ()) -> str:
    differences = paired_differences(results) if differences is None else differences
    return _render("comparison.md.jinja", figures=list(figures),
                   **_comparison_context(results, title, differences, with_items=False))


def comparison_html(results: Mapping[str, EvalResult], title: str = "Model comparison",
                    differences: Sequence[Difference] | None = None, figures: Sequence[Figure] = ()) -> str:
    differences = paired_differences(results) if differences is None else differences
    return _render("comparison.html.jinja", figures=list(figures), **_comparison_context(results, title, differences))


def save_result(result: EvalResult, out_dir: str | os.PathLike, title: str | None = None) -> Path:
    """scores.json, samples.jsonl, scores.md and report.html (images embedded) in ``out_dir``,
    atomically; ``EvalResult.load`` reads the folder back."""

    def write(tmp: Path) -> None:
        (tmp / "scores.json").write_text(json.dumps(_jsonable(result.to_json()), ensure_ascii=False, indent=2) + "\n",
                                         encoding="utf-8")
        with (tmp / "samples.jsonl").open("w", encoding="utf-8") as fh:
            for sample in result.samples:
                fh.write(json.dumps(_jsonable(sample), ensure_ascii=False) + "\n")
        (tmp / "scores.md").write_text(render_markdown(result, title=title), encoding="utf-8")
        (tmp / "report.html").write_text(render_html(result, title=title), encoding="utf-8")

    return write_atomically(out_dir, write)


def write_comparison_report(results: Mapping[str, EvalResult], out_dir: str | os.PathLike,
                            title: str = "Model comparison", differences: Sequence[Difference] | None = None,
                            figures: Sequence[Figure] = ()) -> Path:
    """comparison.md, comparison.html and comparison.json (scores of every model) in ``out_dir``.
    ``differences``: the paired-difference table (default: every model against the first);
    ``figures``: pictures linked from the report (caption, path relative to ``out_dir``)."""
    if not results:
        raise VlmMergeError("write_comparison_report needs at least one result")
    differences = paired_differences(results) if differences is None else differences

    def write(tmp: Path) -> None:
        (tmp / "comparison.md").write_text(comparison_markdown(results, title, differences, figures), encoding="utf-8")
        (tmp / "comparison.html").write_text(comparison_html(results, title, differences, figures), encoding="utf-8")
        data = {name: r.to_json() for name, r in results.items()}
        (tmp / "comparison.json").write_text(json.dumps(_jsonable(data), ensure_ascii=False, indent=2) + "\n",
                                             encoding="utf-8")

    return write_atomically(out_dir, write)
