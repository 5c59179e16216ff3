"""The anatomy of one checkpoint: components, the language side's standalone-LM names, vocabulary."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import cached_property

from vlmmerge.anatomy.families import Family, family_for_architecture, generic_causal_lm, supported_architectures
from vlmmerge.anatomy.vocab import load_vocab
from vlmmerge.checkpoint import Checkpoint
from vlmmerge.errors import UnsupportedArchitectureError

COMPONENTS = ("vision", "projector", "embeddings", "language", "head", "other")
LANGUAGE_SIDE = ("embeddings", "language", "head")

# Config attributes naming token ids whose rows a VLM fills with image features or uses as markers.
SPECIAL_TOKEN_ATTRS = (
    "image_token_index",
    "image_token_id",
    "video_token_index",
    "video_token_id",
    "vision_start_token_id",
    "vision_end_token_id",
    "vision_token_id",
    "boi_token_index",
    "eoi_token_index",
    "boi_token_id",
    "eoi_token_id",
    "image_seq_token_id",
)

# Decoder-layer containers across architectures: Llama-likes `model.layers.N.`, GPT-2 / Falcon
# `transformer.h.N.`, MPT `transformer.blocks.N.`; the first (outermost) match is the layer.
_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|block)\.(\d+)\.")
_NUM_LAYERS_ATTRS = ("num_hidden_layers", "n_layer", "num_layers")
LM_PREFIX = "model."


@dataclass
class Anatomy:
    checkpoint: Checkpoint
    family: Family = field(init=False)

    def __post_init__(self) -> None:
        architecture = self.checkpoint.architecture
        family = family_for_architecture(architecture)
        if family is None:
            family = generic_causal_lm(architecture, self.checkpoint.config.model_type)
            if family is not None:
                head = self._module_weight_name(self.checkpoint.mapper.model.get_output_embeddings(), "head")
                family = replace(family, head=head.removesuffix("weight"))
        if family is None:
            raise UnsupportedArchitectureError(
                f"{self.checkpoint.path}: architecture {self.checkpoint.architecture!r} is not supported; "
                f"supported: {', '.join(supported_architectures())}, and any causal LM class transformers "
                "maps its model_type to"
            )
        self.family = family

    @property
    def is_vlm(self) -> bool:
        return self.family.is_vlm

    @property
    def text_config(self):
        config = self.checkpoint.config
        return getattr(config, self.family.text_config_attr) if self.is_vlm else config

    @property
    def num_layers(self) -> int:
        config = self.text_config
        for attr in _NUM_LAYERS_ATTRS:
            if isinstance(getattr(config, attr, None), int):
                return int(getattr(config, attr))
        raise UnsupportedArchitectureError(
            f"{self.checkpoint.path}: config has none of {', '.join(_NUM_LAYERS_ATTRS)}; cannot count layers"
        )

    @cached_property
    def embed_name(self) -> str:
        if self.family.language:
            return f"{self.family.language}embed_tokens.weight"
        return self._module_weight_name(self.checkpoint.mapper.model.get_input_embeddings(), "input embeddings")

    def _module_weight_name(self, module, what: str) -> str:
        for name, candidate in self.checkpoint.mapper.model.named_modules():
            if candidate is module:
                return f"{name}.weight"
        raise UnsupportedArchitectureError(
            f"{self.checkpoint.path}: cannot find the {what} of {self.checkpoint.architecture}"
        )

    @property
    def head_name(self) -> str:
        return f"{self.family.head}weight"

    @cached_property
    def tied(self) -> bool:
        """Whether lm_head shares the embedding matrix, as the built model (top-level config) decides."""
        model = self.checkpoint.mapper.model
        head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
        return head is not None and embeddings is not None and head.weight is embeddings.weight

    @cached_property
    def vocab_rows(self) -> int:
        return self.checkpoint.info(self.embed_name).shape[0]

    @cached_property
    def vocab(self) -> dict[int, str] | None:
        """id -> token of this folder's tokenizer (read once), or None if it has no tokenizer.json."""
        return load_vocab(self.checkpoint.path)

    @cached_property
    def special_token_ids(self) -> dict[str, int]:
        found = {}
        for config in (self.checkpoint.config, self.text_config):
            for attr in SPECIAL_TOKEN_ATTRS:
                value = getattr(config, attr, None)
                if isinstance(value, int) and 0 <= value < self.vocab_rows:
                    found.setdefault(attr, value)
        return found

    def component(self, name: str) -> str:
        family = self.family
        if any(name.startswith(p) for p in family.projector):
            return "projector"
        if any(name.startswith(p) for p in family.vision):
            return "vision"
        if name == self.embed_name:
            return "embeddings"
        if name.startswith(family.head):
            return "head"
        if name.startswith(family.language):
            return "language"
        return "other"

    @cached_property
    def components(self) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = {c: [] for c in COMPONENTS}
        for name in self.checkpoint.names:
            grouped[self.component(name)].append(name)
        return grouped

    def parameter_counts(self) -> dict[str, int]:
        info = self.checkpoint.info
        return {c: sum(info(n).numel for n in names) for c, names in self.components.items() if names}

    @cached_property
    def language_names(self) -> list[str]:
        return [n for n in self.checkpoint.names if self.component(n) in LANGUAGE_SIDE]

    def to_lm_name(self, name: str) -> str:
        """Runtime name in this model -> the name of the same tensor in a standalone causal LM."""
        prefix = self.family.language
        if self.is_vlm and name.startswith(prefix):
            return LM_PREFIX + name[len(prefix):]
        return name

    def from_lm_name(self, lm_name: str) -> str:
        if self.is_vlm and lm_name.startswith(LM_PREFIX) and not lm_name.startswith(self.family.head):
            return self.family.language + lm_name[len(LM_PREFIX):]
        return lm_name

    @staticmethod
    def layer_index(name: str) -> int | None:
        match = _LAYER_RE.search(name)
        return int(match.group(1)) if match else None

    @cached_property
    def lm_view(self) -> dict[str, str]:
        """Standalone-LM name -> runtime name, for every language-side tensor."""
        return {self.to_lm_name(n): n for n in self.language_names}
