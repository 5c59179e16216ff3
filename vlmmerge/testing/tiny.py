"""Tiny random models of every supported family, built offline from real transformers classes.

Every family gets a deterministic config (text width 64 with 2 layers, vision width 32 with 2 layers,
a 320-row vocabulary (PaliGemma: 1416, see below), 32-pixel images, 8-pixel patches), so a model
builds in well under a second and still meets the real tensor names, shapes and loading paths of its
transformers class.

Tokenizers are byte-level BPE without merges, made with `tokenizers`: ids 0-3 are <pad> <s> </s> <unk>,
4-259 the 256 bytes (any text, Japanese included, round-trips), then the family's added tokens
(`FAMILY_ADDED_TOKENS`: <image>, <|vision_start|>, ...) from 260 on, the way real VLMs append theirs.

Processors: every VLM family uses its real processor class (LlavaProcessor, LlavaNextProcessor,
LlavaOnevisionProcessor, Qwen2VLProcessor, Qwen2_5_VLProcessor, Qwen3VLProcessor, Idefics3Processor,
SmolVLMProcessor, PaliGemmaProcessor, Gemma3Processor, PixtralProcessor for Mistral3,
InternVLProcessor) built from the tiny tokenizer and the family's image (and video) processor set up
for 32-pixel images, so `AutoProcessor.from_pretrained(folder)` works for all of them and
`smoke_inputs` never builds image tokens by hand. Causal-LM families get the tokenizer alone.
SmolVLM's processor needs the `num2words` package (a transformers requirement).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import PretrainedConfig, PreTrainedModel

from vlmmerge.errors import UnsupportedArchitectureError

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

# ---------------------------------------------------------------------------------------------
# Token ids shared by every family: 4 base specials, 256 byte-level tokens, then the family's
# added tokens (image placeholders etc.) from ADDED_TOKEN_START on, as real VLMs append theirs.
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
BASE_SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<unk>")
BYTE_TOKEN_START = len(BASE_SPECIAL_TOKENS)
ADDED_TOKEN_START = BYTE_TOKEN_START + 256
VOCAB_SIZE = 320

IMAGE_SIZE = 32  # pixels; every vision tower sees 32x32 images (or 32x32 tiles)
PATCH_SIZE = 8
# LLaVA-NeXT / OneVision "anyres" grids: up to 2x2 tiles of 32 pixels.
IMAGE_GRID_PINPOINTS = [[IMAGE_SIZE, IMAGE_SIZE], [IMAGE_SIZE, 2 * IMAGE_SIZE], [2 * IMAGE_SIZE, IMAGE_SIZE],
                        [2 * IMAGE_SIZE, 2 * IMAGE_SIZE]]

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
FAMILY_ADDED_TOKENS: dict[str, tuple[str, ...]] = {
    "llava": ("<image>",),
    "llava_next": ("<image>",),
    "llava_onevision": ("<image>", "<video>", "<|im_start|>", "<|im_end|>"),
    "qwen2_vl": (
        "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
    ),
    "qwen2_5_vl": (
        "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
    ),
    "qwen3_vl": (
        "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
    ),
    "idefics3": (
        "<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>",
        *(f"<row_{r}_col_{c}>" for r in range(1, IDEFICS3_GRID + 1) for c in range(1, IDEFICS3_GRID + 1)),
    ),
    "smolvlm": (
        "<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>",
        *(f"<row_{r}_col_{c}>" for r in range(1, IDEFICS3_GRID + 1) for c in range(1, IDEFICS3_GRID + 1)),
    ),
    # PaliGemma's processor always appends 1024 <locNNNN> and 128 <segNNN> tokens: they are part of the
    # real vocabulary, so the tiny one holds them too (and PaliGemma's vocabulary is larger).
    "paligemma": ("<image>", *(f"<loc{i:04d}>" for i in range(1024)), *(f"<seg{i:03d}>" for i in range(128))),
    "gemma3": ("<start_of_image>", "<end_of_image>", "<image_soft_token>", "<start_of_turn>", "<end_of_turn>"),
    "mistral3": ("[IMG]", "[IMG_BREAK]", "[IMG_END]", "[INST]", "[/INST]"),
    "internvl": ("<img>", "</img>", "<IMG_CONTEXT>", "<video>", "<|im_start|>", "<|im_end|>"),
}
PALIGEMMA_VOCAB_SIZE = -(-(ADDED_TOKEN_START + len(FAMILY_ADDED_TOKENS["paligemma"])) // 8) * 8  # 1416
_PLAIN_ADDED_TOKEN = re.compile(r"<(loc\d{4}|seg\d{3})>")  # added, but not special


def added_token_id(family: str, token: str) -> int:
    """Id of one of `family`'s added tokens (e.g. added_token_id("llava", "<image>") == 260)."""
    tokens = FAMILY_ADDED_TOKENS.get(family, ())
    if token not in tokens:
        raise KeyError(f"family {family!r} has no added token {token!r}; it has {tokens}")
    return ADDED_TOKEN_START + tokens.index(token)


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise KeyError(f"unknown tiny family {family!r}; known: {', '.join(FAMILIES)}")


