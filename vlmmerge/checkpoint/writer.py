"""Streaming sharded safetensors writer and all-or-nothing output folders."""

from __future__ import annotations

import errno
import json
import os
import re
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from vlmmerge.checkpoint.dtypes import SAFETENSORS_DTYPE_NAMES
from vlmmerge.checkpoint.output import fault_point
from vlmmerge.checkpoint.positioned_io import pwrite
from vlmmerge.errors import VlmMergeError

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: str | int) -> int:
    """'5GB' -> 5e9 bytes (transformers' convention: decimal units, *iB binary)."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*([\d.]+)\s*([A-Za-z]*)\s*", str(size))
    if not match or match.group(2).upper() not in _SIZE_UNITS:
        raise VlmMergeError(f"cannot read size {size!r}; use e.g. '2GB', '500MB' or a number of bytes")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


class ShardedSafetensorsWriter:
    """Accepts tensors one by one and writes shards of at most `max_shard_size` bytes.

    At most one shard is held in memory. Shard names follow transformers
    (`model-00001-of-00003.safetensors` + `model.safetensors.index.json`, or a single
    `model.safetensors`), so `from_pretrained` loads the folder.
    """

    def __init__(self, folder: Path, max_shard_size: str | int = "5GB", metadata: dict[str, str] | None = None):
        self.folder = Path(folder)
        self.max_shard_bytes = parse_size(max_shard_size)
        self.metadata = {"format": "pt", **(metadata or {})}
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._written: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._pending or any(name in keys for _, keys in self._written):
            raise VlmMergeError(f"tensor {name!r} written twice")
        nbytes = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor.detach().to("cpu").contiguous()
        self._pending_bytes += nbytes
        self.total_bytes += nbytes

    def _flush(self) -> None:
        if not self._pending:
            return
        path = self.folder / f"shard-{len(self._written):05d}.tmp.safetensors"
        save_file(self._pending, str(path), metadata=self.metadata)
        self._written.append((path, list(self._pending)))
        self._pending = {}
        self._pending_bytes = 0

    def finish(self) -> list[Path]:
        self._flush()
        count = len(self._written)
        if count == 0:
            raise VlmMergeError("no tensors were written")
        if count == 1:
            final = self.folder / "model.safetensors"
            os.replace(self._written[0][0], final)
            return [final]
        weight_map: dict[str, str] = {}
        finals = []
        for index, (path, keys) in enumerate(self._written, start=1):
            final = self.folder / f"model-{index:05d}-of-{count:05d}.safetensors"
            os.replace(path, final)
            finals.append(final)
            weight_map.update({key: final.name for key in keys})
        index_doc = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(index_doc, indent=2) + "\n")
        return finals


_WRITE_CHUNK = 1 << 30  # one pwrite stays well below Linux's ~2 GiB per-call limit
_CONVERT_CHUNK_BYTES = 4 << 20  # converted output goes through a buffer this size (fits in L2/L3)


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor of a planned output: on-disk name, shape and dtype, known before any is computed."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for dim in self.shape:
            n *= dim
        return n


@dataclass
class _PlannedShard:
    path: Path
    final_name: str
    offsets: dict[str, int]  # tensor name -> absolute byte offset in the file
    fd: int | None = None


def assign_shards(tensors: Sequence[PlannedTensor], max_shard_bytes: int) -> list[list[PlannedTensor]]:
    """Consecutive groups of at most `max_shard_bytes` (a larger tensor gets a shard of its own)."""
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for tensor in tensors:
        if shards[-1] and size + tensor.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    return shards if shards[0] else []


def safetensors_header(tensors: Sequence[PlannedTensor], metadata: dict[str, str] | None) -> tuple[bytes, dict[str, int]]:
    """The serialized header of a safetensors file holding `tensors`, and each tensor's data offset.

    Tensors are laid out by decreasing element size (then in the given order), so with the
    8-byte-aligned data start every tensor is aligned to its own element size, as safetensors does.
    """
    order = sorted(range(len(tensors)), key=lambda i: -tensors[i].dtype.itemsize)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offsets: dict[str, int] = {}
    position = 0
    for i in order:
        tensor = tensors[i]
        try:
            dtype = SAFETENSORS_DTYPE_NAMES[tensor.dtype]
        except KeyError:
            raise VlmMergeError(f"tensor {tensor.name!r}: dtype {tensor.dtype} cannot be written to safetensors") from None
        header[tensor.name] = {"dtype": dtype, "shape": list(tensor.shape), "data_offsets": [position, position + tensor.nbytes]}
        offsets[tensor.name] = position
        position += tensor.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    data_start = 8 + len(text)
    return struct.pack("<Q", len(text)) + text, {name: data_start + offset for name, offset in offsets.items()}


class StreamingSafetensorsWriter:
    """Writes a planned set of tensors into sharded safetensors files as each one becomes ready.

    Every shape and dtype is known up front, so each shard's header and every tensor's offset
    are fixed before the first tensor is computed: `write` puts a tensor's bytes at its place
    with a positioned write and the caller can drop it at once. Memory stays constant (no shard
    is gathered in RAM), tensors may arrive in any order and from several threads. Shard names
    follow transformers (`model-00001-of-00003.safetensors` + index, or one `model.safetensors`);
    the files get their final names in `finish`, once every tensor is written.
    """

    def __init__(
        self,
        folder: Path,
        tensors: Sequence[PlannedTensor],
        max_shard_size: str | int = "5GB",
        metadata: dict[str, str] | None = None,
    ):
        self.folder = Path(folder)
        self.metadata = {"format": "pt", **(metadata or {})}
        self._planned = {t.name: t for t in tensors}
        if len(self._planned) != len(tensors):
            dup = sorted({t.name for t in tensors if sum(u.name == t.name for u in tensors) > 1})
            raise VlmMergeError(f"tensor {dup[0]!r} planned twice")
        if not tensors:
            raise VlmMergeError("no tensors to write")
        groups = assign_shards(tensors, parse_size(max_shard_size))
        count = len(groups)
        self._shards: list[_PlannedShard] = []
        self._shard_of: dict[str, _PlannedShard] = {}
        self._written: set[str] = set()
        self._lock = threading.Lock()
        self.total_bytes = sum(t.nbytes for t in tensors)
        try:
            for index, group in enumerate(groups, start=1):
                header, offsets = safetensors_header(group, self.metadata)
                final = "model.safetensors" if count == 1 else f"model-{index:05d}-of-{count:05d}.safetensors"
                shard = _PlannedShard(self.folder / f"shard-{index:05d}.tmp.safetensors", final, offsets)
                shard.fd = os.open(shard.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o644)
                self._shards.append(shard)
                _pwrite_all(shard.fd, memoryview(header), 0, shard.path)
                os.ftruncate(shard.fd, len(header) + sum(t.nbytes for t in group))
                self._shard_of.update({t.name: shard for t in group})
        except BaseException:
            self.close()
            raise

    def write(
        self,
        name: str,
        tensor: torch.Tensor,
        *,
        convert: bool = False,
        check: Callable[[torch.Tensor], None] | None = None,
    ) -> None:
        """Write one planned tensor at its place.

        With `convert`, a floating tensor of another dtype is converted to the planned dtype chunk
        by chunk through a small buffer (no full-size converted copy). `check`, if given, sees
        every chunk as it will be written (e.g. to reject NaN) and may raise to abort.
        """
        planned = self._planned_or_raise(name)
        if tuple(tensor.shape) != planned.shape or not _dtype_ok(tensor.dtype, planned.dtype, convert):
            raise VlmMergeError(
                f"tensor {name!r}: got {tensor.dtype}{list(tensor.shape)}, planned {planned.dtype}{list(planned.shape)}"
            )
        self._claim(name)
        if planned.nbytes:
            shard = self._shard_of[name]
            self._write_flat(shard, shard.offsets[name], tensor.reshape(-1), planned.dtype, check)
        if len(self._written) >= max(1, len(self._planned) // 2):  # >=: parallel writers may skip the exact count
            fault_point("mid-shard")

    def write_parts(
        self,
        name: str,
        parts: Iterable[torch.Tensor],
        *,
        convert: bool = False,
        check: Callable[[torch.Tensor], None] | None = None,
    ) -> None:
        """Write one planned tensor from consecutive pieces of its flattened values, as they come.

        The pieces' element counts must add up to the planned tensor's; `convert` and `check` as
        in `write`. Only one piece needs to exist at a time.
        """
        planned = self._planned_or_raise(name)
        self._claim(name)
        shard = self._shard_of[name]
        offset = shard.offsets[name]
        expected = planned.nbytes // planned.dtype.itemsize
        written = 0
        for part in parts:
            if not _dtype_ok(part.dtype, planned.dtype, convert):
                raise VlmMergeError(f"tensor {name!r}: got a {part.dtype} piece, planned {planned.dtype}")
            flat = part.reshape(-1)
            if written + flat.numel() > expected:
                raise VlmMergeError(f"tensor {name!r}: pieces hold more than the planned {list(planned.shape)}")
            offset = self._write_flat(shard, offset, flat, planned.dtype, check)
            written += flat.numel()
        if written != expected:
            raise VlmMergeError(f"tensor {name!r}: pieces hold {written} of the {expected} planned elements")

    def _planned_or_raise(self, name: str) -> PlannedTensor:
        planned = self._planned.get(name)
        if planned is None:
            raise VlmMergeError(f"tensor {name!r} is not part of the planned output")
        return planned

    def _claim(self, name: str) -> None:
        with self._lock:
            if name in self._written:
                raise VlmMergeError(f"tensor {name!r} written twice")
            self._written.add(name)

    @staticmethod
    def _write_flat(
        shard: _PlannedShard, offset: int, flat: torch.Tensor, dtype: torch.dtype, check: Callable[[torch.Tensor], None] | None
    ) -> int:
        """Write a 1-D tensor at `offset` in `dtype` (converting through a small buffer); the next offset."""
        flat = flat.detach().to("cpu").contiguous()
        if flat.dtype == dtype:
            if check is not None:
                check(flat)
            _pwrite_all(shard.fd, memoryview(flat.view(torch.uint8).numpy()), offset, shard.path)
            return offset + flat.numel() * dtype.itemsize
        step = max(1, _CONVERT_CHUNK_BYTES // dtype.itemsize)
        buffer = torch.empty(min(step, flat.numel()), dtype=dtype)
        for start in range(0, flat.numel(), step):
            chunk = buffer[: min(step, flat.numel() - start)]
            chunk.copy_(flat[start : start + step])
            if check is not None:
                check(chunk)
            _pwrite_all(shard.fd, memoryview(chunk.view(torch.uint8).numpy()), offset, shard.path)
            offset += chunk.numel() * dtype.itemsize
        return offset

    def finish(self) -> list[Path]:
        missing = [name for name in self._planned if name not in self._written]
        if missing:
            self.close()
            raise VlmMergeError(f"{len(missing)} planned tensors were never written, e.g. {missing[0]!r}")
        self.close()
        finals = []
        weight_map: dict[str, str] = {}
        for shard in self._shards:
            final = self.folder / shard.final_name
            os.replace(shard.path, final)
            finals.append(final)
            weight_map.update({name: shard.final_name for name in shard.offsets})
        if len(self._shards) > 1:
            index_doc = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            (self.folder / "model.safetensors.index.json").write_text(json.dumps(index_doc, indent=2) + "\n")
        return finals

    def close(self) -> None:
        for shard in self._shards:
            if shard.fd is not None:
                os.close(shard.fd)
                shard.fd = None


def _dtype_ok(got: torch.dtype, planned: torch.dtype, convert: bool) -> bool:
    return got == planned or (convert and got.is_floating_point and planned.is_floating_point)


def _pwrite_all(fd: int, data: memoryview, offset: int, path: Path) -> None:
    done, total = 0, len(data)
    while done < total:
        try:
            count = pwrite(fd, data[done : done + _WRITE_CHUNK], offset + done)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        if count <= 0:
            raise OSError(errno.ENOSPC, "nothing written; disk full?", str(path))
        done += count
