"""Append-only JSONL journal of every evaluation in a run, the basis of resume.

Each evaluation is one line, appended and fsynced before the optimizer moves on. A crash can
only tear the last line (no newline yet): it is dropped on open, by an atomic rewrite of the
file. Any other line that does not match the schema is an error naming the file and line.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vlmmerge.errors import VlmMergeError
from vlmmerge.search.files import atomic_write_bytes


class JournalError(VlmMergeError):
    """A journal line is not an evaluation record."""


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
    attempts: int = 1  # 2 when a transient failure (out of memory, device error) was retried
    # multi-objective runs: the objective vector (maximised, in `evolve.objectives` order); None otherwise
    objectives: list[float] | None = None
    # racing: one record per stage scored ({"items": n, "objectives": [...], "kept": bool}); None: not raced
    stages: list[dict[str, Any]] | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


class _Record(BaseModel):
    """The schema of one journal line (fitness null: a failed candidate, -inf in memory)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    optimizer: Literal["cma", "random", "nsga2", "comocma"]
    index: int = Field(ge=0)
    generation: int = Field(ge=0)
    genome: list[float]
    params: dict[str, Any]
    fitness: float | None
    scores: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    attempts: int = Field(default=1, ge=1)
    objectives: list[float | None] | None = None
    stages: list[dict[str, Any]] | None = None


OPTIONAL_FIELDS = ("objectives", "stages")  # written only when set: single-objective lines stay as they were


def parse_line(line: str, where: str) -> JournalEntry:
    try:
        record = _Record.model_validate(json.loads(line))
    except json.JSONDecodeError as exc:
        raise JournalError(f"{where}: not a JSON object ({exc.msg}); fix or remove the line") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'line'}: {e['msg']}" for e in exc.errors())
        raise JournalError(f"{where}: not an evaluation record ({problems}); fix or remove the line") from None
    values = record.model_dump()
    if values["fitness"] is None:
        values["fitness"] = float("-inf")
    if values["objectives"] is not None:
        values["objectives"] = [float("-inf") if v is None else v for v in values["objectives"]]
    return JournalEntry(**values)


def dump_line(entry: JournalEntry) -> bytes:
    record = asdict(entry)
    if not math.isfinite(record["fitness"]):
        record["fitness"] = None
    for name in OPTIONAL_FIELDS:
        if record[name] is None:
            del record[name]
    if record.get("objectives") is not None:
        record["objectives"] = [v if math.isfinite(v) else None for v in record["objectives"]]
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


class Journal:
    """One JSON object per line; the last entry of an (optimizer, index) pair is the valid one."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[tuple[str, int], JournalEntry] = {}
        if self.path.exists():
            self._read()

    def _read(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):  # a line torn by a crash: drop it, so appends stay valid
            data = data[: data.rfind(b"\n") + 1]
            atomic_write_bytes(self.path, data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise JournalError(f"{self.path}:{line}: not UTF-8 text; fix or remove the line") from None
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                entry = parse_line(line, f"{self.path}:{number}")
                self.entries[(entry.optimizer, entry.index)] = entry

    def get(self, optimizer: str, index: int) -> JournalEntry | None:
        return self.entries.get((optimizer, index))

    def append(self, entry: JournalEntry) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as handle:
            handle.write(dump_line(entry))
            handle.flush()
            os.fsync(handle.fileno())
        self.entries[(entry.optimizer, entry.index)] = entry

    def replace(self, entry: JournalEntry, drop: Callable[[JournalEntry], bool] = lambda e: False) -> None:
        """Put `entry` in place of the journaled one with its key and remove the entries `drop`
        selects, in one atomic rewrite (a crash leaves the old journal or the new one)."""
        key = (entry.optimizer, entry.index)
        entries = {k: (entry if k == key else e) for k, e in self.entries.items() if k == key or not drop(e)}
        entries.setdefault(key, entry)
        atomic_write_bytes(self.path, b"".join(dump_line(e) for e in entries.values()))
        self.entries = entries

    def of(self, optimizer: str) -> list[JournalEntry]:
        return sorted((e for (o, _), e in self.entries.items() if o == optimizer), key=lambda e: e.index)
