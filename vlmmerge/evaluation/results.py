"""EvalResult: scores, confidence intervals and per-item samples; saved atomically."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmmerge.errors import VlmMergeError

RESULT_FILES = ("scores.json", "samples.jsonl", "scores.md", "report.html")


@dataclass
class EvalResult:
    scores: dict[str, dict[str, float]]  # task -> metric -> mean (0-100)
    ci: dict[str, dict[str, tuple[float, float]]]  # task -> metric -> 95% bootstrap interval
    samples: list[dict[str, Any]]  # one per item: task, id, prompt, prediction, reference, image, scores
    primary_metrics: dict[str, str]  # task -> its primary score name
    slices: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # task -> slice -> metric
    meta: dict[str, Any] = field(default_factory=dict)
    images: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)  # (task, id) -> path or PIL

    def primary(self, task: str) -> float:
        if task not in self.scores:
            raise VlmMergeError(f"no scores for task {task!r} (have {sorted(self.scores)})")
        return self.scores[task][self.primary_metrics[task]]

    def primary_mean(self) -> float:
        """Mean of every task's primary score: a default scalar fitness."""
        vals = [self.primary(t) for t in self.scores]
        return float(sum(vals) / len(vals)) if vals else float("nan")

    def per_item(self, task: str, metric: str) -> list[float | None]:
        """Per-item values in item order, for paired comparisons."""
        return [s["scores"].get(metric) for s in self.samples if s["task"] == task]

    @property
    def model_name(self) -> str | None:
        return self.meta.get("model")

    def to_json(self) -> dict[str, Any]:
        return {
            "scores": self.scores,
            "ci": {t: {m: list(v) for m, v in d.items()} for t, d in self.ci.items()},
            "primary_metrics": self.primary_metrics,
            "slices": self.slices,
            "meta": self.meta,
        }

    def save(self, out_dir: str | os.PathLike, title: str | None = None) -> Path:
        """Write scores.json, samples.jsonl, scores.md and report.html (images embedded)."""
        from vlmmerge.evaluation.report import render_html, render_markdown

        def write(tmp: Path) -> None:
            (tmp / "scores.json").write_text(json.dumps(_jsonable(self.to_json()), ensure_ascii=False, indent=2) + "\n",
                                             encoding="utf-8")
            with (tmp / "samples.jsonl").open("w", encoding="utf-8") as fh:
                for sample in self.samples:
                    fh.write(json.dumps(_jsonable(sample), ensure_ascii=False) + "\n")
            (tmp / "scores.md").write_text(render_markdown(self, title=title), encoding="utf-8")
            (tmp / "report.html").write_text(render_html(self, title=title), encoding="utf-8")

        return write_atomically(out_dir, write)

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> "EvalResult":
        """Read a saved result back (images are referenced by the paths stored in samples)."""
        out = Path(out_dir)
        try:
            data = json.loads((out / "scores.json").read_text(encoding="utf-8"))
            samples = [json.loads(line) for line in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()
                       if line.strip()]
        except (OSError, json.JSONDecodeError) as exc:
            raise VlmMergeError(f"cannot read evaluation results in {out}: {exc}") from exc
        images = {(s["task"], s["id"]): Path(s["image"]) for s in samples
                  if s.get("image") and Path(s["image"]).is_file()}
        return cls(
            scores=data["scores"], ci={t: {m: tuple(v) for m, v in d.items()} for t, d in data.get("ci", {}).items()},
            samples=samples, primary_metrics=data["primary_metrics"], slices=data.get("slices", {}),
            meta=data.get("meta", {}), images=images,
        )


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_atomically(out_dir: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp_dir)``, then move its files into ``out_dir``: a new folder is renamed into
    place whole; into an existing folder each file is moved with an atomic replace. On error
    nothing is left behind."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the result should look like any new folder
    try:
        write(tmp)
        if not out.exists():
            os.replace(tmp, out)
            return out
        if not out.is_dir():
            raise VlmMergeError(f"output path {out} exists and is not a folder")
        for path in sorted(tmp.rglob("*")):
            target = out / path.relative_to(tmp)
            if path.is_dir():
                target.mkdir(exist_ok=True)
            else:
                os.replace(path, target)
        return out
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
