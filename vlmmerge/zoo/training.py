"""Small deterministic training loops for the world's models (plain PyTorch, CPU friendly)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vlmmerge.zoo.corpora import Example
from vlmmerge.zoo.tokenizer import ASSISTANT, EOS, IMAGE, USER
from vlmmerge.zoo.world import ANSWER_SEPARATOR

IGNORE = -100


@dataclass(frozen=True)
class Schedule:
    steps: int
    batch_size: int
    lr: float
    warmup: float = 0.05  # fraction of steps
    final_lr_fraction: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0


def chat_prefix(prompt: str, with_image: bool, image_tokens: int) -> str:
    """What the chat template (plus the processor's image-token expansion) puts before the answer."""
    return USER + (IMAGE * image_tokens if with_image else "") + prompt + EOS + ASSISTANT


@dataclass
class Encoded:
    input_ids: list[list[int]]
    labels: list[list[int]]
    image_index: list[int]  # index into the image pool, -1 for text-only


def encode(tokenizer, examples: Sequence[Example], image_tokens: int = 0,
           scene_index: dict[str, int] | None = None) -> Encoded:
    prefixes = [chat_prefix(ex.prompt, ex.scene is not None, image_tokens) if ex.prompt is not None else ""
                for ex in examples]
    answers = [ex.answer + EOS for ex in examples]
    prefix_ids = tokenizer(prefixes, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answers, add_special_tokens=False)["input_ids"]
    separator = tokenizer.convert_tokens_to_ids(ANSWER_SEPARATOR)
    ids, labels, images = [], [], []
    for ex, p, a in zip(examples, prefix_ids, answer_ids):
        ids.append(p + a)
        hidden = len(p)
        if ex.text_only_loss and separator in a:
            hidden += a.index(separator) + 1
        labels.append([IGNORE] * hidden + (p + a)[hidden:])
        images.append(scene_index[ex.scene.key] if ex.scene is not None and scene_index is not None else -1)
    return Encoded(ids, labels, images)


def collate(data: Encoded, rows: Sequence[int], pad_id: int) -> dict[str, Tensor]:
    width = max(len(data.input_ids[i]) for i in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, i in enumerate(rows):
        n = len(data.input_ids[i])
        ids[r, :n] = torch.tensor(data.input_ids[i])
        labels[r, :n] = torch.tensor(data.labels[i])
        mask[r, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def lr_factor(step: int, schedule: Schedule) -> float:
    warmup = max(1, int(schedule.warmup * schedule.steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, schedule.steps - warmup)
    return schedule.final_lr_fraction + (1 - schedule.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


def fit(model: nn.Module, param_groups: list[dict], data: Encoded, schedule: Schedule, *, seed: int,
        pad_id: int, pixel_values: Tensor | None = None, desc: str = "train",
        progress: bool = True, extra_loss: Callable[[list[int]], Tensor] | None = None) -> list[float]:
    """Train for `schedule.steps` batches drawn (epoch after epoch, order from `seed`) from `data`.

    Each param group carries its own peak "lr"; all follow the same warmup + cosine schedule.
    `extra_loss(rows)`, if given, is added to the model's loss after its forward pass (rows: the
    batch's example indices)."""
    generator = torch.Generator().manual_seed(seed)
    base_lrs = [g["lr"] for g in param_groups]
    optimizer = torch.optim.AdamW(param_groups, weight_decay=schedule.weight_decay, betas=(0.9, 0.98))
    params = [p for g in param_groups for p in g["params"]]
    order: list[int] = []
    losses: list[float] = []
    model.train()
    bar = tqdm(range(schedule.steps), desc=desc, disable=not progress, leave=False, mininterval=1.0)
    for step in bar:
        if len(order) < schedule.batch_size:
            order += torch.randperm(len(data.input_ids), generator=generator).tolist()
        rows, order = order[: schedule.batch_size], order[schedule.batch_size:]
        batch = collate(data, rows, pad_id)
        if pixel_values is not None:
            batch["pixel_values"] = pixel_values[torch.tensor([data.image_index[i] for i in rows])]
        factor = lr_factor(step, schedule)
        for group, lr in zip(optimizer.param_groups, base_lrs):
            group["lr"] = lr * factor
        loss = model(**batch).loss
        if extra_loss is not None:
            loss = loss + extra_loss(rows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, schedule.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    return losses


class PatchSupervision:
    """Auxiliary loss for VLM training: a linear probe classifies every projected image patch into
    'empty' or the object kind drawn in that grid cell. It makes the vision tower and projector
    learn quickly what is where; the probe is thrown away after training."""

    def __init__(self, vlm: nn.Module, patch_labels: Tensor, image_index: Sequence[int], num_classes: int,
                 weight: float = 1.0) -> None:
        hidden = vlm.config.text_config.hidden_size
        self.head = nn.Linear(hidden, num_classes)
        self.patch_labels = patch_labels
        self.image_index = list(image_index)
        self.weight = weight
        self._features: Tensor | None = None
        self._hook = vlm.model.multi_modal_projector.register_forward_hook(self._capture)

    def _capture(self, module, inputs, output) -> None:
        self._features = output

    def __call__(self, rows: list[int]) -> Tensor:
        labels = self.patch_labels[torch.tensor([self.image_index[i] for i in rows])]
        logits = self.head(self._features)
        return self.weight * nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())

    def remove(self) -> None:
        self._hook.remove()
