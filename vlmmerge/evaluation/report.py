"""Markdown and single-file HTML reports (images embedded as base64), for one model or several."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from vlmmerge.evaluation.results import EvalResult, _jsonable, write_atomically
from vlmmerge.evaluation.stats import paired_bootstrap_diff

THUMBNAIL = 224

_CSS = """
body{font-family:system-ui,-apple-system,"Hiragino Sans","Noto Sans CJK JP",sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pred{white-space:pre-wrap;max-width:28em}.ref{white-space:pre-wrap;max-width:24em;color:#135}
.sc{font-size:85%;color:#555}img{max-width:224px;max-height:224px}.meta{color:#666;font-size:90%}
tr.primary td{font-weight:600}
"""


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _esc(text: str) -> str:
    """HTML-escaped, with control characters (invalid in HTML) shown as U+FFFD."""
    return html.escape(_CONTROL.sub("\ufffd", text))


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _fmt_ci(ci: Any) -> str:
    if not ci:
        return "-"
    lo, hi = ci
    if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)):
        return "-"
    return f"[{lo:.2f}, {hi:.2f}]"


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


def _n_items(result: EvalResult, task: str) -> int:
    return sum(1 for s in result.samples if s["task"] == task)


def render_markdown(result: EvalResult, title: str | None = None) -> str:
    meta = result.meta
    lines = [f"# {title or 'Evaluation: ' + str(meta.get('model') or 'model')}", ""]
    lines.append(f"Split `{meta.get('split')}`, seed {meta.get('seed')}; scores are 0-100 with 95% bootstrap "
                 f"intervals; the primary metric of each task is in bold.")
    lines += ["", "| task | metric | score | 95% CI | n |", "|---|---|---:|---|---:|"]
    for task, metrics in result.scores.items():
        for metric, value in metrics.items():
            name = f"**{metric}**" if metric == result.primary_metrics.get(task) else metric
            lines.append(f"| {task} | {name} | {_fmt(value)} | {_fmt_ci(result.ci.get(task, {}).get(metric))} | "
                         f"{_n_items(result, task)} |")
    if result.slices:
        lines += ["", "## Slices", "", "| task | slice | metric | score | n |", "|---|---|---|---:|---:|"]
        for task, by_slice in result.slices.items():
            for slice_name, values in by_slice.items():
                for metric, value in values.items():
                    if metric != "n":
                        lines.append(f"| {task} | {slice_name} | {metric} | {_fmt(value)} | {int(values['n'])} |")
    return "\n".join(lines) + "\n"


def _scores_cell(scores: Mapping[str, Any]) -> str:
    return "<br>".join(f"{html.escape(k)}: {_fmt(v, 1)}" for k, v in scores.items())


def _head(title: str) -> list[str]:
    return ["<!DOCTYPE html>", '<html lang="ja"><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
            f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]


def render_html(result: EvalResult, title: str | None = None) -> str:
    title = title or f"Evaluation: {result.model_name or 'model'}"
    meta = result.meta
    out = _head(title)
    out.append(f'<p class="meta">split {html.escape(str(meta.get("split")))} · seed {meta.get("seed")} · '
               f'generation {html.escape(json.dumps(_jsonable(meta.get("generation", {})), ensure_ascii=False))}</p>')
    out.append("<table><tr><th>task</th><th>metric</th><th>score</th><th>95% CI</th><th>n</th></tr>")
    for task, metrics in result.scores.items():
        for metric, value in metrics.items():
            cls = ' class="primary"' if metric == result.primary_metrics.get(task) else ""
            out.append(f"<tr{cls}><td>{html.escape(task)}</td><td>{html.escape(metric)}</td>"
                       f'<td class="num">{_fmt(value)}</td><td>{_fmt_ci(result.ci.get(task, {}).get(metric))}</td>'
                       f'<td class="num">{_n_items(result, task)}</td></tr>')
    out.append("</table>")
    for task in result.scores:
        out.append(f"<h2>{html.escape(task)}</h2>")
        out.append("<table><tr><th>image</th><th>id / prompt</th><th>reference</th><th>prediction</th><th>scores</th></tr>")
        for s in (s for s in result.samples if s["task"] == task):
            out.append("<tr>" + _image_cell(result, s) + _prompt_cell(s)
                       + f'<td class="ref">{_esc(_reference_text(s))}</td>'
                       + f'<td class="pred">{_esc(s["prediction"])}</td>'
                       + f'<td class="sc">{_scores_cell(s["scores"])}</td></tr>')
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _reference_text(sample: Mapping[str, Any]) -> str:
    text = sample["reference"]
    if sample.get("answer") and sample["answer"] not in text:
        text += f"\n(answer: {sample['answer']})"
    return text


def _image_cell(result: EvalResult, sample: Mapping[str, Any]) -> str:
    source = result.images.get((sample["task"], sample["id"]))
    if source is None:
        return "<td></td>"
    uri = image_data_uri(source)
    if uri is None:
        return f"<td>{html.escape(str(sample.get('image')))}</td>"
    return f'<td><img src="{uri}" alt="{html.escape(str(sample["id"]))}"></td>'


def _prompt_cell(sample: Mapping[str, Any]) -> str:
    text = sample.get("input") or sample.get("question") or sample.get("prompt") or ""
    return f'<td><b>{_esc(str(sample["id"]))}</b><br><span class="pred">{_esc(text)}</span></td>'


def comparison_markdown(results: Mapping[str, EvalResult], title: str = "Model comparison") -> str:
    names = list(results)
    first = results[names[0]]
    lines = [f"# {title}", "", "Scores 0-100 with 95% bootstrap intervals.", "",
             "| task | metric | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for task, metrics in first.scores.items():
        for metric in metrics:
            cells = []
            for name in names:
                r = results[name]
                value = r.scores.get(task, {}).get(metric)
                cells.append(f"{_fmt(value)} {_fmt_ci(r.ci.get(task, {}).get(metric))}")
            label = f"**{metric}**" if metric == first.primary_metrics.get(task) else metric
            lines.append(f"| {task} | {label} | " + " | ".join(cells) + " |")
    if len(names) > 1:
        lines += ["", f"Paired bootstrap differences against `{names[0]}` (primary metrics):", "",
                  "| task | model | difference | 95% CI | p (two-sided) |", "|---|---|---:|---|---:|"]
        for task, diffs in paired_differences(results).items():
            for name, d in diffs.items():
                lines.append(f"| {task} | {name} | {_fmt(d.mean_diff)} | {_fmt_ci((d.lo, d.hi))} | {_fmt(d.p_value, 3)} |")
    return "\n".join(lines) + "\n"


def paired_differences(results: Mapping[str, EvalResult], seed: int = 0):
    """task -> model -> PairedDiff(model - first model) on the primary metric, matching items by id."""
    names = list(results)
    base = results[names[0]]
    out: dict[str, dict[str, Any]] = {}
    for task, metric in base.primary_metrics.items():
        base_vals = {s["id"]: s["scores"].get(metric) for s in base.samples if s["task"] == task}
        for name in names[1:]:
            other = {s["id"]: s["scores"].get(metric) for s in results[name].samples if s["task"] == task}
            ids = [i for i in base_vals if i in other]
            if ids:
                out.setdefault(task, {})[name] = paired_bootstrap_diff([other[i] for i in ids],
                                                                       [base_vals[i] for i in ids], seed=seed)
    return out


def comparison_html(results: Mapping[str, EvalResult], title: str = "Model comparison") -> str:
    names = list(results)
    first = results[names[0]]
    out = _head(title)
    out.append("<table><tr><th>task</th><th>metric</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>")
    for task, metrics in first.scores.items():
        for metric in metrics:
            cls = ' class="primary"' if metric == first.primary_metrics.get(task) else ""
            cells = "".join(
                f'<td class="num">{_fmt(results[n].scores.get(task, {}).get(metric))} '
                f'<span class="sc">{_fmt_ci(results[n].ci.get(task, {}).get(metric))}</span></td>' for n in names)
            out.append(f"<tr{cls}><td>{html.escape(task)}</td><td>{html.escape(metric)}</td>{cells}</tr>")
    out.append("</table>")
    diffs = paired_differences(results)
    if diffs:
        out.append(f"<p>Paired bootstrap difference of the primary metric against {html.escape(names[0])}:</p><table>"
                   "<tr><th>task</th><th>model</th><th>difference</th><th>95% CI</th><th>p</th></tr>")
        for task, by_model in diffs.items():
            for name, d in by_model.items():
                out.append(f"<tr><td>{html.escape(task)}</td><td>{html.escape(name)}</td><td class='num'>"
                           f"{_fmt(d.mean_diff)}</td><td>{_fmt_ci((d.lo, d.hi))}</td><td class='num'>{_fmt(d.p_value, 3)}</td></tr>")
        out.append("</table>")
    for task in first.scores:
        out.append(f"<h2>{html.escape(task)}</h2>")
        out.append("<table><tr><th>image</th><th>id / prompt</th><th>reference</th>"
                   + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>")
        by_model = {n: {s["id"]: s for s in results[n].samples if s["task"] == task} for n in names}
        for s in (s for s in first.samples if s["task"] == task):
            cells = []
            for n in names:
                other = by_model[n].get(s["id"])
                if other is None:
                    cells.append("<td>-</td>")
                else:
                    cells.append(f'<td class="pred">{_esc(other["prediction"])}'
                                 f'<div class="sc">{_scores_cell(other["scores"])}</div></td>')
            out.append("<tr>" + _image_cell(first, s) + _prompt_cell(s)
                       + f'<td class="ref">{_esc(_reference_text(s))}</td>' + "".join(cells) + "</tr>")
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_comparison_report(results: Mapping[str, EvalResult], out_dir: str | os.PathLike,
                            title: str = "Model comparison") -> Path:
    """comparison.md, comparison.html and comparison.json (scores of every model) in ``out_dir``."""
    if not results:
        from vlmmerge.errors import VlmMergeError

        raise VlmMergeError("write_comparison_report needs at least one result")

    def write(tmp: Path) -> None:
        (tmp / "comparison.md").write_text(comparison_markdown(results, title), encoding="utf-8")
        (tmp / "comparison.html").write_text(comparison_html(results, title), encoding="utf-8")
        data = {name: r.to_json() for name, r in results.items()}
        (tmp / "comparison.json").write_text(json.dumps(_jsonable(data), ensure_ascii=False, indent=2) + "\n",
                                             encoding="utf-8")

    return write_atomically(out_dir, write)
