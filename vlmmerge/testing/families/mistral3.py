"""Mistral 3 (Mistral language side + Pixtral vision tower, PixtralProcessor)."""

from __future__ import annotations

from typing import Any

import transformers as t
from transformers import PretrainedConfig

from vlmmerge.testing.common import IMAGE_SIZE, PATCH_SIZE, VISION_DIMS, added_token_id, text_values, vision_values

FAMILIES = ("mistral3",)


def config_spec(
    family: str, text_overrides: dict[str, Any], vision_overrides: dict[str, Any]
) -> tuple[type[PretrainedConfig], dict[str, Any]]:
    return t.Mistral3Config, dict(
        text_config=t.MistralConfig(**text_values(text_overrides, sliding_window=None)),
        vision_config=t.PixtralVisionConfig(**vision_values(vision_overrides, head_dim=VISION_DIMS["hidden_size"] // 2)),
        image_token_index=added_token_id(family, "[IMG]"), spatial_merge_size=2, vision_feature_layer=-1,
    )


def processor(family: str, tokenizer: Any, template: str) -> Any:
    image_processor = t.PixtralImageProcessor(
        size={"longest_edge": IMAGE_SIZE}, patch_size={"height": PATCH_SIZE, "width": PATCH_SIZE}
    )
    return t.PixtralProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
                              spatial_merge_size=2, chat_template=template)
