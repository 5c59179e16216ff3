"""Eval sets in memory (``Task``, ``Item``) and their readers: the local format (task.yaml +
fitness.jsonl + test.jsonl + images/) and single-file generic JSONL sets. Finding a set by name
(built-in sets, benchmarks) is ``catalogue.load_task``. Format: README.md beside this file."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vlmmerge.errors import EvalSetError
from vlmmerge.evaluation.metric_names import METRIC_KEYS
from vlmmerge.evaluation.numbers import format_number, parse_number
from vlmmerge.recipe import validation_details

SPLITS = ("fitness", "test")
TASK_TYPES = ("caption", "vqa", "math", "generic", "clip_score")


class GenerationSettings(BaseModel):
    """Decoding for one task. Always deterministic: greedy (num_beams=1) or beam search."""

    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int = Field(64, ge=1)
    num_beams: int = Field(1, ge=1)
    repetition_penalty: float = Field(1.0, gt=0)
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = Field(0, ge=0)
    stop: list[str] = Field(default_factory=list)  # the reply is cut at the first of these strings


class ClipSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    pretrained: str | None = None
    prefix: str = ""


class TaskConfig(BaseModel):
    """task.yaml. Unknown keys are kept (``model_extra``) with a warning, so newer sets still load."""

    model_config = ConfigDict(extra="allow")
    name: str
    task: Literal["caption", "vqa", "math", "generic", "clip_score"]
    language: Literal["ja", "en"] = "ja"
    modality: Literal["image", "text"] = "image"
    metrics: list[str] = Field(default_factory=list)
    prompt: str = "{question}"
    system: str | None = None
    template: str | None = None  # None: the model's chat template; else a template name or literal
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    clip: ClipSettings | None = None
    language_detector: str | None = None
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not v or "/" in v or v.strip() != v:
            raise ValueError(f"task name {v!r} must be non-empty, without '/' or surrounding spaces")
        return v

    @model_validator(mode="after")
    def _defaults_and_checks(self) -> "TaskConfig":
        if not self.metrics:
            self.metrics = default_metrics(self.task, self.language)
        unknown = [m for m in self.metrics if m not in METRIC_KEYS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; available: {sorted(METRIC_KEYS)}")
        keys = [k for m in self.metrics for k in METRIC_KEYS[m]]
        if len(set(keys)) != len(keys):
            raise ValueError(f"metrics {self.metrics} produce the same score name twice; keep one of them")
        if "clip_score" in self.metrics and self.modality != "image":
            raise ValueError("metric clip_score needs modality: image")
        if "clip_score" in self.metrics and self.clip is None:
            raise ValueError("metric clip_score needs a 'clip: {model: ..., pretrained: ...}' section")
        return self


def default_metrics(task: str, language: str) -> list[str]:
    rouge = "rouge_ja" if language == "ja" else "rouge"
    return {
        "caption": [rouge],
        "vqa": [rouge, "exact_match"],
        "math": ["math_answer"],
        "generic": [rouge],
        "clip_score": ["clip_score"],
    }[task]


class Item(BaseModel):
    """One JSONL line."""

    model_config = ConfigDict(extra="allow")
    id: str
    reference: str
    references: list[str] = Field(default_factory=list)
    question: str | None = None
    prompt: str | None = None  # a full prompt for this item (overrides the task's template text)
    image: str | None = None
    answer: str | None = None
    concepts: list[str] = Field(default_factory=list)
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id", "answer", mode="before")
    @classmethod
    def _to_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    @property
    def all_references(self) -> list[str]:
        refs = [self.reference] + [r for r in self.references if r != self.reference]
        return refs

    @property
    def slice(self) -> str | None:
        value = self.meta.get("slice")
        return str(value) if value is not None else None


@dataclass
class Task:
    """An eval set in memory: config, items per split, where images live."""

    config: TaskConfig
    splits: dict[str, list[Item]]
    root: Path | None = None
    source: str = ""
    memory_images: dict[str, Image.Image] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def primary_metric(self) -> str:
        return METRIC_KEYS[self.config.metrics[0]][0]

    def items(self, split: str = "fitness", limit: int | None = None) -> list[Item]:
        if split not in self.splits:
            raise EvalSetError(f"task {self.name!r} has no split {split!r} (has: {sorted(self.splits)})")
        items = self.splits[split]
        return items[:limit] if limit is not None else list(items)

    def image_path(self, item: Item) -> Path | None:
        if item.image is None or item.id in self.memory_images:
            return None
        path = Path(item.image)
        return path if path.is_absolute() or self.root is None else self.root / path

    def load_image(self, item: Item) -> Image.Image:
        if item.id in self.memory_images:
            return self.memory_images[item.id].convert("RGB")
        path = self.image_path(item)
        if path is None:
            raise EvalSetError(f"item {item.id!r} of task {self.name!r} has no image")
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as exc:
            raise EvalSetError(f"cannot read image {path} of item {item.id!r} (task {self.name!r}): {exc}") from exc

    def user_text(self, item: Item) -> str:
        if item.prompt is not None:
            return item.prompt
        return self.config.prompt.replace("{question}", item.question or "")

    def validate(self) -> None:
        """Item requirements per task type, image files present, splits disjoint."""
        cfg = self.config
        for split, items in self.splits.items():
            for item in items:
                where = f"{self.source or self.name} [{split}] item {item.id!r}"
                if cfg.modality == "image":
                    if item.image is None:
                        raise EvalSetError(f"{where}: 'image' is required for modality: image")
                    path = self.image_path(item)
                    if path is not None and not path.is_file():
                        raise EvalSetError(f"{where}: image file not found: {path}")
                if cfg.task == "vqa" and not (item.question or item.prompt):
                    raise EvalSetError(f"{where}: 'question' is required for a vqa task")
                if cfg.task == "math":
                    if item.answer is None:
                        derived = parse_number(item.reference)
                        if derived is None:
                            raise EvalSetError(f"{where}: math items need 'answer' (the final number)")
                        item.answer = format_number(derived)
                    elif parse_number(item.answer) is None:
                        raise EvalSetError(f"{where}: answer {item.answer!r} is not a number")
                if "{question}" in cfg.prompt and item.question is None and item.prompt is None and cfg.task != "caption":
                    raise EvalSetError(f"{where}: the prompt uses {{question}} but the item has no 'question'")
        check_disjoint(self)


def _item_key(task: Task, item: Item) -> tuple[str, str]:
    image = ""
    if item.image is not None:
        path = task.image_path(item)
        image = os.path.normpath(str(path)) if path is not None else f"memory:{item.image}"
    return (image, task.user_text(item).strip())


def check_disjoint(task: Task) -> None:
    """No id, and no (image, prompt) pair, may appear twice across and within splits."""
    seen_ids: dict[str, str] = {}
    seen_keys: dict[tuple[str, str], tuple[str, str]] = {}
    for split, items in task.splits.items():
        for item in items:
            if item.id in seen_ids:
                other = seen_ids[item.id]
                kind = "is shared by the fitness and test splits" if other != split else f"appears twice in {split}"
                raise EvalSetError(f"{task.source or task.name}: item id {item.id!r} {kind}")
            seen_ids[item.id] = split
            key = _item_key(task, item)
            if key in seen_keys and seen_keys[key][0] != split:
                other_split, other_id = seen_keys[key]
                raise EvalSetError(
                    f"{task.source or task.name}: items {other_id!r} ({other_split}) and {item.id!r} ({split}) "
                    f"share the same image and prompt; fitness and test must not overlap"
                )
            seen_keys.setdefault(key, (split, item.id))


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise EvalSetError(f"cannot read {path}: {exc}") from exc
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalSetError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise EvalSetError(f"{path}:{lineno}: each line must be a JSON object")
        rows.append((lineno, row))
    return rows


def _parse_items(path: Path, rows: list) -> list[Item]:
    items = []
    for lineno, row in rows:
        try:
            items.append(Item.model_validate(row))
        except ValidationError as exc:
            raise EvalSetError(f"{path}:{lineno}: {validation_details(exc, 'item')}") from None
    return items


def merge_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Overrides replace fields; mapping fields (generation, clip) are merged key by key."""
    out = dict(data)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def parse_config(data: Mapping[str, Any], source: str) -> TaskConfig:
    try:
        config = TaskConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise EvalSetError(f"{source}: {validation_details(exc, 'task')}") from None
    if config.model_extra:
        warnings.warn(f"{source}: unknown keys kept but not used: {sorted(config.model_extra)}", stacklevel=3)
    return config


