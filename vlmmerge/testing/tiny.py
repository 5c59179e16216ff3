"""Tiny random models of every supported family, built offline from real transformers classes.

Every family gets a deterministic config (hidden 32-64, two language layers, two vision layers,
a 320-row vocabulary, 32-pixel images) so a model builds in milliseconds and still meets the real
tensor names, shapes and loading paths of its transformers class.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import transformers
from transformers import PretrainedConfig, PreTrainedModel

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
    "paligemma": ("<image>",),
    "gemma3": ("<start_of_image>", "<end_of_image>", "<image_soft_token>", "<start_of_turn>", "<end_of_turn>"),
    "mistral3": ("[IMG]", "[IMG_BREAK]", "[IMG_END]", "[INST]", "[/INST]"),
    "internvl": ("<img>", "</img>", "<IMG_CONTEXT>", "<video>", "<|im_start|>", "<|im_end|>"),
}


def added_token_id(family: str, token: str) -> int:
    """Id of one of `family`'s added tokens (e.g. added_token_id("llava", "<image>") == 260)."""
    tokens = FAMILY_ADDED_TOKENS.get(family, ())
    if token not in tokens:
        raise KeyError(f"family {family!r} has no added token {token!r}; it has {tokens}")
    return ADDED_TOKEN_START + tokens.index(token)


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise KeyError(f"unknown tiny family {family!r}; known: {', '.join(FAMILIES)}")


def _text(**extra: Any) -> dict[str, Any]:
    return {**TEXT_DIMS, **extra}


def _vision(**extra: Any) -> dict[str, Any]:
    return {**VISION_DIMS, **extra}


