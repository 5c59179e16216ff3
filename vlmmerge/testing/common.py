"""What every tiny family shares: the family lists, token ids, model dimensions and image geometry.

Every family gets a deterministic config (text width 64 with 2 layers, vision width 32 with 2 layers,
a 320-row vocabulary (PaliGemma: 1416), 32-pixel images, 8-pixel patches), so a model builds in well
under a second and still meets the real tensor names, shapes and loading paths of its transformers class.
"""

from __future__ import annotations

import re
from typing import Any

VLM_FAMILIES: tuple[str, ...] = (
    "llava",
    "llava_next",
    "llava_onevision",
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "idefics3",
    "smolvlm",
    "paligemma",
    "gemma3",
    "mistral3",
    "internvl",
)
LM_FAMILIES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma3_text")
FAMILIES: tuple[str, ...] = VLM_FAMILIES + LM_FAMILIES

MODEL_CLASS_NAMES: dict[str, str] = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "idefics3": "Idefics3ForConditionalGeneration",
    "smolvlm": "SmolVLMForConditionalGeneration",
    "paligemma": "PaliGemmaForConditionalGeneration",
    "gemma3": "Gemma3ForConditionalGeneration",
    "mistral3": "Mistral3ForConditionalGeneration",
    "internvl": "InternVLForConditionalGeneration",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}

# Token ids shared by every family: 4 base specials, 256 byte-level tokens, then the family's
# added tokens (image placeholders etc.) from ADDED_TOKEN_START on, as real VLMs append theirs.
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
BASE_SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<unk>")
BYTE_TOKEN_START = len(BASE_SPECIAL_TOKENS)
ADDED_TOKEN_START = BYTE_TOKEN_START + 256
VOCAB_SIZE = 320

IMAGE_SIZE = 32  # pixels; every vision tower sees 32x32 images (or 32x32 tiles)
PATCH_SIZE = 8
TOKENS_PER_IMAGE = (IMAGE_SIZE // PATCH_SIZE) ** 2
# LLaVA-NeXT / OneVision "anyres" grids: up to 2x2 tiles of 32 pixels.
IMAGE_GRID_PINPOINTS = [[IMAGE_SIZE, IMAGE_SIZE], [IMAGE_SIZE, 2 * IMAGE_SIZE], [2 * IMAGE_SIZE, IMAGE_SIZE],
                        [2 * IMAGE_SIZE, 2 * IMAGE_SIZE]]
SQUARE = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}

TEXT_DIMS: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
    vocab_size=VOCAB_SIZE,
    pad_token_id=PAD_ID,
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
)
VISION_DIMS: dict[str, Any] = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=IMAGE_SIZE,
    patch_size=PATCH_SIZE,
)

# The added tokens of each family, in id order from ADDED_TOKEN_START (so "<image>" of LLaVA is
# id 260). Names follow the real checkpoints' tokenizers.
IDEFICS3_GRID = 2  # at most 2x2 image tiles (+ one global view)
_IDEFICS3_TOKENS = (
    "<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>",
    *(f"<row_{r}_col_{c}>" for r in range(1, IDEFICS3_GRID + 1) for c in range(1, IDEFICS3_GRID + 1)),
)
_QWEN_VL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
FAMILY_ADDED_TOKENS: dict[str, tuple[str, ...]] = {
    "llava": ("<image>",),
    "llava_next": ("<image>",),
    "llava_onevision": ("<image>", "<video>", "<|im_start|>", "<|im_end|>"),
    "qwen2_vl": _QWEN_VL_TOKENS,
    "qwen2_5_vl": _QWEN_VL_TOKENS,
    "qwen3_vl": _QWEN_VL_TOKENS,
    "idefics3": _IDEFICS3_TOKENS,
    "smolvlm": _IDEFICS3_TOKENS,
    # PaliGemma's processor always appends 1024 <locNNNN> and 128 <segNNN> tokens: they are part of the
    # real vocabulary, so the tiny one holds them too (and PaliGemma's vocabulary is larger).
    "paligemma": ("<image>", *(f"<loc{i:04d}>" for i in range(1024)), *(f"<seg{i:03d}>" for i in range(128))),
    "gemma3": ("<start_of_image>", "<end_of_image>", "<image_soft_token>", "<start_of_turn>", "<end_of_turn>"),
    "mistral3": ("[IMG]", "[IMG_BREAK]", "[IMG_END]", "[INST]", "[/INST]"),
    "internvl": ("<img>", "</img>", "<IMG_CONTEXT>", "<video>", "<|im_start|>", "<|im_end|>"),
}
PALIGEMMA_VOCAB_SIZE = -(-(ADDED_TOKEN_START + len(FAMILY_ADDED_TOKENS["paligemma"])) // 8) * 8  # 1416
PLAIN_ADDED_TOKEN = re.compile(r"<(loc\d{4}|seg\d{3})>")  # added, but not special

# What a prompt writes where one image goes; the processor expands it to the image's tokens.
IMAGE_PLACEHOLDER: dict[str, str] = {
    "llava": "<image>",
    "llava_next": "<image>",
    "llava_onevision": "<image>",
    "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen3_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "idefics3": "<image>",
    "smolvlm": "<image>",
    "paligemma": "<image>",
    "gemma3": "<start_of_image>",
    "mistral3": "[IMG]",
    "internvl": "<IMG_CONTEXT>",
}


def added_token_id(family: str, token: str) -> int:
    """Id of one of `family`'s added tokens (e.g. added_token_id("llava", "<image>") == 260)."""
    tokens = FAMILY_ADDED_TOKENS.get(family, ())
    if token not in tokens:
        raise KeyError(f"family {family!r} has no added token {token!r}; it has {tokens}")
    return ADDED_TOKEN_START + tokens.index(token)


def check_family(family: str) -> None:
    if family not in FAMILIES:
        raise KeyError(f"unknown tiny family {family!r}; known: {', '.join(FAMILIES)}")


def text_values(overrides: dict[str, Any], **family_defaults: Any) -> dict[str, Any]:
    """Text-config arguments: the tiny dimensions, then the family's defaults, then the caller's overrides."""
    return {**TEXT_DIMS, **family_defaults, **overrides}


def vision_values(overrides: dict[str, Any], **family_defaults: Any) -> dict[str, Any]:
    """Vision-config arguments, layered like `text_values`."""
    return {**VISION_DIMS, **family_defaults, **overrides}