def load_task_folder(folder: Path, **overrides: Any) -> Task:
    folder = Path(folder)
    cfg_path = folder / "task.yaml"
    if not cfg_path.is_file():
        raise EvalSetError(f"{folder} is not an eval set: task.yaml is missing")
    try:
        data = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise EvalSetError(f"{cfg_path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise EvalSetError(f"{cfg_path}: expected a mapping at the top level")
    config = parse_config(merge_overrides(data, overrides), str(cfg_path))
    splits: dict[str, list[Item]] = {}
    for split in SPLITS:
        path = folder / f"{split}.jsonl"
        splits[split] = _parse_items(path, read_jsonl(path)) if path.is_file() else []
    if not any(splits.values()):
        raise EvalSetError(f"{folder}: neither fitness.jsonl nor test.jsonl has items")
    task = Task(config=config, splits=splits, root=folder, source=str(folder))
    task.validate()
    return task


def load_task_jsonl(path: Path, **overrides: Any) -> Task:
    """A single JSONL file as a generic task: one item per line, ``split`` per line (default test).
    Task options (metrics, language, prompt, ...) come from ``overrides``."""
    path = Path(path)
    rows = read_jsonl(path)
    by_split: dict[str, list] = {s: [] for s in SPLITS}
    for lineno, row in rows:
        split = row.pop("split", "test")
        if split not in SPLITS:
            raise EvalSetError(f"{path}:{lineno}: split must be one of {SPLITS}, got {split!r}")
        by_split[split].append((lineno, row))
    data = {"name": path.stem, "task": "generic", "modality": "text", "prompt": "{question}"}
    if any("image" in row for _, row in rows):
        data["modality"] = "image"
    config = parse_config(merge_overrides(data, overrides), str(path))
    splits = {s: _parse_items(path, r) for s, r in by_split.items()}
    task = Task(config=config, splits=splits, root=path.parent, source=str(path))
    task.validate()
    return task
