"""A lazily read checkpoint whose tensors are addressed by runtime name."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from transformers import AutoConfig, PretrainedConfig

from vlmmerge.checkpoint.files import WeightFiles, resolve_model_path
from vlmmerge.checkpoint.naming import FusedPart, KeyMapper
from vlmmerge.errors import CheckpointError


@dataclass(frozen=True)
class TensorInfo:
    name: str  # runtime name
    disk_key: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class Checkpoint:
    """One model: its config, and its tensors read one at a time by runtime name.

    `names` are the runtime names present on disk (a tied `lm_head.weight` is absent, as in
    transformers' own saves). Keys that map to nothing in the model (stale buffers such as
    `rotary_emb.inv_freq`) are listed in `ignored_keys` and never read. A runtime tensor that
    transformers fuses from several stored ones on load (Mixtral / Qwen-MoE per-expert weights
    stacked into `experts.gate_up_proj`) is one name here, built by transformers' own conversion
    when read (`disk_key` is then its first part).
    """

    def __init__(self, source: str | Path, revision: str | None = None, trust_remote_code: bool = False):
        self.source = str(source)
        self.path = resolve_model_path(source, revision=revision)
        config_path = self.path / "config.json"
        if not config_path.exists():
            raise CheckpointError(f"{self.path}: no config.json; not a transformers model folder")
        try:
            self.config: PretrainedConfig = AutoConfig.from_pretrained(
                self.path, trust_remote_code=trust_remote_code
            )
        except (ValueError, KeyError, OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{config_path}: cannot be read as a transformers config ({exc})") from exc
        self.files = WeightFiles.discover(self.path)
        self.mapper = KeyMapper.from_config(self.config)
        self._infos: dict[str, TensorInfo] = {}
        self.ignored_keys: list[str] = []
        runtime_shapes = self.mapper.runtime_shapes
        self._fused: dict[str, list[FusedPart]] = {}  # runtime name -> its stored parts (MoE experts)
        for disk_key in self.files.key_to_file:
            name, part = self.mapper.resolve(disk_key)
            if name not in runtime_shapes:
                self.ignored_keys.append(disk_key)
                continue
            if part is not None:
                self._fused.setdefault(name, []).append(part)
                continue
            if name in self._infos:
                raise CheckpointError(
                    f"{self.path}: keys {self._infos[name].disk_key!r} and {disk_key!r} both map to {name!r}"
                )
            shape, dtype = self.files.shape_and_dtype(disk_key)
            if tuple(shape) != runtime_shapes[name]:
                raise CheckpointError(
                    f"{self.path}: tensor {disk_key!r} has shape {tuple(shape)} but the config implies "
                    f"{runtime_shapes[name]} for {name!r}"
                )
            self._infos[name] = TensorInfo(name, disk_key, tuple(shape), dtype)
        for name, parts in self._fused.items():
            self._infos[name] = self._fused_info(name, parts, runtime_shapes[name])

    def _fused_info(self, name: str, parts: list[FusedPart], shape: tuple[int, ...]) -> TensorInfo:
        """A runtime tensor fused from several stored ones: its element count must be theirs."""
        if name in self._infos:
            raise CheckpointError(f"{self.path}: {name!r} is stored both whole and in parts ({parts[0].disk_key!r})")
        stored = [self.files.shape_and_dtype(p.disk_key) for p in parts]
        if sum(math.prod(s) for s, _ in stored) != math.prod(shape) or len({d for _, d in stored}) != 1:
            raise CheckpointError(
                f"{self.path}: the {len(parts)} stored parts of {name!r} (e.g. {parts[0].disk_key!r}) do not "
                f"make its shape {shape} in one dtype; is an expert missing?"
            )
        return TensorInfo(name, parts[0].disk_key, tuple(shape), stored[0][1])

    def __repr__(self) -> str:
        return f"Checkpoint({self.source!r}, {self.architecture}, {len(self._infos)} tensors)"

    @property
    def architecture(self) -> str:
        archs = getattr(self.config, "architectures", None) or [type(self.config).__name__]
        return archs[0]

    @property
    def names(self) -> list[str]:
        return list(self._infos)

    def __contains__(self, name: str) -> bool:
        return name in self._infos

    def info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: no tensor {name!r}") from None

    def get(self, name: str) -> torch.Tensor:
        info = self.info(name)
        parts = self._fused.get(name)
        if parts is None:
            return self.files.read(info.disk_key)
        value = self.mapper.fuse(name, parts, self.files.read)
        if tuple(value.shape) != info.shape:
            raise CheckpointError(f"{self.path}: fusing the parts of {name!r} gave shape {tuple(value.shape)}, not {info.shape}")
        return value

    @cached_property
    def num_parameters(self) -> int:
        return sum(info.numel for info in self._infos.values())

    @cached_property
    def dtype(self) -> torch.dtype:
        """The most common floating dtype of the stored tensors."""
        counts: dict[torch.dtype, int] = {}
        for info in self._infos.values():
            if info.dtype.is_floating_point:
                counts[info.dtype] = counts.get(info.dtype, 0) + info.numel
        return max(counts, key=counts.get) if counts else torch.float32
