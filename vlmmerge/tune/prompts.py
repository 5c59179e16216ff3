"""Token ids for learned merges: each item's prompt exactly as the evaluator builds it (the model's
chat template or the task's template, image tokens expanded by the processor), followed by an
answer (the reference for SuperMerge, the model's own generation for AdaMerging) and EOS.

Built from the evaluator's public pieces (`build_prompt`, the processor call the evaluator
makes per batch); no generation and no loss here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vlmmerge.errors import RecipeError
from vlmmerge.evaluation.prompts import build_prompt, tokenizer_of

IGNORE = -100


@dataclass
class Prompt:
    item_id: str
    ids: list[int]  # prompt token ids (image tokens expanded)
    pixel_values: torch.Tensor | None = None  # this item's image, as the processor returned it
    answer: str | None = None  # the teacher-forced target text (None: unlabelled)


def answer_text(item, template: str | None) -> str:
    """The target an item is teacher-forced on: `template` formatted with the item's fields
    (`{reference}`, `{answer}`, `{question}` and every `meta` key), else its reference."""
    if not template:
        return item.reference
    fields = {**item.meta, "reference": item.reference, "answer": item.answer or "", "question": item.question or ""}
    try:
        return template.format(**fields)
    except KeyError as exc:
        raise RecipeError(f"tune.answer_format: item {item.id!r} has no field {exc.args[0]!r} (have {sorted(fields)})") from None


def encode_prompts(task, items: Sequence, processor, answer_format: str | None = None) -> list[Prompt]:
    """One Prompt per item, tokenised as the evaluator tokenises it for generation."""
    with_image = task.config.modality == "image"
    tok = tokenizer_of(processor)
    out = []
    for item in items:
        text, fmt = build_prompt(processor, task.user_text(item), system=task.config.system,
                                 with_image=with_image, template=task.config.template)
        if with_image:
            enc = processor(text=[text], images=[[task.load_image(item)]], return_tensors="pt",
                            add_special_tokens=fmt.add_special_tokens)
            pixels = enc["pixel_values"][0]
        else:
            enc = tok([text], return_tensors="pt", add_special_tokens=fmt.add_special_tokens)
            pixels = None
        out.append(Prompt(item.id, enc["input_ids"][0].tolist(), pixels, answer_text(item, answer_format)))
    return out


def answer_ids(processor, text: str) -> list[int]:
    tok = tokenizer_of(processor)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if tok.eos_token_id is None:
        raise RecipeError("the tokenizer has no EOS token; teacher-forced answers need one")
    return list(ids) + [tok.eos_token_id]


def pad_id(processor) -> int:
    tok = tokenizer_of(processor)
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def collate(prompts: Sequence[Prompt], answers: Sequence[Sequence[int]], pad: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt + answer batch; `labels` hold the answer tokens only (IGNORE elsewhere)."""
    rows = [p.ids + list(a) for p, a in zip(prompts, answers, strict=True)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (prompt, row) in enumerate(zip(prompts, rows)):
        ids[r, : len(row)] = torch.tensor(row)
        labels[r, len(prompt.ids) : len(row)] = torch.tensor(row[len(prompt.ids):], dtype=torch.long)
        mask[r, : len(row)] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if prompts and prompts[0].pixel_values is not None:
        batch["pixel_values"] = torch.stack([p.pixel_values for p in prompts])
    return batch


def left_padded(prompts: Sequence[Prompt], pad: int) -> dict[str, torch.Tensor]:
    """Prompts only, padded on the left (for greedy generation)."""
    width = max(len(p.ids) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p.ids):] = torch.tensor(p.ids)
        mask[r, width - len(p.ids):] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if prompts and prompts[0].pixel_values is not None:
        batch["pixel_values"] = torch.stack([p.pixel_values for p in prompts])
    return batch
