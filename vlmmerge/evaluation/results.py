"""EvalResult: scores, confidence intervals and per-item samples, as plain data (read back with
``EvalResult.load``; written by ``report.save_result``), and the atomic folder writer both use."""

from __future__ import annotations

import json
import math
import os
import shutil
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
    from vlmmerge.checkpoint.output import fsync_tree, new_sibling, publish, recover_siblings

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    recover_siblings(out)
    tmp = new_sibling(out, "tmp", create=True)
    try:
        write(tmp)
        fsync_tree(tmp)
        if not out.exists():
            publish(tmp, out)
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
