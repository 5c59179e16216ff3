"""Idefics3 and SmolVLM (Llama language side under `model.text_model`, image splitting into tiles).

SmolVLM's processor needs the `num2words` package (a transformers requirement).
"""

from __future__ import annotations

from typing import Any

import transformers as t
from transformers import PretrainedConfig

from vlmmerge.testing.common import (
    IDEFICS3_GRID, IMAGE_SIZE, PAD_ID, TOKENS_PER_IMAGE, added_token_id, text_values, vision_values,
)

FAMILIES = ("idefics3", "smolvlm")


def config_spec(
    family: str, text_overrides: dict[str, Any], vision_overrides: dict[str, Any]
) -> tuple[type[PretrainedConfig], dict[str, Any]]:
    config_class, vision_class = (
        (t.Idefics3Config, t.Idefics3VisionConfig) if family == "idefics3"
        else (t.SmolVLMConfig, t.SmolVLMVisionConfig)
    )
    return config_class, dict(
        text_config=t.LlamaConfig(**text_values(text_overrides)),
        vision_config=vision_class(**vision_values(vision_overrides)),
        image_token_id=added_token_id(family, "<image>"), scale_factor=2, pad_token_id=PAD_ID,
    )


def processor(family: str, tokenizer: Any, template: str) -> Any:
    sizes = dict(size={"longest_edge": IDEFICS3_GRID * IMAGE_SIZE}, max_image_size={"longest_edge": IMAGE_SIZE})
    if family == "idefics3":
        return t.Idefics3Processor(image_processor=t.Idefics3ImageProcessor(**sizes, do_image_splitting=True),
                                   tokenizer=tokenizer, image_seq_len=TOKENS_PER_IMAGE // 4, chat_template=template)
    return t.SmolVLMProcessor(image_processor=t.SmolVLMImageProcessor(**sizes, do_image_splitting=True),
                              tokenizer=tokenizer, video_processor=t.SmolVLMVideoProcessor(**sizes),
                              image_seq_len=TOKENS_PER_IMAGE // 4, chat_template=template)
