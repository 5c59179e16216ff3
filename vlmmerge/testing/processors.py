"""Tiny tokenizers and processors of every family.

Tokenizers are byte-level BPE without merges, made with `tokenizers`: ids 0-3 are <pad> <s> </s> <unk>,
4-259 the 256 bytes (any text, Japanese included, round-trips), then the family's added tokens
(`FAMILY_ADDED_TOKENS`: <image>, <|vision_start|>, ...) from 260 on, the way real VLMs append theirs.

Processors: every VLM family uses its real processor class (LlavaProcessor, ..., PixtralProcessor for
Mistral3, InternVLProcessor; see `vlmmerge.testing.families`) built from the tiny tokenizer and the
family's image (and video) processor set up for 32-pixel images, so `AutoProcessor.from_pretrained(folder)`
works for all of them and `smoke_inputs` never builds image tokens by hand. Causal-LM families get the
tokenizer alone.
"""

from __future__ import annotations

from typing import Any

import transformers

from vlmmerge.testing.common import (
    ADDED_TOKEN_START,
    BASE_SPECIAL_TOKENS,
    BYTE_TOKEN_START,
    FAMILY_ADDED_TOKENS,
    IMAGE_PLACEHOLDER,
    LM_FAMILIES,
    PLAIN_ADDED_TOKEN,
    TEXT_DIMS,
    check_family,
)
from vlmmerge.testing.families import MODULE_OF


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
    check_family(family)
    return _CHAT_TEMPLATE.replace("@@IMAGE@@", IMAGE_PLACEHOLDER.get(family, ""))


def tiny_tokenizer(family: str) -> transformers.PreTrainedTokenizerFast:
    """A byte-level tokenizer (no merges) with the base specials and `family`'s added tokens.

    Ids: <pad>=0, <s>=1, </s>=2, <unk>=3, bytes 4..259, then FAMILY_ADDED_TOKENS[family] from 260.
    Any text, Japanese included, encodes (one token per UTF-8 byte) and decodes back exactly.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    check_family(family)
    byte_chars = _bytes_to_unicode()
    added = FAMILY_ADDED_TOKENS.get(family, ())
    vocab: dict[str, int] = {token: i for i, token in enumerate(BASE_SPECIAL_TOKENS)}
    vocab.update({byte_chars[b]: BYTE_TOKEN_START + b for b in range(256)})
    vocab.update({token: ADDED_TOKEN_START + i for i, token in enumerate(added)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    plain = [t for t in added if PLAIN_ADDED_TOKEN.fullmatch(t)]
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


def tiny_processor(family: str) -> Any:
    """The family's real processor built offline from `tiny_tokenizer` and a 32-pixel image processor.

    Causal-LM families get the tokenizer alone.
    """
    tokenizer = tiny_tokenizer(family)
    if family in LM_FAMILIES:
        return tokenizer
    return MODULE_OF[family].processor(family, tokenizer, chat_template(family))
