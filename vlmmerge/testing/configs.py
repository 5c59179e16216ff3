"""Tiny configs and models of every family, matching standalone causal LMs, fine-tune stand-ins."""

from __future__ import annotations

import copy
from typing import Any

import torch
import transformers
from transformers import PretrainedConfig, PreTrainedModel

from vlmmerge.errors import UnsupportedArchitectureError
from vlmmerge.testing.common import FAMILIES, LM_FAMILIES, MODEL_CLASS_NAMES, VLM_FAMILIES, check_family
from vlmmerge.testing.families import MODULE_OF


def tiny_config(family: str, **overrides: Any) -> PretrainedConfig:
    """A deterministic tiny config of `family`, built with `overrides` applied at construction.

    Causal-LM families take config arguments directly (`num_hidden_layers=4`). VLM families take
    top-level arguments plus `text_config={...}` / `vision_config={...}` dicts merged into the tiny
    sub-configs (dependent values such as Qwen's mrope_section or PaliGemma's projection_dim follow).
    The processors of `tiny_processor` assume the default 32-pixel image geometry.
    """
    check_family(family)
    overrides = dict(overrides)
    if family in LM_FAMILIES:
        text_overrides, vision_overrides, top_overrides = overrides, {}, {}
    else:
        text_overrides = dict(overrides.pop("text_config", None) or {})
        vision_overrides = dict(overrides.pop("vision_config", None) or {})
        top_overrides = overrides
    config_class, values = MODULE_OF[family].config_spec(family, text_overrides, vision_overrides)
    config = config_class(**{**values, **top_overrides})
    config.architectures = [MODEL_CLASS_NAMES[family]]
    return config


def model_class(family: str) -> type[PreTrainedModel]:
    """The transformers model class of `family`."""
    check_family(family)
    return getattr(transformers, MODEL_CLASS_NAMES[family])


def build_tiny_model(family: str, seed: int = 0, **overrides: Any) -> PreTrainedModel:
    """A randomly initialised tiny model of `family` (float32, eval mode); `seed` fixes the weights."""
    config = tiny_config(family, **overrides)
    with torch.random.fork_rng(devices=[]):  # seed locally: callers' RNG state is left alone
        torch.manual_seed(seed)
        model = model_class(family)(config)
    return model.to(torch.float32).eval()


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
