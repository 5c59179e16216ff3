"""A tiny open_clip model trained contrastively on the world's images with English and Japanese
captions, saved as an open_clip local folder (`open_clip_config.json` + safetensors + tokenizer),
so CLIP score has a meaningful offline scorer: ``open_clip.create_model_and_transforms("local-dir:PATH")``."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer, processors
from tqdm.auto import tqdm

from vlmmerge.zoo.images import IMAGE_SIZE
from vlmmerge.zoo.models import PATCH_SIZE, Architecture
from vlmmerge.zoo.tokenizer import EOS, to_transformers
from vlmmerge.zoo.training import Schedule, lr_factor

CONTEXT_LENGTH = 32
PIXEL_MEAN = (0.5, 0.5, 0.5)
PIXEL_STD = (0.5, 0.5, 0.5)


def clip_tokenizer(tokenizer: Tokenizer):
    """The world's tokenizer, ending every text with <|end|> (the CLIP text tower pools there) and
    padding on the right."""
    tok = Tokenizer.from_str(tokenizer.to_str())
    eos_id = tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, eos_id)])
    hf = to_transformers(tok)
    hf.padding_side = "right"
    return hf


def clip_model_config(arch: Architecture, tokenizer) -> dict:
    return {
        "embed_dim": arch.clip_width,
        "vision_cfg": {
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
            "width": arch.clip_width,
            "layers": arch.clip_layers,
            "head_width": 32,
            "mlp_ratio": 4.0,
        },
        "text_cfg": {
            "context_length": CONTEXT_LENGTH,
            "vocab_size": len(tokenizer),
            "width": arch.clip_width,
            "heads": max(1, arch.clip_width // 32),
            "layers": arch.clip_layers,
            "hf_tokenizer_name": "vlmmerge-zoo",  # any non-empty name: local-dir loading reads the folder's tokenizer
            "pad_id": tokenizer.pad_token_id,
            "eos_id": tokenizer.eos_token_id,
            "pool_type": "eos",
        },
    }


PREPROCESS_CFG = {"size": IMAGE_SIZE, "mean": list(PIXEL_MEAN), "std": list(PIXEL_STD),
                  "interpolation": "bicubic", "resize_mode": "shortest"}


def build_clip(config: dict):
    from open_clip.model import CLIP

    return CLIP(embed_dim=config["embed_dim"], vision_cfg=config["vision_cfg"], text_cfg=config["text_cfg"])


def train_clip(model, pixel_values: torch.Tensor, texts: list[str], image_index: list[int], tokenizer,
               schedule: Schedule, seed: int, progress: bool = True) -> list[float]:
    """Symmetric InfoNCE over batches of (image, text) pairs; a batch never holds one image twice."""
    token_ids = tokenizer(texts, padding="max_length", max_length=CONTEXT_LENGTH, truncation=True,
                          return_tensors="pt")["input_ids"]
    generator = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=schedule.lr, weight_decay=0.0, betas=(0.9, 0.98))
    losses = []
    model.train()
    bar = tqdm(range(schedule.steps), desc="clip", disable=not progress, leave=False, mininterval=1.0)
    order: list[int] = []
    for step in bar:
        rows: list[int] = []
        used: set[int] = set()
        while len(rows) < schedule.batch_size:
            if not order:
                order = torch.randperm(len(texts), generator=generator).tolist()
            i = order.pop()
            if image_index[i] not in used:
                used.add(image_index[i])
                rows.append(i)
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr * lr_factor(step, schedule)
        images = pixel_values[torch.tensor([image_index[i] for i in rows])]
        image_features, text_features, logit_scale = model(images, token_ids[rows])[:3]
        logits = logit_scale * image_features @ text_features.T
        target = torch.arange(len(rows))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), schedule.grad_clip)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    rng.random()
    model.eval()
    return losses


def save_clip(model, config: dict, tokenizer, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": config, "preprocess_cfg": PREPROCESS_CFG}, indent=2), encoding="utf-8")
    tokenizer.save_pretrained(str(folder))