def _base_config(family: str) -> PretrainedConfig:
    """The tiny config of `family`, before user overrides."""
    t = transformers
    tok = lambda name: added_token_id(family, name)  # noqa: E731
    if family == "llava":
        return t.LlavaConfig(
            text_config=t.LlamaConfig(**_text()),
            vision_config=t.CLIPVisionConfig(**_vision(projection_dim=32)),
            image_token_index=tok("<image>"),
            image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
    if family == "llava_next":
        # LLaVA-1.6-Mistral (the EvoVLM-JP base) pairs CLIP with a Mistral language model.
        return t.LlavaNextConfig(
            text_config=t.MistralConfig(**_text(sliding_window=None)),
            vision_config=t.CLIPVisionConfig(**_vision(projection_dim=32)),
            image_token_index=tok("<image>"),
            image_grid_pinpoints=[[32, 32], [32, 64], [64, 32], [64, 64]],
            image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
    if family == "llava_onevision":
        return t.LlavaOnevisionConfig(
            text_config=t.Qwen2Config(**_text()),
            vision_config=t.SiglipVisionConfig(**_vision(vision_use_head=False)),
            image_token_index=tok("<image>"),
            video_token_index=tok("<video>"),
            image_grid_pinpoints=[[32, 32], [32, 64], [64, 32], [64, 64]],
            vision_aspect_ratio="anyres_max_9",
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
        )
    if family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        ids = dict(
            vision_start_token_id=tok("<|vision_start|>"),
            vision_end_token_id=tok("<|vision_end|>"),
            image_token_id=tok("<|image_pad|>"),
            video_token_id=tok("<|video_pad|>"),
        )
        vis = dict(depth=2, num_heads=2, patch_size=PATCH_SIZE, spatial_merge_size=2, temporal_patch_size=2)
        head_half = TEXT_DIMS["head_dim"] // 2
        if family == "qwen2_vl":
            rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
            assert sum(rope["mrope_section"]) == head_half
            return t.Qwen2VLConfig(
                text_config=t.Qwen2VLTextConfig(**_text(rope_parameters=rope)),
                vision_config=t.Qwen2VLVisionConfig(**vis, embed_dim=32, mlp_ratio=2, hidden_size=64),
                **ids,
            )
        if family == "qwen2_5_vl":
            rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
            return t.Qwen2_5_VLConfig(
                text_config=t.Qwen2_5_VLTextConfig(**_text(rope_parameters=rope)),
                vision_config=t.Qwen2_5_VLVisionConfig(
                    **vis, hidden_size=32, intermediate_size=64, out_hidden_size=64,
                    window_size=32, fullatt_block_indexes=[1],
                ),
                **ids,
            )
        rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True}
        return t.Qwen3VLConfig(
            text_config=t.Qwen3VLTextConfig(**_text(rope_parameters=rope)),
            vision_config=t.Qwen3VLVisionConfig(
                **vis, hidden_size=32, intermediate_size=64, out_hidden_size=64,
                num_position_embeddings=16, deepstack_visual_indexes=[0],
            ),
            **ids,
        )
    if family in ("idefics3", "smolvlm"):
        cls, vcls = (
            (t.Idefics3Config, t.Idefics3VisionConfig) if family == "idefics3"
            else (t.SmolVLMConfig, t.SmolVLMVisionConfig)
        )
        return cls(
            text_config=t.LlamaConfig(**_text()),
            vision_config=vcls(**_vision()),
            image_token_id=tok("<image>"),
            scale_factor=2,
            pad_token_id=PAD_ID,
        )
    if family == "paligemma":
        return t.PaliGemmaConfig(
            text_config=t.GemmaConfig(**_text(hidden_activation="gelu_pytorch_tanh")),
            vision_config=t.SiglipVisionConfig(**_vision(vision_use_head=False)),
            image_token_index=tok("<image>"),
            vocab_size=VOCAB_SIZE,
            projection_dim=TEXT_DIMS["hidden_size"],
            hidden_size=TEXT_DIMS["hidden_size"],
        )
    if family == "gemma3":
        return t.Gemma3Config(
            text_config=_gemma3_text_config(),
            vision_config=t.SiglipVisionConfig(**_vision(vision_use_head=False)),
            mm_tokens_per_image=4,
            boi_token_index=tok("<start_of_image>"),
            eoi_token_index=tok("<end_of_image>"),
            image_token_index=tok("<image_soft_token>"),
        )
    if family == "mistral3":
        return t.Mistral3Config(
            text_config=t.MistralConfig(**_text(sliding_window=None)),
            vision_config=t.PixtralVisionConfig(**_vision(head_dim=16)),
            image_token_index=tok("[IMG]"),
            spatial_merge_size=2,
            vision_feature_layer=-1,
        )
    if family == "internvl":
        return t.InternVLConfig(
            text_config=t.Qwen2Config(**_text()),
            vision_config=t.InternVLVisionConfig(
                **{**_vision(), "image_size": [IMAGE_SIZE, IMAGE_SIZE], "patch_size": [PATCH_SIZE, PATCH_SIZE]}
            ),
            image_token_id=tok("<IMG_CONTEXT>"),
            image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2 // 4,
            downsample_ratio=0.5,
        )
    if family == "llama":
        return t.LlamaConfig(**_text())
    if family == "mistral":
        return t.MistralConfig(**_text(sliding_window=None))
    if family == "qwen2":
        return t.Qwen2Config(**_text())
    if family == "qwen3":
        return t.Qwen3Config(**_text())
    if family == "gemma":
        return t.GemmaConfig(**_text(hidden_activation="gelu_pytorch_tanh"))
    if family == "gemma3_text":
        return _gemma3_text_config()
    raise KeyError(f"unknown tiny family {family!r}; known: {', '.join(FAMILIES)}")


def _gemma3_text_config() -> PretrainedConfig:
    return transformers.Gemma3TextConfig(
        **_text(
            query_pre_attn_scalar=TEXT_DIMS["head_dim"],
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"],
        )
    )


def tiny_config(family: str, **overrides: Any) -> PretrainedConfig:
    """A deterministic tiny config of `family`; `overrides` set top-level config attributes.

    `text_config={...}` / `vision_config={...}` dicts update those sub-configs key by key.
    """
    _check_family(family)
    config = _base_config(family)
    for key, value in overrides.items():
        if key in ("text_config", "vision_config") and isinstance(value, dict):
            sub = getattr(config, key)
            for sub_key, sub_value in value.items():
                setattr(sub, sub_key, sub_value)
        else:
            setattr(config, key, value)
    config.architectures = [MODEL_CLASS_NAMES[family]]
    return config


def model_class(family: str) -> type[PreTrainedModel]:
    _check_family(family)
    return getattr(transformers, MODEL_CLASS_NAMES[family])


def build_tiny_model(family: str, seed: int = 0, **overrides: Any) -> PreTrainedModel:
    """A randomly initialised tiny model of `family` (float32, eval mode); `seed` fixes the weights."""
    config = tiny_config(family, **overrides)
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
    "{%- endfor -%}{%- endif -%}\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}ASSISTANT:{%- endif -%}"
)


def chat_template(family: str) -> str:
    """The tiny chat template of `family` (images rendered as IMAGE_PLACEHOLDER[family])."""
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
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in (*BASE_SPECIAL_TOKENS, *added)]
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        add_bos_token=_ADDS_BOS[family],
        add_eos_token=False,
        extra_special_tokens=dict(_NAMED_SPECIAL_TOKENS.get(family, {})),
        chat_template=chat_template(family) if family in VLM_FAMILIES else _CHAT_TEMPLATE,
        model_max_length=TEXT_DIMS["max_position_embeddings"],
        padding_side="left",
    )
    return tokenizer


def _image_processor(family: str) -> Any:
    t = transformers
    square = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
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
                                 image_seq_length=4, chat_template=template)
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


def smoke_image(size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)) -> "PIL.Image.Image":  # noqa: F821
    """A deterministic RGB test image (colour gradients), `size` = (width, height)."""
    import numpy as np
    from PIL import Image

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
    return {key: value for key, value in encoded.items() if isinstance(value, torch.Tensor)}
