"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL (multimodal rotary sections, patch merger, deepstack for Qwen3-VL)."""

from __future__ import annotations

from typing import Any

import transformers as t
from transformers import PretrainedConfig

from vlmmerge.testing.common import IMAGE_SIZE, PATCH_SIZE, TOKENS_PER_IMAGE, VISION_DIMS, added_token_id, text_values

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def mrope_section(head_dim: int, interleaved: bool) -> list[int]:
    """Temporal/height/width rotary sections summing to head_dim / 2, in the real models' ratios
    (Qwen2-VL [16, 24, 24] and Qwen3-VL [24, 20, 20] at head_dim 128)."""
    half = head_dim // 2
    spatial = half * 5 // 16 if interleaved else half * 3 // 8
    return [half - 2 * spatial, spatial, spatial]


def config_spec(
    family: str, text_overrides: dict[str, Any], vision_overrides: dict[str, Any]
) -> tuple[type[PretrainedConfig], dict[str, Any]]:
    tok = lambda name: added_token_id(family, name)  # noqa: E731
    ids = dict(
        vision_start_token_id=tok("<|vision_start|>"), vision_end_token_id=tok("<|vision_end|>"),
        image_token_id=tok("<|image_pad|>"), video_token_id=tok("<|video_pad|>"),
    )
    interleaved = family == "qwen3_vl"
    text = text_values(text_overrides)
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section(text["head_dim"], interleaved)}
    if interleaved:
        rope["mrope_interleaved"] = True
    text.setdefault("rope_parameters", rope)
    lm_hidden = text["hidden_size"]
    common = dict(depth=VISION_DIMS["num_hidden_layers"], num_heads=VISION_DIMS["num_attention_heads"],
                  patch_size=PATCH_SIZE, spatial_merge_size=2, temporal_patch_size=2)
    if family == "qwen2_vl":
        vision = {**common, "embed_dim": VISION_DIMS["hidden_size"], "mlp_ratio": 2, "hidden_size": lm_hidden,
                  **vision_overrides}
        return t.Qwen2VLConfig, dict(
            text_config=t.Qwen2VLTextConfig(**text), vision_config=t.Qwen2VLVisionConfig(**vision), **ids,
        )
    vision = {**common, "hidden_size": VISION_DIMS["hidden_size"],
              "intermediate_size": VISION_DIMS["intermediate_size"], "out_hidden_size": lm_hidden}
    if family == "qwen2_5_vl":
        vision.update(window_size=IMAGE_SIZE, fullatt_block_indexes=[1])
        return t.Qwen2_5_VLConfig, dict(
            text_config=t.Qwen2_5_VLTextConfig(**text),
            vision_config=t.Qwen2_5_VLVisionConfig(**{**vision, **vision_overrides}), **ids,
        )
    # 16 learned positions = a 4x4 patch grid, the grid of one 32-pixel image.
    vision.update(num_position_embeddings=TOKENS_PER_IMAGE, deepstack_visual_indexes=[0])
    return t.Qwen3VLConfig, dict(
        text_config=t.Qwen3VLTextConfig(**text),
        vision_config=t.Qwen3VLVisionConfig(**{**vision, **vision_overrides}), **ids,
    )


def processor(family: str, tokenizer: Any, template: str) -> Any:
    factor = PATCH_SIZE * 2
    geometry = dict(patch_size=PATCH_SIZE, merge_size=2, temporal_patch_size=2)
    size = {"shortest_edge": factor * factor, "longest_edge": 4 * IMAGE_SIZE * IMAGE_SIZE}
    image_processor = t.Qwen2VLImageProcessor(**geometry, size=size)
    if family == "qwen3_vl":
        video_size = {"shortest_edge": factor * factor, "longest_edge": 4 * IMAGE_SIZE * IMAGE_SIZE * 2}
        return t.Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                  video_processor=t.Qwen3VLVideoProcessor(**geometry, size=video_size),
                                  chat_template=template)
    cls = t.Qwen2VLProcessor if family == "qwen2_vl" else t.Qwen2_5_VLProcessor
    return cls(image_processor=image_processor, tokenizer=tokenizer,
               video_processor=t.Qwen2VLVideoProcessor(**geometry, size=size), chat_template=template)
