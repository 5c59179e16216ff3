"""Deterministic smoke inputs: one image, one prompt, processed by the family's real processor."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from vlmmerge.testing.common import IMAGE_PLACEHOLDER, IMAGE_SIZE, LM_FAMILIES, check_family
from vlmmerge.testing.processors import tiny_processor

SMOKE_PROMPT = "What is in the picture?"
SMOKE_TEXT = "The quick brown fox"


def smoke_image(size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)) -> Image.Image:
    """A deterministic RGB test image (colour gradients), `size` = (width, height)."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack(
        [x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) * 255 // max(width + height - 2, 1)],
        axis=-1,
    ).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def smoke_prompt(family: str) -> str:
    """A one-image prompt in `family`'s placeholder convention (text only for causal LMs)."""
    check_family(family)
    if family in LM_FAMILIES:
        return SMOKE_TEXT
    return f"{IMAGE_PLACEHOLDER[family]}{SMOKE_PROMPT}"


def smoke_inputs(family: str, processor: Any = None) -> dict[str, torch.Tensor]:
    """Model inputs for one prompt (with one image for VLMs), ready for `model(**inputs)` or `generate`.

    All families go through their real processor (`tiny_processor(family)` unless one is given).
    """
    check_family(family)
    processor = tiny_processor(family) if processor is None else processor
    if family in LM_FAMILIES:
        encoded = processor(smoke_prompt(family), return_tensors="pt")
    else:
        encoded = processor(images=[smoke_image()], text=[smoke_prompt(family)], return_tensors="pt")
    # PaliGemma's processor also returns training labels (all -100 without a suffix): not an input.
    return {k: v for k, v in encoded.items() if isinstance(v, torch.Tensor) and k != "labels"}
