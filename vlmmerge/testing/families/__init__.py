"""Per-family tiny builders: each module holds one group of related families and gives
`config_spec(family, text_overrides, vision_overrides) -> (config class, arguments)` and, for VLMs,
`processor(family, tokenizer, chat_template)`. `MODULE_OF` maps a family to its module."""

from __future__ import annotations

from types import ModuleType

from vlmmerge.testing.families import causal_lm, gemma, idefics, internvl, llava, mistral3, qwen_vl

MODULES: tuple[ModuleType, ...] = (causal_lm, llava, qwen_vl, idefics, gemma, mistral3, internvl)
MODULE_OF: dict[str, ModuleType] = {family: module for module in MODULES for family in module.FAMILIES}
