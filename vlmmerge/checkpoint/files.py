"""Where a model's files are and how to read one tensor at a time from them.

Safetensors first; `.bin` only through `torch.load(weights_only=True)` (memory-mapped), never
pickles that can run code. A hub id is resolved with huggingface_hub (honouring HF_HUB_OFFLINE).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from vlmmerge.errors import CheckpointError

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"

# Files of a model folder worth fetching from the hub besides weights.
_SIDE_FILE_PATTERNS = (
    "*.json",
    "*.model",
    "*.txt",
    "*.jinja",
    "*.tiktoken",
)


def resolve_model_path(source: str | Path, revision: str | None = None) -> Path:
    """A local folder as is; otherwise a hub id downloaded (or found in the cache) by huggingface_hub."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise CheckpointError(f"{path} is a file; expected a model folder (with config.json) or a hub id")
    text = str(source)
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise CheckpointError(f"model path does not exist: {path}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        local = snapshot_download(
            text,
            revision=revision,
            allow_patterns=[*_SIDE_FILE_PATTERNS, "*.safetensors"],
        )
        local_path = Path(local)
        if not any(local_path.glob("*.safetensors")):
            local = snapshot_download(text, revision=revision, allow_patterns=[*_SIDE_FILE_PATTERNS, "*.bin"])
        return Path(local)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{text!r} is neither a local folder nor a hub model that could be fetched "
            f"(offline={_is_offline()}): {exc}"
        ) from exc


def _is_offline() -> bool:
    import os

    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


@dataclass
class WeightFiles:
    """The weight files of one model folder and which file holds which on-disk key."""

    folder: Path
    key_to_file: dict[str, Path]
    fmt: str  # "safetensors" or "bin"
    _bin_cache: dict[Path, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)
    _handles: dict[Path, object] = field(default_factory=dict, repr=False)

    @classmethod
    def discover(cls, folder: Path) -> "WeightFiles":
        for index_name, fmt in ((SAFETENSORS_INDEX, "safetensors"), (BIN_INDEX, "bin")):
            index_path = folder / index_name
            if index_path.exists():
                try:
                    weight_map = json.loads(index_path.read_text())["weight_map"]
                except (json.JSONDecodeError, KeyError) as exc:
                    raise CheckpointError(f"{index_path}: not a valid shard index ({exc})") from exc
                key_to_file = {key: folder / name for key, name in weight_map.items()}
                missing = sorted({str(p) for p in key_to_file.values() if not p.exists()})
                if missing:
                    raise CheckpointError(f"{index_path} names shard files that are missing: {missing}")
                return cls(folder, key_to_file, fmt)
        single = folder / SAFETENSORS_SINGLE
        safetensor_files = [single] if single.exists() else sorted(folder.glob("*.safetensors"))
        if safetensor_files:
            key_to_file = {}
            for file in safetensor_files:
                try:
                    with safe_open(file, framework="pt") as handle:
                        key_to_file.update({key: file for key in handle.keys()})
                except Exception as exc:  # safetensors raises its own error types
                    raise CheckpointError(f"{file}: not a readable safetensors file ({exc})") from exc
            return cls(folder, key_to_file, "safetensors")
        single_bin = folder / BIN_SINGLE
        if single_bin.exists():
            files = cls(folder, {}, "bin")
            files.key_to_file = {key: single_bin for key in files._load_bin(single_bin)}
            return files
        raise CheckpointError(
            f"{folder}: no weights found (looked for {SAFETENSORS_INDEX}, *.safetensors, {BIN_INDEX}, {BIN_SINGLE})"
        )

    def _load_bin(self, file: Path) -> dict[str, torch.Tensor]:
        if file not in self._bin_cache:
            try:
                self._bin_cache[file] = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:
                raise CheckpointError(
                    f"{file}: cannot be read with torch.load(weights_only=True) ({exc}); "
                    "vlmmerge never unpickles arbitrary objects"
                ) from exc
        return self._bin_cache[file]

    def shape_and_dtype(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        file = self._file_of(key)
        if self.fmt == "bin":
            tensor = self._load_bin(file)[key]
            return tuple(tensor.shape), tensor.dtype
        tensor_slice = self._handle(file).get_slice(key)
        return tuple(tensor_slice.get_shape()), _SAFETENSORS_DTYPES[tensor_slice.get_dtype()]

    def read(self, key: str) -> torch.Tensor:
        file = self._file_of(key)
        if self.fmt == "bin":
            return self._load_bin(file)[key]
        return self._handle(file).get_tensor(key)

    def _handle(self, file: Path):
        # safetensors memory-maps the file; one open handle per shard avoids re-parsing headers per tensor.
        if file not in self._handles:
            self._handles[file] = safe_open(file, framework="pt")
        return self._handles[file]

    def _file_of(self, key: str) -> Path:
        try:
            return self.key_to_file[key]
        except KeyError:
            raise CheckpointError(f"{self.folder}: no tensor named {key!r}") from None


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
