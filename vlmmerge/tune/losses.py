"""Losses of a learned merge, on batches from `vlmmerge.tune.prompts.collate`.

SuperMerge: mean cross-entropy of the answer tokens (teacher forcing, references as answers).
AdaMerging: mean Shannon entropy of the next-token distributions at the answer positions, the
answers being the model's own greedy generations (made without gradients); references unused.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vlmmerge.tune.prompts import IGNORE, Prompt, left_padded, pad_id


def answer_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict an answer token, and those tokens."""
    shifted, targets = logits[:, :-1], labels[:, 1:]
    keep = targets != IGNORE
    return shifted[keep].float(), targets[keep]


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    predicted, targets = answer_logits(logits, labels)
    return F.cross_entropy(predicted, targets)


def entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    predicted, _ = answer_logits(logits, labels)
    logp = F.log_softmax(predicted, dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()


LOSSES = {"supermerge": cross_entropy, "adamerging": entropy}


@torch.no_grad()
def generate_answers(model, processor, prompts: Sequence[Prompt], max_new_tokens: int) -> list[list[int]]:
    """Greedy answers (token ids, up to and including EOS) of the model as it is loaded now."""
    from vlmmerge.evaluation.prompts import tokenizer_of

    tok = tokenizer_of(processor)
    pad = pad_id(processor)
    batch = left_padded(prompts, pad)
    dtype = next(model.parameters()).dtype
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(dtype)
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                         pad_token_id=pad, eos_token_id=tok.eos_token_id)
    answers = []
    for row in out[:, batch["input_ids"].shape[1]:].tolist():
        ids = []
        for token in row:
            ids.append(token)
            if token == tok.eos_token_id:
                break
        answers.append(ids or [tok.eos_token_id])
    return answers
