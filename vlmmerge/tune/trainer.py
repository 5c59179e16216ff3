"""The training loop of a learned merge: seeded batches, Adam on w, a step journal that resumes.

Run-folder files it owns:
    journal.jsonl   one line per finished step: step, loss (before the update), coefficients
                    after the update, seconds; appended and fsynced as each step ends
    state.pt        w and the optimizer state after the last checkpointed step (atomic rename)

A resumed run loads state.pt, drops journal lines past it (a kill may land between the two
writes) and continues; batches depend only on (seed, task, epoch), so the steps it redoes give
the same numbers and the journal equals an uninterrupted run's (the `seconds` aside).
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vlmmerge.search.files import atomic_write_bytes, atomic_write_text
from vlmmerge.tune.losses import LOSSES, generate_answers
from vlmmerge.tune.prompts import Prompt, answer_ids, collate, pad_id


class StopRequested(Exception):
    """Raised by `Trainer.run(stop_after=N)` after N steps are journaled (a simulated kill)."""


@dataclass
class TaskData:
    name: str
    weight: float
    prompts: list[Prompt]
    max_new_tokens: int = 32


def seeded_rows(seed: int, task_index: int, step: int, batch_size: int, n: int) -> list[int]:
    """The rows of one step's batch: consecutive slices of a per-epoch permutation of the items."""
    rows = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, n)
        generator = torch.Generator().manual_seed(hash_seed(seed, task_index, epoch))
        rows.append(int(torch.randperm(n, generator=generator)[offset]))
    return rows


def hash_seed(*parts: int) -> int:
    value = 1469598103934665603
    for part in parts:
        value = ((value ^ (int(part) & 0xFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return value


def make_optimizer(name: str, params: Sequence[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


class Trainer:
    def __init__(self, merge, config, data: Sequence[TaskData], out_dir: Path, progress: bool = True):
        self.merge, self.config, self.data = merge, config, list(data)
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.loss_fn = LOSSES[config.method]
        self.pad = pad_id(merge.processor)
        self._answers: dict[tuple[int, int], list[int]] = {}
        self.journal_path = self.out_dir / "journal.jsonl"
        self.state_path = self.out_dir / "state.pt"

    # ------------------------------------------------------------------ one step
    def batch(self, task_index: int, step: int, w: torch.Tensor) -> dict[str, torch.Tensor]:
        task = self.data[task_index]
        rows = seeded_rows(self.config.seed, task_index, step, min(self.config.batch_size, len(task.prompts)),
                           len(task.prompts))
        prompts = [task.prompts[r] for r in rows]
        if self.config.method == "supermerge":
            answers = []
            for r, p in zip(rows, prompts):
                key = (task_index, r)
                if key not in self._answers:
                    self._answers[key] = answer_ids(self.merge.processor, p.answer)
                answers.append(self._answers[key])
        else:  # the model's own greedy answers, under the current coefficients
            model = self.merge.load(w)
            answers = generate_answers(model, self.merge.processor, prompts, task.max_new_tokens)
        batch = collate(prompts, answers, self.pad)
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(self.merge.dtype)
        return batch

    def loss(self, w: torch.Tensor, step: int) -> torch.Tensor:
        total, weights = 0.0, 0.0
        for index, task in enumerate(self.data):
            batch = self.batch(index, step, w)
            labels = batch.pop("labels")
            out = self.merge.forward(w, batch)
            total = total + task.weight * self.loss_fn(out.logits, labels)
            weights += task.weight
        return total / weights

    # ------------------------------------------------------------------ state and journal
    def _save_state(self, step: int, w: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        buffer = io.BytesIO()
        torch.save({"step": step, "w": w.detach().clone(), "optimizer": optimizer.state_dict()}, buffer)
        atomic_write_bytes(self.state_path, buffer.getvalue())

    def _resume(self, w: torch.Tensor, optimizer: torch.optim.Optimizer) -> tuple[int, list[dict]]:
        if not self.state_path.exists():
            if self.journal_path.exists():
                self.journal_path.unlink()
            return 0, []
        state = torch.load(self.state_path, weights_only=True)
        with torch.no_grad():
            w.copy_(state["w"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        entries = read_journal(self.journal_path)[:step]
        atomic_write_text(self.journal_path, "".join(json.dumps(e) + "\n" for e in entries))
        return step, entries

    def _append(self, entry: dict) -> None:
        with open(self.journal_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    # ------------------------------------------------------------------ the loop
    def run(self, stop_after: int | None = None, on_step: Callable[[dict], None] | None = None) -> tuple[torch.Tensor, list[dict]]:
        cfg = self.config
        w = self.merge.space.initial_w(cfg.init).requires_grad_(True)
        optimizer = make_optimizer(cfg.optimizer, [w], cfg.lr)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        start, entries = self._resume(w, optimizer)
        bar = tqdm(total=cfg.steps, initial=start, desc=f"tune ({cfg.method})", unit="step", disable=not self.progress)
        try:
            for step in range(start, cfg.steps):
                began = time.perf_counter()
                optimizer.zero_grad()
                loss = self.loss(w, step)
                loss.backward()
                optimizer.step()
                entry = {"step": step, "loss": float(loss.detach()), "coefficients": self.merge.space.values(w),
                         "seconds": time.perf_counter() - began}
                self._append(entry)
                entries.append(entry)
                bar.update(1)
                bar.set_postfix(loss=f"{entry['loss']:.4f}")
                if on_step is not None:
                    on_step(entry)
                if stop_after is not None and step + 1 - start >= stop_after:
                    raise StopRequested(f"stopped after step {step} (journaled, state not yet saved)")
                if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                    self._save_state(step + 1, w, optimizer)
        finally:
            bar.close()
        return w.detach(), entries


def read_journal(path: Path) -> list[dict]:
    """Finished steps in order; a torn last line (a kill mid-write) is dropped."""
    if not Path(path).exists():
        return []
    entries = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return entries
