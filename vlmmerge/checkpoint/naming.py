"""On-disk key <-> runtime name, using transformers' own checkpoint conversion rules.

The model class is instantiated on the `meta` device (no memory, no weights) to learn the runtime
names and shapes (what `model.state_dict()` shows) and the conversion transforms transformers applies
in `from_pretrained` (`transformers.conversion_mapping.get_model_conversion_mapping`). Each disk key
is renamed exactly as `from_pretrained` would rename it; the reverse renaming gives the layout
`save_pretrained` writes, so our outputs look like transformers' own saves.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from functools import cached_property

import torch
import transformers
from transformers import PretrainedConfig
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import (
    PrefixChange,
    WeightConverter,
    WeightRenaming,
    apply_renamings,
    dot_natural_key,
    rename_source_key,
)

from vlmmerge.errors import CheckpointError, UnsupportedArchitectureError


def model_class_for(config: PretrainedConfig, trust_remote_code: bool = False) -> type:
    """The transformers class named by `config.architectures`, else the Auto mapping of its model_type."""
    for name in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    for auto_name in ("AutoModelForImageTextToText", "AutoModelForCausalLM"):
        auto = getattr(transformers, auto_name)
        mapping = auto._model_mapping
        if type(config) in mapping:
            return mapping[type(config)]
    if trust_remote_code and getattr(config, "auto_map", None):
        raise UnsupportedArchitectureError(
            f"{config.architectures}: remote-code models are not supported by vlmmerge's name mapping"
        )
    from vlmmerge.anatomy.families import supported_architectures

    raise UnsupportedArchitectureError(
        f"unknown architecture {getattr(config, 'architectures', None)} (model_type {config.model_type!r}); "
        f"supported: {', '.join(supported_architectures())}"
    )


def build_meta_model(config: PretrainedConfig) -> torch.nn.Module:
    cls = model_class_for(config)
    with torch.device("meta"):
        try:
            return cls._from_config(config)
        except Exception as exc:
            raise CheckpointError(f"cannot instantiate {cls.__name__} from its config: {exc}") from exc


@dataclass(frozen=True)
class FusedPart:
    """One stored tensor of a runtime tensor that transformers' conversion fuses from several."""

    converter: WeightConverter
    pattern: str  # the converter's source pattern this key matched
    disk_key: str


@dataclass
class KeyMapper:
    """Renames checkpoint keys to runtime names and back, for one model class and config."""

    model: torch.nn.Module  # on the meta device

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> "KeyMapper":
        return cls(build_meta_model(config))

    @cached_property
    def runtime_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(t.shape) for name, t in self.model.state_dict().items()}

    @cached_property
    def _load_transforms(self) -> tuple[list[WeightRenaming], list[WeightConverter]]:
        transforms = get_model_conversion_mapping(self.model)
        renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        converters = [t for t in transforms if isinstance(t, WeightConverter)]
        return renamings, converters

    def to_runtime(self, disk_key: str) -> str:
        """The runtime name `from_pretrained` would give a checkpoint key (see `resolve` for fused keys)."""
        name, converter = self.resolve(disk_key)
        if converter is not None:
            raise CheckpointError(
                f"checkpoint key {disk_key!r} is one part of the fused runtime tensor {name!r}; read it "
                "through Checkpoint, which applies transformers' conversion"
            )
        return name

    def resolve(self, disk_key: str) -> tuple[str, "FusedPart | None"]:
        """(runtime name, None) for a key loaded as is or renamed; (runtime name, its part) for a key
        that transformers' conversion fuses with others into one runtime tensor (per-expert MoE
        weights stacked into `experts.gate_up_proj` / `experts.down_proj`)."""
        renamings, converters = self._load_transforms
        meta_state = self.runtime_shapes
        if disk_key in meta_state:
            return disk_key, None
        renamed, converter_pattern = rename_source_key(
            disk_key,
            renamings,
            converters,
            base_model_prefix=getattr(self.model, "base_model_prefix", None),
            meta_state_dict=meta_state,
        )
        if converter_pattern is None:
            return renamed, None
        converter = next(c for c in converters if converter_pattern in c.source_patterns)
        return renamed, FusedPart(converter, converter_pattern, disk_key)

    def fuse(self, runtime_name: str, parts: "list[FusedPart]", read) -> torch.Tensor:
        """The runtime tensor that transformers' conversion builds from `parts` (`read(disk_key)` gives
        each stored tensor): the same operations `from_pretrained` runs, on a private copy."""
        converter = copy.deepcopy(parts[0].converter)
        for part in sorted(parts, key=lambda p: dot_natural_key(p.disk_key)):
            converter.add_tensor(runtime_name, part.disk_key, part.pattern, read(part.disk_key))
        out = converter.convert(runtime_name, model=self.model, config=self.model.config)
        if runtime_name not in out:
            raise CheckpointError(f"conversion of {runtime_name!r} produced {sorted(out)} instead")
        value = out[runtime_name]
        return value[0] if isinstance(value, list) else value

    @cached_property
    def _save_renamings(self) -> list[WeightRenaming]:
        # Mirrors transformers.core_model_loading.revert_weight_conversion for a freshly built model.
        transforms = get_model_conversion_mapping(self.model, add_legacy=False)
        transforms = [t for t in transforms if not isinstance(t, PrefixChange)][::-1]
        reversed_transforms = [t.reverse_transform() for t in transforms]
        return [t for t in reversed_transforms if isinstance(t, WeightRenaming)]

    @cached_property
    def _fused_targets(self) -> tuple[re.Pattern, ...]:
        _, converters = self._load_transforms
        return tuple(re.compile(re.escape(p) + r"$") for c in converters for p in c.target_patterns)

    def to_disk(self, runtime_name: str) -> str:
        """The key `save_pretrained` writes for a runtime name; a fused runtime tensor (MoE experts)
        is written whole under its runtime name, which `from_pretrained` loads as it is."""
        if any(p.search(runtime_name) for p in self._fused_targets):
            return runtime_name
        return apply_renamings(runtime_name, self._save_renamings)
