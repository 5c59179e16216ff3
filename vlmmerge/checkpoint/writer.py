"""Streaming sharded safetensors writer and all-or-nothing output folders."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

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


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; rename it to `out_dir` only if the block succeeds."""
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and not overwrite:
        raise VlmMergeError(f"output folder {out_dir} already exists (pass overwrite to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
