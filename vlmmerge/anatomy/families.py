"""The families vlmmerge knows: which runtime-name prefixes are vision, projector, language, head.

A family is data, not code. Prefixes are runtime names (what `model.state_dict()` shows in
transformers 5); projector prefixes are matched before vision prefixes because some projectors
(Qwen2-VL's merger) live inside the vision module.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    classes: tuple[str, ...]
    vision: tuple[str, ...] = ()
    projector: tuple[str, ...] = ()
    language: str = "model."  # prefix of the language backbone (embeddings, layers, final norm)
    head: str = "lm_head."
    text_config_attr: str | None = None  # where a VLM keeps its language config

    @property
    def is_vlm(self) -> bool:
        return self.text_config_attr is not None


_LLAVA_LIKE = dict(
    vision=("model.vision_tower.",),
    projector=("model.multi_modal_projector.",),
    language="model.language_model.",
    text_config_attr="text_config",
)

FAMILIES: tuple[Family, ...] = (
    Family("llava", ("LlavaForConditionalGeneration",), **_LLAVA_LIKE),
    Family(
        "llava_next",
        ("LlavaNextForConditionalGeneration", "LlavaOnevisionForConditionalGeneration"),
        vision=("model.vision_tower.",),
        projector=("model.multi_modal_projector.", "model.image_newline"),
        language="model.language_model.",
        text_config_attr="text_config",
    ),
    Family(
        "qwen_vl",
        (
            "Qwen2VLForConditionalGeneration",
            "Qwen2_5_VLForConditionalGeneration",
            "Qwen3VLForConditionalGeneration",
        ),
        vision=("model.visual.",),
        projector=("model.visual.merger.", "model.visual.deepstack_merger_list."),
        language="model.language_model.",
        text_config_attr="text_config",
    ),
    Family(
        "idefics3",
        ("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration", "Idefics2ForConditionalGeneration"),
        vision=("model.vision_model.",),
        projector=("model.connector.",),
        language="model.text_model.",
        text_config_attr="text_config",
    ),
    Family("paligemma", ("PaliGemmaForConditionalGeneration",), **_LLAVA_LIKE),
    Family("gemma3", ("Gemma3ForConditionalGeneration",), **_LLAVA_LIKE),
    Family("mistral3", ("Mistral3ForConditionalGeneration",), **_LLAVA_LIKE),
    Family("internvl", ("InternVLForConditionalGeneration",), **_LLAVA_LIKE),
    Family(
        "causal_lm",
        (
            "LlamaForCausalLM",
            "MistralForCausalLM",
            "Qwen2ForCausalLM",
            "Qwen3ForCausalLM",
            "GemmaForCausalLM",
            "Gemma2ForCausalLM",
            "Gemma3ForCausalLM",
            "Phi3ForCausalLM",
        ),
    ),
)

_BY_CLASS = {cls: family for family in FAMILIES for cls in family.classes}


def family_for_architecture(architecture: str) -> Family | None:
    return _BY_CLASS.get(architecture)


def generic_causal_lm(architecture: str, model_type: str, head: str = "lm_head.") -> Family | None:
    """A text-only family for a causal LM outside the table (Granite, GPT-2, Falcon, GraniteMoE, ...):
    every tensor but the head is language side. Only transformers' own causal-LM class for the
    config's model_type qualifies, so a VLM or an encoder never falls through to it."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    names = (names,) if isinstance(names, str) else tuple(names or ())
    if architecture not in names:
        return None
    return Family("generic_causal_lm", (architecture,), language="", head=head)


def supported_architectures() -> list[str]:
    return sorted(_BY_CLASS)
