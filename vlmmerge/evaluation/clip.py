"""CLIPScore (Hessel et al., 2021) with any open_clip model: 100 * w * max(cos(image, text), 0), w = 2.5.

The model is named the open_clip way:
  - a built-in architecture plus weights: ``model="ViT-B-32", pretrained="laion2b_s34b_b79k"`` or a
    checkpoint file ``pretrained="/path/open_clip_pytorch_model.bin"`` (weights_only loading);
  - a multilingual one for Japanese text, e.g. ``model="xlm-roberta-base-ViT-B-32",
    pretrained="laion5b_s13b_b90k"`` (its Hugging Face tokenizer must be in the local cache offline);
  - ``"hf-hub:org/repo"``; or a local folder (``"local-dir:/path"`` or just the path) holding
    ``open_clip_config.json`` ({"model_cfg": ..., "preprocess_cfg": ...}) and weights.
Random weights are refused (``require_pretrained``): a CLIP score from an untrained model means nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from vlmmerge.errors import VlmMergeError

CLIP_SCORE_WEIGHT = 2.5


@dataclass(frozen=True)
class ClipSpec:
    model: str
    pretrained: str | None = None
    prefix: str = ""  # Hessel et al. prepend "A photo depicts" for English captions

    def resolved_name(self) -> str:
        if ":" not in self.model.split("/")[0] and Path(self.model).is_dir():
            return f"local-dir:{Path(self.model).resolve()}"
        return self.model


class ClipScorer:
    """A loaded open_clip model. Image embeddings can be cached in a caller-owned dict
    (the Evaluator keeps one, since its images never change between calls)."""

    def __init__(self, spec: ClipSpec, device: str | torch.device = "cpu") -> None:
        import open_clip

        self.spec = spec
        self.device = torch.device(device)
        name = spec.resolved_name()
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=spec.pretrained, device=self.device, weights_only=True,
                require_pretrained=True,
            )
            self.tokenizer = open_clip.get_tokenizer(name)
        except Exception as exc:  # open_clip raises RuntimeError/ValueError/FileNotFoundError variously
            raise VlmMergeError(
                f"cannot load open_clip model {spec.model!r} (pretrained={spec.pretrained!r}): {exc}"
            ) from exc
        self.model = model.eval()
        self.preprocess = preprocess

    @torch.inference_mode()
    def image_embeddings(self, images: Sequence[Image.Image], keys: Sequence[Hashable] | None = None,
                         cache: dict[Hashable, torch.Tensor] | None = None, batch_size: int = 32) -> torch.Tensor:
        keys = list(keys) if keys is not None and cache is not None else [None] * len(images)
        cache = cache if cache is not None else {}
        todo = [i for i, k in enumerate(keys) if k is None or k not in cache]
        fresh: dict[int, torch.Tensor] = {}
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            pixels = torch.stack([self.preprocess(images[i].convert("RGB")) for i in chunk]).to(self.device)
            emb = torch.nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)
            for i, e in zip(chunk, emb):
                fresh[i] = e
                if keys[i] is not None:
                    cache[keys[i]] = e
        return torch.stack([fresh[i] if i in fresh else cache[keys[i]] for i in range(len(images))])

    @torch.inference_mode()
    def text_embeddings(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), batch_size):
            chunk = [self.spec.prefix + t for t in texts[start : start + batch_size]]
            tokens = self.tokenizer(chunk).to(self.device)
            out.append(torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1))
        return torch.cat(out) if out else torch.empty(0)

    def scores(self, images: Sequence[Image.Image], texts: Sequence[str], keys: Sequence[Hashable] | None = None,
               cache: dict[Hashable, torch.Tensor] | None = None, weight: float = CLIP_SCORE_WEIGHT) -> list[float]:
        if len(images) != len(texts):
            raise VlmMergeError(f"CLIP score needs one text per image, got {len(texts)} texts and {len(images)} images")
        if not texts:
            return []
        cos = (self.image_embeddings(images, keys, cache) * self.text_embeddings(texts)).sum(-1)
        return clip_score_from_cosine(cos, weight).tolist()


def clip_score_from_cosine(cos: torch.Tensor, weight: float = CLIP_SCORE_WEIGHT) -> torch.Tensor:
    """100 * w * max(cos, 0)."""
    return 100.0 * weight * cos.clamp(min=0)


_SCORERS: dict[tuple[ClipSpec, str], ClipScorer] = {}
_LOCK = threading.Lock()


def get_clip_scorer(model: str, pretrained: str | None = None, device: str | torch.device = "cpu",
                    prefix: str = "") -> ClipScorer:
    """Load once per (model, weights, device) and reuse."""
    spec = ClipSpec(model=model, pretrained=pretrained, prefix=prefix)
    key = (spec, str(torch.device(device)))
    with _LOCK:
        if key not in _SCORERS:
            _SCORERS[key] = ClipScorer(spec, device)
        return _SCORERS[key]
