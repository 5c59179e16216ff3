"""Append-only JSONL journal of every evaluation in a run, the basis of resume."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class JournalEntry:
    optimizer: str  # "cma" or "random"
    index: int  # evaluation number within this optimizer's run, from 0
    generation: int
    genome: list[float]
    params: dict[str, Any]
    fitness: float
    scores: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


class Journal:
    """One JSON object per line; a torn last line (crash mid-write) is ignored on read."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[tuple[str, int], JournalEntry] = {}
        if self.path.exists():
            text = self.path.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):  # drop a line torn by a crash, so appends stay valid
                text = text[: text.rfind("\n") + 1]
                self.path.write_text(text, encoding="utf-8")
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                    if record.get("fitness") is None:
                        record["fitness"] = float("-inf")
                    entry = JournalEntry(**record)
                except (json.JSONDecodeError, TypeError):
                    continue
                self.entries[(entry.optimizer, entry.index)] = entry

    def get(self, optimizer: str, index: int) -> JournalEntry | None:
        return self.entries.get((optimizer, index))

    def append(self, entry: JournalEntry) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = asdict(entry)
        if not math.isfinite(record["fitness"]):
            record["fitness"] = None
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.entries[(entry.optimizer, entry.index)] = entry

    def of(self, optimizer: str) -> list[JournalEntry]:
        return sorted((e for (o, _), e in self.entries.items() if o == optimizer), key=lambda e: e.index)
