"""Causal-LM families: Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma 3 text (config only; the
tokenizer is their processor)."""

from __future__ import annotations

from typing import Any

import transformers as t
from transformers import PretrainedConfig

from vlmmerge.testing.common import text_values

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma3_text")


def gemma3_text_values(overrides: dict[str, Any]) -> dict[str, Any]:
    """Gemma 3 text-config arguments (also the language side of the Gemma 3 VLM)."""
    values = text_values(overrides, sliding_window=16)
    values.setdefault("query_pre_attn_scalar", values["head_dim"])
    # Every second layer is global, the last one included, as in Gemma 3's 5:1 pattern scaled down.
    values.setdefault(
        "layer_types",
        ["full_attention" if (i + 1) % 2 == 0 else "sliding_attention" for i in range(values["num_hidden_layers"])],
    )
    return values


def config_spec(
    family: str, text_overrides: dict[str, Any], vision_overrides: dict[str, Any]
) -> tuple[type[PretrainedConfig], dict[str, Any]]:
    if family == "gemma3_text":
        return t.Gemma3TextConfig, gemma3_text_values(text_overrides)
    config_class, defaults = {
        "llama": (t.LlamaConfig, {}),
        "mistral": (t.MistralConfig, {"sliding_window": None}),
        "qwen2": (t.Qwen2Config, {}),
        "qwen3": (t.Qwen3Config, {}),
        "gemma": (t.GemmaConfig, {"hidden_activation": "gelu_pytorch_tanh"}),
    }[family]
    return config_class, text_values(text_overrides, **defaults)
