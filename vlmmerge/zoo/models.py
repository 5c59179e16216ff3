"""Architectures of the world's models, per size, as real transformers configs."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

from vlmmerge.zoo.images import IMAGE_SIZE
from vlmmerge.zoo.world import GRID

PATCH_SIZE = IMAGE_SIZE // GRID  # one patch per grid cell
IMAGE_TOKENS = GRID * GRID  # CLS dropped ("default" feature selection)


@dataclass(frozen=True)
class Architecture:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    clip_width: int
    clip_layers: int


ARCHITECTURES = {
    "demo": Architecture(hidden=128, layers=4, heads=4, intermediate=384, vision_hidden=64, vision_layers=2,
                         vision_heads=2, vision_intermediate=256, clip_width=64, clip_layers=2),
    "micro": Architecture(hidden=32, layers=2, heads=2, intermediate=64, vision_hidden=32, vision_layers=1,
                          vision_heads=2, vision_intermediate=64, clip_width=32, clip_layers=1),
}


def lm_config(arch: Architecture, tokenizer) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden,
        intermediate_size=arch.intermediate,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
        num_key_value_heads=arch.heads,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def vision_config(arch: Architecture) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=arch.vision_hidden,
        intermediate_size=arch.vision_intermediate,
        num_hidden_layers=arch.vision_layers,
        num_attention_heads=arch.vision_heads,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=arch.vision_hidden,
    )


def llava_config(arch: Architecture, tokenizer) -> LlavaConfig:
    return LlavaConfig(
        vision_config=vision_config(arch),
        text_config=lm_config(arch, tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=IMAGE_TOKENS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
