"""PaliGemma (Gemma + SigLIP, a larger vocabulary with <loc>/<seg> tokens) and Gemma 3 (Gemma 3 text + SigLIP)."""

from __future__ import annotations

from typing import Any

import transformers as t
from transformers import PretrainedConfig

from vlmmerge.testing.common import (
    PALIGEMMA_VOCAB_SIZE, SQUARE, TOKENS_PER_IMAGE, added_token_id, text_values,
)
from vlmmerge.testing.families.causal_lm import gemma3_text_values
from vlmmerge.testing.families.llava import siglip_vision

FAMILIES = ("paligemma", "gemma3")


def config_spec(
    family: str, text_overrides: dict[str, Any], vision_overrides: dict[str, Any]
) -> tuple[type[PretrainedConfig], dict[str, Any]]:
    tok = lambda name: added_token_id(family, name)  # noqa: E731
    if family == "paligemma":
        text = text_values(text_overrides, hidden_activation="gelu_pytorch_tanh", vocab_size=PALIGEMMA_VOCAB_SIZE)
        return t.PaliGemmaConfig, dict(
            text_config=t.GemmaConfig(**text), vision_config=siglip_vision(vision_overrides),
            image_token_index=tok("<image>"), vocab_size=text["vocab_size"],
            # the projector maps vision features to projection_dim: it must be the LM width
            projection_dim=text["hidden_size"], hidden_size=text["hidden_size"],
        )
    return t.Gemma3Config, dict(
        text_config=t.Gemma3TextConfig(**gemma3_text_values(text_overrides)),
        vision_config=siglip_vision(vision_overrides),
        mm_tokens_per_image=TOKENS_PER_IMAGE // 4,
        boi_token_index=tok("<start_of_image>"), eoi_token_index=tok("<end_of_image>"),
        image_token_index=tok("<image_soft_token>"),
    )


def processor(family: str, tokenizer: Any, template: str) -> Any:
    if family == "paligemma":
        image_processor = t.SiglipImageProcessor(size=SQUARE)
        image_processor.image_seq_length = TOKENS_PER_IMAGE
        return t.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return t.Gemma3Processor(image_processor=t.Gemma3ImageProcessor(size=SQUARE), tokenizer=tokenizer,
                             image_seq_length=TOKENS_PER_IMAGE // 4, chat_template=template)
