"""LLaVA, LLaVA-NeXT (Mistral language side, as LLaVA-1.6-Mistral) and LLaVA-OneVision (Qwen2 + SigLIP)."""

from __future__ import annotations

from typing import Any

import transformers as t
from transformers import PretrainedConfig

from vlmmerge.testing.common import (
    IMAGE_GRID_PINPOINTS, IMAGE_SIZE, PATCH_SIZE, SQUARE, TOKENS_PER_IMAGE, VISION_DIMS, added_token_id, text_values,
    vision_values,
)

FAMILIES = ("llava", "llava_next", "llava_onevision")


def clip_vision(overrides: dict[str, Any]) -> t.CLIPVisionConfig:
    return t.CLIPVisionConfig(**vision_values(overrides, projection_dim=VISION_DIMS["hidden_size"]))


def siglip_vision(overrides: dict[str, Any]) -> t.SiglipVisionConfig:
    return t.SiglipVisionConfig(**vision_values(overrides, vision_use_head=False))


def config_spec(
    family: str, text_overrides: dict[str, Any], vision_overrides: dict[str, Any]
) -> tuple[type[PretrainedConfig], dict[str, Any]]:
    image_token = added_token_id(family, "<image>")
    if family == "llava":
        return t.LlavaConfig, dict(
            text_config=t.LlamaConfig(**text_values(text_overrides)), vision_config=clip_vision(vision_overrides),
            image_token_index=image_token, image_seq_length=TOKENS_PER_IMAGE,
            vision_feature_layer=-2, vision_feature_select_strategy="default",
        )
    if family == "llava_next":
        # LLaVA-1.6-Mistral (the EvoVLM-JP base) pairs CLIP with a Mistral language model.
        return t.LlavaNextConfig, dict(
            text_config=t.MistralConfig(**text_values(text_overrides, sliding_window=None)),
            vision_config=clip_vision(vision_overrides),
            image_token_index=image_token, image_grid_pinpoints=IMAGE_GRID_PINPOINTS,
            image_seq_length=TOKENS_PER_IMAGE,
            vision_feature_layer=-2, vision_feature_select_strategy="default",
        )
    return t.LlavaOnevisionConfig, dict(
        text_config=t.Qwen2Config(**text_values(text_overrides)), vision_config=siglip_vision(vision_overrides),
        image_token_index=image_token, video_token_index=added_token_id(family, "<video>"),
        image_grid_pinpoints=IMAGE_GRID_PINPOINTS, vision_aspect_ratio="anyres_max_9",
        vision_feature_layer=-1, vision_feature_select_strategy="full",
    )


def processor(family: str, tokenizer: Any, template: str) -> Any:
    if family == "llava":
        image_processor = t.CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=SQUARE)
        return t.LlavaProcessor(
            image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
            vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=template,
        )
    if family == "llava_next":
        image_processor = t.LlavaNextImageProcessor(
            size={"shortest_edge": IMAGE_SIZE}, crop_size=SQUARE, image_grid_pinpoints=IMAGE_GRID_PINPOINTS
        )
        return t.LlavaNextProcessor(
            image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
            vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=template,
        )
    return t.LlavaOnevisionProcessor(
        image_processor=t.LlavaOnevisionImageProcessor(size=SQUARE, image_grid_pinpoints=IMAGE_GRID_PINPOINTS),
        tokenizer=tokenizer, video_processor=t.LlavaOnevisionVideoProcessor(size=SQUARE),
        num_image_tokens=TOKENS_PER_IMAGE, vision_feature_select_strategy="full", chat_template=template,
    )