def _mrope_section(head_dim: int, interleaved: bool) -> list[int]:
    """Temporal/height/width rotary sections summing to head_dim / 2, in the real models' ratios
    (Qwen2-VL [16, 24, 24] and Qwen3-VL [24, 20, 20] at head_dim 128)."""
    half = head_dim // 2
    spatial = half * 5 // 16 if interleaved else half * 3 // 8
    return [half - 2 * spatial, spatial, spatial]


def _family_spec(
    family: str, text_overrides: dict[str, Any], vision_overrides: dict[str, Any]
) -> tuple[type[PretrainedConfig], dict[str, Any]]:
    """The config class of `family` and its constructor arguments (sub-configs already built)."""
    t = transformers
    tok = lambda name: added_token_id(family, name)  # noqa: E731

    def text(**family_defaults: Any) -> dict[str, Any]:
        return {**TEXT_DIMS, **family_defaults, **text_overrides}

    def vision(**family_defaults: Any) -> dict[str, Any]:
        return {**VISION_DIMS, **family_defaults, **vision_overrides}

    def gemma3_text_values() -> dict[str, Any]:
        values = text(sliding_window=16)
        values.setdefault("query_pre_attn_scalar", values["head_dim"])
        # Every second layer is global, the last one included, as in Gemma 3's 5:1 pattern scaled down.
        values.setdefault(
            "layer_types",
            ["full_attention" if (i + 1) % 2 == 0 else "sliding_attention" for i in range(values["num_hidden_layers"])],
        )
        return values

    lm_specs = {
        "llama": (t.LlamaConfig, {}),
        "mistral": (t.MistralConfig, {"sliding_window": None}),
        "qwen2": (t.Qwen2Config, {}),
        "qwen3": (t.Qwen3Config, {}),
        "gemma": (t.GemmaConfig, {"hidden_activation": "gelu_pytorch_tanh"}),
    }
    if family in lm_specs:
        config_class, defaults = lm_specs[family]
        return config_class, text(**defaults)
    if family == "gemma3_text":
        return t.Gemma3TextConfig, gemma3_text_values()

    clip_vision = lambda: t.CLIPVisionConfig(**vision(projection_dim=VISION_DIMS["hidden_size"]))  # noqa: E731
    siglip_vision = lambda: t.SiglipVisionConfig(**vision(vision_use_head=False))  # noqa: E731
    tokens_per_image = (IMAGE_SIZE // PATCH_SIZE) ** 2
    if family == "llava":
        return t.LlavaConfig, dict(
            text_config=t.LlamaConfig(**text()), vision_config=clip_vision(),
            image_token_index=tok("<image>"), image_seq_length=tokens_per_image,
            vision_feature_layer=-2, vision_feature_select_strategy="default",
        )
    if family == "llava_next":
        # LLaVA-1.6-Mistral (the EvoVLM-JP base) pairs CLIP with a Mistral language model.
        return t.LlavaNextConfig, dict(
            text_config=t.MistralConfig(**text(sliding_window=None)), vision_config=clip_vision(),
            image_token_index=tok("<image>"), image_grid_pinpoints=IMAGE_GRID_PINPOINTS,
            image_seq_length=tokens_per_image,
            vision_feature_layer=-2, vision_feature_select_strategy="default",
        )
    if family == "llava_onevision":
        return t.LlavaOnevisionConfig, dict(
            text_config=t.Qwen2Config(**text()), vision_config=siglip_vision(),
            image_token_index=tok("<image>"), video_token_index=tok("<video>"),
            image_grid_pinpoints=IMAGE_GRID_PINPOINTS, vision_aspect_ratio="anyres_max_9",
            vision_feature_layer=-1, vision_feature_select_strategy="full",
        )
    if family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        ids = dict(
            vision_start_token_id=tok("<|vision_start|>"), vision_end_token_id=tok("<|vision_end|>"),
            image_token_id=tok("<|image_pad|>"), video_token_id=tok("<|video_pad|>"),
        )
        interleaved = family == "qwen3_vl"
        text_values = text()
        rope = {"rope_type": "default", "rope_theta": 10000.0,
                "mrope_section": _mrope_section(text_values["head_dim"], interleaved)}
        if interleaved:
            rope["mrope_interleaved"] = True
        text_values.setdefault("rope_parameters", rope)
        lm_hidden = text_values["hidden_size"]
        common = dict(depth=VISION_DIMS["num_hidden_layers"], num_heads=VISION_DIMS["num_attention_heads"],
                      patch_size=PATCH_SIZE, spatial_merge_size=2, temporal_patch_size=2)
        if family == "qwen2_vl":
            vision_values = {**common, "embed_dim": VISION_DIMS["hidden_size"], "mlp_ratio": 2,
                             "hidden_size": lm_hidden, **vision_overrides}
            return t.Qwen2VLConfig, dict(
                text_config=t.Qwen2VLTextConfig(**text_values),
                vision_config=t.Qwen2VLVisionConfig(**vision_values), **ids,
            )
        vision_values = {**common, "hidden_size": VISION_DIMS["hidden_size"],
                         "intermediate_size": VISION_DIMS["intermediate_size"], "out_hidden_size": lm_hidden}
        if family == "qwen2_5_vl":
            vision_values.update(window_size=IMAGE_SIZE, fullatt_block_indexes=[1])
            return t.Qwen2_5_VLConfig, dict(
                text_config=t.Qwen2_5_VLTextConfig(**text_values),
                vision_config=t.Qwen2_5_VLVisionConfig(**{**vision_values, **vision_overrides}), **ids,
            )
        # 16 learned positions = a 4x4 patch grid, the grid of one 32-pixel image.
        vision_values.update(num_position_embeddings=(IMAGE_SIZE // PATCH_SIZE) ** 2, deepstack_visual_indexes=[0])
        return t.Qwen3VLConfig, dict(
            text_config=t.Qwen3VLTextConfig(**text_values),
            vision_config=t.Qwen3VLVisionConfig(**{**vision_values, **vision_overrides}), **ids,
        )
    if family in ("idefics3", "smolvlm"):
        config_class, vision_class = (
            (t.Idefics3Config, t.Idefics3VisionConfig) if family == "idefics3"
            else (t.SmolVLMConfig, t.SmolVLMVisionConfig)
        )
        return config_class, dict(
            text_config=t.LlamaConfig(**text()), vision_config=vision_class(**vision()),
            image_token_id=tok("<image>"), scale_factor=2, pad_token_id=PAD_ID,
        )
    if family == "paligemma":
        text_values = text(hidden_activation="gelu_pytorch_tanh", vocab_size=PALIGEMMA_VOCAB_SIZE)
        return t.PaliGemmaConfig, dict(
            text_config=t.GemmaConfig(**text_values), vision_config=siglip_vision(),
            image_token_index=tok("<image>"), vocab_size=text_values["vocab_size"],
            # the projector maps vision features to projection_dim: it must be the LM width
            projection_dim=text_values["hidden_size"], hidden_size=text_values["hidden_size"],
        )
    if family == "gemma3":
        return t.Gemma3Config, dict(
            text_config=t.Gemma3TextConfig(**gemma3_text_values()), vision_config=siglip_vision(),
            mm_tokens_per_image=tokens_per_image // 4,
            boi_token_index=tok("<start_of_image>"), eoi_token_index=tok("<end_of_image>"),
            image_token_index=tok("<image_soft_token>"),
        )
    if family == "mistral3":
        return t.Mistral3Config, dict(
            text_config=t.MistralConfig(**text(sliding_window=None)),
            vision_config=t.PixtralVisionConfig(**vision(head_dim=VISION_DIMS["hidden_size"] // 2)),
            image_token_index=tok("[IMG]"), spatial_merge_size=2, vision_feature_layer=-1,
        )
    if family == "internvl":
        return t.InternVLConfig, dict(
            text_config=t.Qwen2Config(**text()),
            vision_config=t.InternVLVisionConfig(
                **vision(image_size=[IMAGE_SIZE, IMAGE_SIZE], patch_size=[PATCH_SIZE, PATCH_SIZE])
            ),
            image_token_id=tok("<IMG_CONTEXT>"), image_seq_length=tokens_per_image // 4, downsample_ratio=0.5,
        )
    raise KeyError(f"unknown tiny family {family!r}; known: {', '.join(FAMILIES)}")


def tiny_config(family: str, **overrides: Any) -> PretrainedConfig:
    """A deterministic tiny config of `family`, built with `overrides` applied at construction.

    Causal-LM families take config arguments directly (`num_hidden_layers=4`). VLM families take
    top-level arguments plus `text_config={...}` / `vision_config={...}` dicts merged into the tiny
    sub-configs (dependent values such as Qwen's mrope_section or PaliGemma's projection_dim follow).
    The processors of `tiny_processor` assume the default 32-pixel image geometry.
    """
    _check_family(family)
    overrides = dict(overrides)
    if family in LM_FAMILIES:
        text_overrides, vision_overrides, top_overrides = overrides, {}, {}
    else:
        text_overrides = dict(overrides.pop("text_config", None) or {})
        vision_overrides = dict(overrides.pop("vision_config", None) or {})
        top_overrides = overrides
    config_class, values = _family_spec(family, text_overrides, vision_overrides)
    config = config_class(**{**values, **top_overrides})
    config.architectures = [MODEL_CLASS_NAMES[family]]
    return config


def model_class(family: str) -> type[PreTrainedModel]:
    """The transformers model class of `family`."""
    _check_family(family)
    return getattr(transformers, MODEL_CLASS_NAMES[family])


def build_tiny_model(family: str, seed: int = 0, **overrides: Any) -> PreTrainedModel:
    """A randomly initialised tiny model of `family` (float32, eval mode); `seed` fixes the weights."""
    config = tiny_config(family, **overrides)
    with torch.random.fork_rng(devices=[]):  # seed locally: callers' RNG state is left alone
        torch.manual_seed(seed)
        model = model_class(family)(config)
    return model.to(torch.float32).eval()


# ---------------------------------------------------------------------------------------------
# Tokenizers and processors


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the ByteLevel alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(printable, chars)}


# Whether the family's tokenizer prepends <s> (Llama/Mistral/Gemma style) or not (Qwen style).
_ADDS_BOS = {
    "llava": True, "llava_next": True, "llava_onevision": False, "qwen2_vl": False, "qwen2_5_vl": False,
    "qwen3_vl": False, "idefics3": True, "smolvlm": True, "paligemma": True, "gemma3": True, "mistral3": True,
    "internvl": False, "llama": True, "mistral": True, "qwen2": False, "qwen3": False, "gemma": True,
    "gemma3_text": True,
}

# Named model-specific special tokens the family's processor reads from its tokenizer.
_NAMED_SPECIAL_TOKENS: dict[str, dict[str, str]] = {
    "llava": {"image_token": "<image>"},
    "llava_next": {"image_token": "<image>"},
    "llava_onevision": {"image_token": "<image>", "video_token": "<video>"},
    "qwen2_vl": {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                 "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"},
    "qwen2_5_vl": {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                   "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"},
    "qwen3_vl": {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                 "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"},
    "idefics3": {"image_token": "<image>"},
    "smolvlm": {"image_token": "<image>"},
    "paligemma": {"image_token": "<image>"},
    "gemma3": {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
    "mistral3": {"image_token": "[IMG]", "image_break_token": "[IMG_BREAK]", "image_end_token": "[IMG_END]"},
    "internvl": {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                 "video_token": "<video>"},
}

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

# A plain "USER: ... ASSISTANT:" chat template: images become the family's placeholder.
_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ message['role'] | upper }}: "
    "{%- if message['content'] is string -%}{{ ' ' + message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ ' ' }}@@IMAGE@@"
    "{%- elif part['type'] == 'text' -%}{{ ' ' + part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}ASSISTANT:{%- endif -%}"
)


def chat_template(family: str) -> str:
    """The tiny chat template of `family` (images rendered as IMAGE_PLACEHOLDER[family])."""
    _check_family(family)
    return _CHAT_TEMPLATE.replace("@@IMAGE@@", IMAGE_PLACEHOLDER.get(family, ""))


def tiny_tokenizer(family: str) -> transformers.PreTrainedTokenizerFast:
    """A byte-level tokenizer (no merges) with the base specials and `family`'s added tokens.

    Ids: <pad>=0, <s>=1, </s>=2, <unk>=3, bytes 4..259, then FAMILY_ADDED_TOKENS[family] from 260.
    Any text, Japanese included, encodes (one token per UTF-8 byte) and decodes back exactly.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    _check_family(family)
    byte_chars = _bytes_to_unicode()
    added = FAMILY_ADDED_TOKENS.get(family, ())
    vocab: dict[str, int] = {token: i for i, token in enumerate(BASE_SPECIAL_TOKENS)}
    vocab.update({byte_chars[b]: BYTE_TOKEN_START + b for b in range(256)})
    vocab.update({token: ADDED_TOKEN_START + i for i, token in enumerate(added)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    plain = [t for t in added if _PLAIN_ADDED_TOKEN.fullmatch(t)]
    special = [t for t in (*BASE_SPECIAL_TOKENS, *added) if t not in set(plain)]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        add_bos_token=_ADDS_BOS[family],
        add_eos_token=False,
        extra_special_tokens=dict(_NAMED_SPECIAL_TOKENS.get(family, {})),
        # PaliGemma is prompted without a chat template, as the real checkpoints are.
        chat_template=None if family == "paligemma" else chat_template(family),
        model_max_length=TEXT_DIMS["max_position_embeddings"],
        padding_side="left",
    )
    return tokenizer


def _image_processor(family: str) -> Any:
    t = transformers
    square = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    pinpoints = IMAGE_GRID_PINPOINTS
    if family == "llava":
        return t.CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=square)
    if family == "llava_next":
        return t.LlavaNextImageProcessor(
            size={"shortest_edge": IMAGE_SIZE}, crop_size=square, image_grid_pinpoints=pinpoints
        )
    if family == "llava_onevision":
        return t.LlavaOnevisionImageProcessor(size=square, image_grid_pinpoints=pinpoints)
    if family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        factor = PATCH_SIZE * 2
        return t.Qwen2VLImageProcessor(
            patch_size=PATCH_SIZE, merge_size=2, temporal_patch_size=2,
            size={"shortest_edge": factor * factor, "longest_edge": 4 * IMAGE_SIZE * IMAGE_SIZE},
        )
    if family == "idefics3":
        return t.Idefics3ImageProcessor(
            size={"longest_edge": IDEFICS3_GRID * IMAGE_SIZE}, max_image_size={"longest_edge": IMAGE_SIZE},
            do_image_splitting=True,
        )
    if family == "smolvlm":
        return t.SmolVLMImageProcessor(
            size={"longest_edge": IDEFICS3_GRID * IMAGE_SIZE}, max_image_size={"longest_edge": IMAGE_SIZE},
            do_image_splitting=True,
        )
    if family == "paligemma":
        processor = t.SiglipImageProcessor(size=square)
        processor.image_seq_length = (IMAGE_SIZE // PATCH_SIZE) ** 2
        return processor
    if family == "gemma3":
        return t.Gemma3ImageProcessor(size=square)
    if family == "mistral3":
        return t.PixtralImageProcessor(
            size={"longest_edge": IMAGE_SIZE}, patch_size={"height": PATCH_SIZE, "width": PATCH_SIZE}
        )
    if family == "internvl":
        return t.GotOcr2ImageProcessor(size=square, crop_to_patches=False)
    raise KeyError(f"family {family!r} has no image processor")


def _video_processor(family: str) -> Any | None:
    t = transformers
    square = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    factor = PATCH_SIZE * 2
    if family == "llava_onevision":
        return t.LlavaOnevisionVideoProcessor(size=square)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        return t.Qwen2VLVideoProcessor(
            patch_size=PATCH_SIZE, merge_size=2, temporal_patch_size=2,
            size={"shortest_edge": factor * factor, "longest_edge": 4 * IMAGE_SIZE * IMAGE_SIZE},
        )
    if family == "qwen3_vl":
        return t.Qwen3VLVideoProcessor(
            patch_size=PATCH_SIZE, merge_size=2, temporal_patch_size=2,
            size={"shortest_edge": factor * factor, "longest_edge": 4 * IMAGE_SIZE * IMAGE_SIZE * 2},
        )
    if family == "smolvlm":
        return t.SmolVLMVideoProcessor(
            size={"longest_edge": IDEFICS3_GRID * IMAGE_SIZE}, max_image_size={"longest_edge": IMAGE_SIZE}
        )
    if family == "internvl":
        return t.InternVLVideoProcessor(size=square)
    return None


def tiny_processor(family: str) -> Any:
    """The family's real processor built offline from `tiny_tokenizer` and a 32-pixel image processor.

    Causal-LM families get the tokenizer alone.
    """
    t = transformers
    tokenizer = tiny_tokenizer(family)
    if family in LM_FAMILIES:
        return tokenizer
    image_processor = _image_processor(family)
    video_processor = _video_processor(family)
    template = chat_template(family)
    tokens_per_image = (IMAGE_SIZE // PATCH_SIZE) ** 2
    if family == "llava":
        return t.LlavaProcessor(
            image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
            vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=template,
        )
    if family == "llava_next":
        return t.LlavaNextProcessor(
            image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
            vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=template,
        )
    if family == "llava_onevision":
        return t.LlavaOnevisionProcessor(
            image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
            num_image_tokens=tokens_per_image, vision_feature_select_strategy="full", chat_template=template,
        )
    if family in ("qwen2_vl", "qwen2_5_vl"):
        cls = t.Qwen2VLProcessor if family == "qwen2_vl" else t.Qwen2_5_VLProcessor
        return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                   chat_template=template)
    if family == "qwen3_vl":
        return t.Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                  video_processor=video_processor, chat_template=template)
    if family == "idefics3":
        return t.Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                   image_seq_len=tokens_per_image // 4, chat_template=template)
    if family == "smolvlm":
        return t.SmolVLMProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                  video_processor=video_processor, image_seq_len=tokens_per_image // 4,
                                  chat_template=template)
    if family == "paligemma":
        return t.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    if family == "gemma3":
        return t.Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                 image_seq_length=tokens_per_image // 4, chat_template=template)
    if family == "mistral3":
        return t.PixtralProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
                                  spatial_merge_size=2, chat_template=template)
    if family == "internvl":
        return t.InternVLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                   video_processor=video_processor, image_seq_length=tokens_per_image // 4,
                                   chat_template=template)
    raise KeyError(f"unknown tiny family {family!r}; known: {', '.join(FAMILIES)}")


# ---------------------------------------------------------------------------------------------
# Inputs and generation

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
    _check_family(family)
    if family in LM_FAMILIES:
        return SMOKE_TEXT
    return f"{IMAGE_PLACEHOLDER[family]}{SMOKE_PROMPT}"


def smoke_inputs(family: str, processor: Any = None) -> dict[str, torch.Tensor]:
    """Model inputs for one prompt (with one image for VLMs), ready for `model(**inputs)` or `generate`.

    All families go through their real processor (`tiny_processor(family)` unless one is given).
    """
    _check_family(family)
    processor = tiny_processor(family) if processor is None else processor
    if family in LM_FAMILIES:
        encoded = processor(smoke_prompt(family), return_tensors="pt")
    else:
        encoded = processor(images=[smoke_image()], text=[smoke_prompt(family)], return_tensors="pt")
    # PaliGemma's processor also returns training labels (all -100 without a suffix): not an input.
    return {k: v for k, v in encoded.items() if isinstance(v, torch.Tensor) and k != "labels"}


# ---------------------------------------------------------------------------------------------
# Families of configs and models; matching causal LMs; fine-tune stand-ins

_FAMILY_OF_CLASS = {name: family for family, name in MODEL_CLASS_NAMES.items()}

# Language-side config model_type -> the standalone causal-LM config class with the same tensors.
_LM_CONFIG_FOR_TEXT_TYPE: dict[str, str] = {
    "llama": "LlamaConfig",
    "mistral": "MistralConfig",
    "qwen2": "Qwen2Config",
    "qwen2_vl_text": "Qwen2Config",
    "qwen2_5_vl_text": "Qwen2Config",
    "qwen3": "Qwen3Config",
    "qwen3_vl_text": "Qwen3Config",
    "gemma": "GemmaConfig",
    "gemma3_text": "Gemma3TextConfig",
}
# Multimodal-only settings of a VLM's text config that a standalone causal LM must not inherit.
_VLM_ONLY_TEXT_KEYS = ("num_image_tokens", "use_bidirectional_attention", "architectures", "model_type",
                       "transformers_version", "_name_or_path", "tie_word_embeddings")
_VLM_ONLY_ROPE_KEYS = ("mrope_section", "mrope_interleaved")


def family_of_config(config: PretrainedConfig) -> str:
    """The tiny-family key of a config (by its architecture, else its model_type)."""
    for architecture in getattr(config, "architectures", None) or ():
        if architecture in _FAMILY_OF_CLASS:
            return _FAMILY_OF_CLASS[architecture]
    model_type = getattr(config, "model_type", None)
    if model_type in FAMILIES:
        return model_type
    raise KeyError(f"no tiny family for architectures={getattr(config, 'architectures', None)} "
                   f"model_type={model_type!r}")


def family_of_model(model: PreTrainedModel) -> str:
    name = type(model).__name__
    if name in _FAMILY_OF_CLASS:
        return _FAMILY_OF_CLASS[name]
    return family_of_config(model.config)


def matching_lm_config(vlm_config: PretrainedConfig) -> PretrainedConfig:
    """A standalone causal-LM config whose tensors equal the VLM language side's.

    Names match after replacing `model.language_model.` / `model.text_model.` by `model.`; shapes match.
    Multimodal rope settings (`mrope_section`) are dropped; weight tying follows the VLM's top-level
    config, which is what decides tying in transformers 5.
    """
    text = vlm_config.get_text_config()
    if text is vlm_config:
        raise UnsupportedArchitectureError(
            f"config of model_type {vlm_config.model_type!r} has no text_config: not a VLM"
        )
    class_name = _LM_CONFIG_FOR_TEXT_TYPE.get(text.model_type)
    if class_name is None:
        raise UnsupportedArchitectureError(
            f"no standalone causal-LM config known for the text model_type {text.model_type!r} "
            f"of {vlm_config.model_type!r}; known: {', '.join(_LM_CONFIG_FOR_TEXT_TYPE)}"
        )
    values = {k: v for k, v in text.to_dict().items() if k not in _VLM_ONLY_TEXT_KEYS}
    rope = values.get("rope_parameters")
    if isinstance(rope, dict):
        values["rope_parameters"] = {k: v for k, v in rope.items() if k not in _VLM_ONLY_ROPE_KEYS}
    config_class = getattr(transformers, class_name)
    lm_config = config_class(**values)
    tied = getattr(vlm_config, "tie_word_embeddings", None)
    if tied is None:
        tied = getattr(text, "tie_word_embeddings", False)
    lm_config.tie_word_embeddings = bool(tied)
    lm_architecture = {
        "LlamaConfig": "LlamaForCausalLM", "MistralConfig": "MistralForCausalLM", "Qwen2Config": "Qwen2ForCausalLM",
        "Qwen3Config": "Qwen3ForCausalLM", "GemmaConfig": "GemmaForCausalLM", "Gemma3TextConfig": "Gemma3ForCausalLM",
    }[class_name]
    lm_config.architectures = [lm_architecture]
    return lm_config


def build_tiny_lm_for(vlm_family: str, seed: int = 1, vocab_size: int | None = None) -> PreTrainedModel:
    """A random causal LM shaped like `vlm_family`'s language side (float32, eval mode).

    `vocab_size` smaller than the VLM's mimics a VLM that appended rows (LLaVA-1.6: 32064 vs 32000).
    """
    if vlm_family not in VLM_FAMILIES:
        raise KeyError(f"{vlm_family!r} is not a VLM family; known: {', '.join(VLM_FAMILIES)}")
    lm_config = matching_lm_config(tiny_config(vlm_family))
    if vocab_size is not None:
        lm_config.vocab_size = vocab_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, lm_config.architectures[0])(lm_config)
    return model.to(torch.float32).eval()


def finetune_like(model: PreTrainedModel, seed: int, scale: float = 0.02) -> PreTrainedModel:
    """A copy of `model` whose floating-point parameters moved by seeded N(0, scale^2) noise.

    Parameters are visited in `named_parameters()` order from one generator seeded with `seed`, so
    the result is reproducible; tied parameters stay tied (they are one parameter).
    """
    tuned = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in tuned.named_parameters():
            if parameter.is_floating_point():
                noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
                parameter.add_((noise * scale).to(parameter.dtype))
    return tuned


# ---------------------------------------------------------------------------------------------
# On-disk layouts

LAYOUTS: tuple[str, ...] = ("default", "runtime", "hub_llava", "qwen2_vl_original")
FORMATS: tuple[str, ...] = ("safetensors", "bin")
HUB_LLAVA_FAMILIES: tuple[str, ...] = (
    "llava", "llava_next", "llava_onevision", "paligemma", "gemma3", "mistral3", "internvl",
)
QWEN2_VL_ORIGINAL_FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl")
# Vision towers that the hub nests one level deeper (`vision_tower.vision_model.*`).
_NESTED_VISION_TOWERS = ("CLIPVisionModel", "SiglipVisionModel")


def _replace_prefix(name: str, old: str, new: str) -> str | None:
    return new + name[len(old):] if name.startswith(old) else None


def hub_llava_name(runtime_name: str, nested_vision: bool) -> str:
    """Runtime name -> the name in a hub LLaVA-style checkpoint (`language_model.model.*` ...)."""
    rules = [
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
        ("model.vision_tower.", "vision_tower.vision_model." if nested_vision else "vision_tower."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("model.image_newline", "image_newline"),
    ]
    for old, new in rules:
        renamed = _replace_prefix(runtime_name, old, new)
        if renamed is not None:
            return renamed
    raise KeyError(f"tensor {runtime_name!r} has no place in the hub LLaVA layout")


def qwen2_vl_original_name(runtime_name: str) -> str:
    """Runtime name -> the name in an original Qwen2-VL checkpoint (`model.*`, `visual.*`, `lm_head.*`)."""
    for old, new in (("model.language_model.", "model."), ("model.visual.", "visual."), ("lm_head.", "lm_head.")):
        renamed = _replace_prefix(runtime_name, old, new)
        if renamed is not None:
            return renamed
    raise KeyError(f"tensor {runtime_name!r} has no place in the original Qwen2-VL layout")


def _is_tied(model: PreTrainedModel) -> bool:
    output = model.get_output_embeddings()
    return output is not None and output.weight is model.get_input_embeddings().weight


def layout_state_dict(model: PreTrainedModel, layout: str) -> dict[str, torch.Tensor]:
    """The tensors `save_model` writes for `layout`, by on-disk name (independent CPU copies)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    runtime = {name: tensor.detach().to("cpu").clone().contiguous() for name, tensor in model.state_dict().items()}
    if layout == "runtime":
        return runtime
    if layout == "default":
        from safetensors.torch import load_file

        with tempfile.TemporaryDirectory() as scratch:
            model.save_pretrained(scratch)
            files = sorted(Path(scratch).glob("*.safetensors"))
            state: dict[str, torch.Tensor] = {}
            for file in files:
                state.update(load_file(file))
            return state
    family = family_of_model(model)
    if layout == "hub_llava":
        if family not in HUB_LLAVA_FAMILIES:
            raise ValueError(f"layout 'hub_llava' is for {HUB_LLAVA_FAMILIES}, not {family!r}")
        nested = type(model.model.vision_tower).__name__ in _NESTED_VISION_TOWERS
        tied = _is_tied(model)
        return {
            hub_llava_name(name, nested): tensor
            for name, tensor in runtime.items()
            if not (tied and name.startswith("lm_head."))  # hub checkpoints of tied models omit the head
        }
    if family not in QWEN2_VL_ORIGINAL_FAMILIES:
        raise ValueError(f"layout 'qwen2_vl_original' is for {QWEN2_VL_ORIGINAL_FAMILIES}, not {family!r}")
    return {qwen2_vl_original_name(name): tensor for name, tensor in runtime.items()}


def write_weights(
    state_dict: dict[str, torch.Tensor], folder: Path, fmt: str = "safetensors", max_shard_size: str | int | None = None
) -> list[Path]:
    """Write tensors as one file or shards + index, the file names transformers expects."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; known: {', '.join(FORMATS)}")
    pattern, index_name = (
        ("model{suffix}.safetensors", "model.safetensors.index.json") if fmt == "safetensors"
        else ("pytorch_model{suffix}.bin", "pytorch_model.bin.index.json")
    )
    split = split_torch_state_dict_into_shards(
        state_dict, filename_pattern=pattern, max_shard_size=max_shard_size or "50GB"
    )
    written = []
    for filename, names in split.filename_to_tensors.items():
        shard = {name: state_dict[name].contiguous() for name in names}
        path = folder / filename
        if fmt == "safetensors":
            save_file(shard, path, metadata={"format": "pt"})
        else:
            torch.save(shard, path)
        written.append(path)
    if split.is_sharded:
        index = {"metadata": dict(split.metadata), "weight_map": dict(split.tensor_to_filename)}
        (folder / index_name).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        written.append(folder / index_name)
    return written


def save_model(
    model: PreTrainedModel,
    out_dir: Path | str,
    layout: str = "default",
    max_shard_size: str | int | None = None,
    fmt: str = "safetensors",
    processor: Any = None,
) -> Path:
    """Save `model` as a complete folder: weights in `layout`/`fmt`, config, generation config, processor.

    Layouts: "default" is exactly `save_pretrained` (transformers 5 writes the original/legacy key
    layout, see `layout_state_dict`); "runtime" holds every `model.state_dict()` key (tied copies
    included); "hub_llava" / "qwen2_vl_original" are the hub layouts of those families. `processor`
    defaults to `tiny_processor(family)`. The folder is written aside and renamed into place;
    `out_dir` must be absent or empty.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not an empty folder")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; known: {', '.join(FORMATS)}")
    family = family_of_model(model)
    processor = tiny_processor(family) if processor is None else processor
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        if layout == "default" and fmt == "safetensors":
            kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
            model.save_pretrained(staging, **kwargs)
        else:
            write_weights(layout_state_dict(model, layout), staging, fmt=fmt, max_shard_size=max_shard_size)
            model.config.save_pretrained(staging)
            if model.generation_config is not None:
                model.generation_config.save_pretrained(staging)
        processor.save_pretrained(staging)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def load_model(model_dir: Path | str, **kwargs: Any) -> PreTrainedModel:
    """Load a saved tiny folder with the right Auto class (image-text-to-text or causal LM), float32."""
    config = transformers.AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    auto = (
        transformers.AutoModelForImageTextToText if family_of_config(config) in VLM_FAMILIES
        else transformers.AutoModelForCausalLM
    )
    kwargs.setdefault("dtype", torch.float32)
    return auto.from_pretrained(model_dir, trust_remote_code=False, **kwargs).eval()


def load_processor(model_dir: Path | str) -> Any:
    """AutoProcessor for VLM folders, AutoTokenizer for causal-LM folders."""
    config = transformers.AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    if family_of_config(config) in VLM_FAMILIES:
        return transformers.AutoProcessor.from_pretrained(model_dir, trust_remote_code=False)
    return transformers.AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)


def generate_smoke(model_dir: Path | str, max_new_tokens: int = 3) -> torch.Tensor:
    """Load a saved folder (Auto classes, no remote code), greedily generate exactly
    `max_new_tokens` tokens for the smoke prompt (with the smoke image for VLMs); the new ids, (1, n)."""
    config = transformers.AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    family = family_of_config(config)
    model = load_model(model_dir)
    inputs = smoke_inputs(family, load_processor(model_dir))
    with torch.no_grad():
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False
        )
    return output[:, inputs["input_ids"].shape[1]:]
