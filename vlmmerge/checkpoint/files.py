"""Where a model's files are and how to read one tensor at a time from them.

Safetensors first; `.bin` only through `torch.load(weights_only=True)` (memory-mapped), never
pickles that can run code. A hub id is resolved with huggingface_hub (honouring HF_HUB_OFFLINE).
"""

from __future__ import annotations

import json
import mmap
import os
import re
import struct
import sys
import threading
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from vlmmerge.checkpoint.dtypes import SAFETENSORS_DTYPES
from vlmmerge.checkpoint.positioned_io import pread, pread_into
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
    _files: dict[Path, "SafetensorsFile"] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

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
            files = cls(folder, {}, "safetensors")
            for file in safetensor_files:
                files.key_to_file.update({key: file for key in files._safetensors(file).entries})
            return files
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
                refused = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", str(exc))
                reason = f"it would call {refused.group(1)}" if refused else str(exc).splitlines()[0]
                raise CheckpointError(
                    f"{file}: refused by torch.load(weights_only=True): {reason}; "
                    "vlmmerge loads plain tensors only and never runs a pickle's code"
                ) from None
        return self._bin_cache[file]

    def shape_and_dtype(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        file = self._file_of(key)
        if self.fmt == "bin":
            tensor = self._load_bin(file)[key]
            return tuple(tensor.shape), tensor.dtype
        entry = self._safetensors(file).entry(key)
        dtype = SAFETENSORS_DTYPES.get(entry.dtype)
        if dtype is None:
            tensor_slice = self._handle(file).get_slice(key)
            return tuple(tensor_slice.get_shape()), self._handle(file).get_tensor(key).dtype
        return entry.shape, dtype

    def read(self, key: str) -> torch.Tensor:
        """The tensor in its stored dtype, private to the caller (writing to it never touches the file).

        A safetensors tensor of 1 MiB or more is a copy-on-write mapping of its own byte range
        (made for this call, unmapped when the tensor is freed): no copy and no fresh memory to
        zero, and a merge's resident memory is the tensors it holds, not every page it touched.
        Smaller ones are read with a positioned read. Safe to call from several threads at once.
        """
        file = self._file_of(key)
        if self.fmt == "bin":
            return self._load_bin(file)[key]
        st_file = self._safetensors(file)
        entry = st_file.entry(key)
        dtype = SAFETENSORS_DTYPES.get(entry.dtype)
        if dtype is None or sys.byteorder != "little":
            return self._handle(file).get_tensor(key)  # exotic dtype or host: let safetensors convert
        return st_file.read(entry, dtype)

    def _safetensors(self, file: Path) -> "SafetensorsFile":
        st_file = self._files.get(file)
        if st_file is None:
            with self._lock:
                st_file = self._files.get(file)
                if st_file is None:
                    st_file = self._files[file] = SafetensorsFile(file)
        return st_file

    def _handle(self, file: Path):
        # Fallback reader (memory-mapped by safetensors); one open handle per shard.
        with self._lock:
            if file not in self._handles:
                self._handles[file] = safe_open(file, framework="pt")
            return self._handles[file]

    def _file_of(self, key: str) -> Path:
        try:
            return self.key_to_file[key]
        except KeyError:
            raise CheckpointError(f"{self.folder}: no tensor named {key!r}") from None


@dataclass(frozen=True)
class SafetensorsEntry:
    key: str
    dtype: str  # safetensors' name, e.g. "BF16"
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    stop: int


_MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit
_READ_CHUNK = 1 << 30  # one pread stays well below Linux's ~2 GiB per-call limit
_MAP_MIN_BYTES = 1 << 20  # smaller tensors are cheaper to read than to map


class SafetensorsFile:
    """A safetensors file's header, parsed once, and positioned reads of its tensors.

    The file descriptor stays open for the object's life (closed when it is collected).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError as exc:
            raise CheckpointError(f"{self.path}: cannot open ({exc})") from exc
        self._fd = fd
        self._finalizer = weakref.finalize(self, os.close, fd)
        size = os.fstat(fd).st_size
        prefix = pread(fd, 8, 0)
        if len(prefix) < 8:
            raise CheckpointError(f"{self.path}: not a readable safetensors file (shorter than 8 bytes)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(_MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(f"{self.path}: not a readable safetensors file (header length {header_len})")
        try:
            header = json.loads(pread(fd, header_len, 8))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{self.path}: not a readable safetensors file (header: {exc})") from exc
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: not a readable safetensors file (header is not a mapping)")
        data_start = 8 + header_len
        self.entries: dict[str, SafetensorsEntry] = {}
        for key, info in header.items():
            if key == "__metadata__":
                continue
            try:
                begin, end = (int(v) for v in info["data_offsets"])
                entry = SafetensorsEntry(key, str(info["dtype"]), tuple(int(d) for d in info["shape"]),
                                         data_start + begin, data_start + end)
            except (KeyError, TypeError, ValueError) as exc:
                raise CheckpointError(f"{self.path}: malformed header entry for {key!r} ({exc})") from exc
            if not (data_start <= entry.start <= entry.stop <= size):
                raise CheckpointError(f"{self.path}: tensor {key!r} lies outside the file (truncated download?)")
            dtype = SAFETENSORS_DTYPES.get(entry.dtype)
            if dtype is not None:
                expected = _numel(entry.shape) * dtype.itemsize
                if entry.stop - entry.start != expected:
                    raise CheckpointError(
                        f"{self.path}: tensor {key!r} holds {entry.stop - entry.start} bytes but "
                        f"{entry.dtype}{list(entry.shape)} needs {expected}"
                    )
            self.entries[key] = entry

    def entry(self, key: str) -> SafetensorsEntry:
        try:
            return self.entries[key]
        except KeyError:
            raise CheckpointError(f"{self.path}: no tensor named {key!r}") from None

    def read(self, entry: SafetensorsEntry, dtype: torch.dtype) -> torch.Tensor:
        nbytes = entry.stop - entry.start
        if nbytes >= _MAP_MIN_BYTES and entry.start % dtype.itemsize == 0:
            try:
                return self._map(entry, nbytes).view(dtype).reshape(entry.shape)
            except (OSError, ValueError):
                pass  # e.g. a file system without mmap: read it instead
        buffer = torch.empty(nbytes, dtype=torch.uint8)
        if nbytes:
            view = memoryview(buffer.numpy())
            done = 0
            while done < nbytes:
                count = pread_into(self._fd, view[done : done + _READ_CHUNK], entry.start + done)
                if count <= 0:
                    raise CheckpointError(f"{self.path}: unexpected end of file reading {entry.key!r}")
                done += count
        return buffer.view(dtype).reshape(entry.shape)

    def _map(self, entry: SafetensorsEntry, nbytes: int) -> torch.Tensor:
        start = entry.start - entry.start % mmap.ALLOCATIONGRANULARITY
        # MAP_PRIVATE: the pages are the page cache's until written to, then the writer's own.
        mapping = mmap.mmap(self._fd, entry.stop - start, access=mmap.ACCESS_COPY, offset=start)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about buffers it cannot resize
            return torch.frombuffer(mapping, dtype=torch.uint8, count=nbytes, offset=entry.start - start)

    def close(self) -> None:
        self._finalizer()


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n
