"""InternVL (Qwen2 language side, InternViT vision tower, pixel-shuffle projector)."""

from __future__ import annotations

from typing import Any

import transformers as t
from transformers import PretrainedConfig

from vlmmerge.testing.common import (
    IMAGE_SIZE, PATCH_SIZE, SQUARE, TOKENS_PER_IMAGE, added_token_id, text_values, vision_values,
)

FAMILIES = ("internvl",)


def config_spec(
    family: str, text_overrides: dict[str, Any], vision_overrides: dict[str, Any]
) -> tuple[type[PretrainedConfig], dict[str, Any]]:
    vision = vision_values(vision_overrides, image_size=[IMAGE_SIZE, IMAGE_SIZE], patch_size=[PATCH_SIZE, PATCH_SIZE])
    return t.InternVLConfig, dict(
        text_config=t.Qwen2Config(**text_values(text_overrides)), vision_config=t.InternVLVisionConfig(**vision),
        image_token_id=added_token_id(family, "<IMG_CONTEXT>"), image_seq_length=TOKENS_PER_IMAGE // 4,
        downsample_ratio=0.5,
    )


def processor(family: str, tokenizer: Any, template: str) -> Any:
    return t.InternVLProcessor(image_processor=t.GotOcr2ImageProcessor(size=SQUARE, crop_to_patches=False),
                               tokenizer=tokenizer, video_processor=t.InternVLVideoProcessor(size=SQUARE),
                               image_seq_length=TOKENS_PER_IMAGE // 4, chat_template=template)
