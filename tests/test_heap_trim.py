"""When a static merge returns malloc's free memory to the system (vlmmerge.engine.heap)."""

from __future__ import annotations

import platform

import pytest
import torch

from core_helpers import load_tensors, perturb
from vlmmerge.engine import run_merge
from vlmmerge.engine.heap import HeapTrim
from vlmmerge.testing.tiny import build_tiny_lm_for, save_model


class _Info:
    def __init__(self, fordblks: int) -> None:
        self.fordblks = fordblks


def _fake(free: list[int], trims: list[int], empties: bool = True):
    def trim(pad: int) -> int:
        trims.append(pad)
        if empties:
            free[0] = 0
        return 1

    return trim, lambda: _Info(free[0])


def test_trims_only_above_the_slack():
    free, trims = [100], []
    heap = HeapTrim(slack=1000, functions=_fake(free, trims))
    heap.maybe_trim()
    assert trims == [] and heap.free_bytes() == 100
    free[0] = 1001
    heap.maybe_trim()
    assert trims == [0] and heap.free_bytes() == 0 and heap.trims == 1
    heap.maybe_trim()  # nothing free any more
    heap.trim()  # on demand, whatever is free
    assert heap.trims == 2


def test_without_glibc_nothing_is_trimmed(monkeypatch):
    import vlmmerge.engine.heap as heap_module

    monkeypatch.setattr(heap_module, "_glibc", lambda: None)
    heap = HeapTrim(slack=0)
    heap.maybe_trim()
    heap.trim()
    assert not heap.available and heap.free_bytes() == 0 and heap.trims == 0


def test_free_bytes_reads_glibcs_arenas():
    heap = HeapTrim()
    libc, version = platform.libc_ver()
    if libc != "glibc" or tuple(int(p) for p in version.split(".")[:2]) < (2, 33):
        assert not heap.available  # no mallinfo2: the merge runs without trimming
        return
    assert heap.available
    blocks = [torch.empty(8 << 10) for _ in range(400)]  # 32 KB each: below any mmap threshold
    before = heap.free_bytes()
    del blocks[::2]  # holes between live blocks: they cannot merge into the top and be released
    assert heap.free_bytes() >= before + 150 * (32 << 10)
    heap.trim()
    del blocks


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("heap")
    paths = {"base": save_model(build_tiny_lm_for("llava", seed=1).to(torch.bfloat16), root / "base")}
    for i, seed in enumerate((31, 32), start=1):
        paths[f"ft{i}"] = save_model(perturb(build_tiny_lm_for("llava", seed=1), seed=seed).to(torch.bfloat16), root / f"ft{i}")
    return paths


def test_a_merge_trims_before_the_large_tensors_not_after_each(world, tmp_path, monkeypatch):
    import vlmmerge.engine.execute as engine

    recipe = {
        "merge_method": "ties",
        "base_model": str(world["base"]),
        "models": [{"model": str(world[n]), "parameters": {"weight": 0.5, "density": 0.5}} for n in ("ft1", "ft2")],
        "dtype": "bfloat16",
    }
    run_merge(recipe, tmp_path / "every", threads=2, progress=False)  # the real heap
    free, trims = [0], []
    heap = HeapTrim(slack=1 << 40, functions=_fake(free, trims))
    monkeypatch.setattr(engine, "_HEAP", heap)
    result = run_merge(recipe, tmp_path / "slack", threads=2, progress=False)
    assert 1 <= len(trims) < result.tensors  # before the large tensors (embedding, head) only
    first, second = load_tensors(tmp_path / "every"), load_tensors(tmp_path / "slack")
    assert set(first) == set(second) and all(torch.equal(first[k], second[k]) for k in first)
    count = len(trims)
    free[0] = 2 << 40  # above the slack whatever is trimmed: trimmed after every tensor
    monkeypatch.setattr(engine, "_HEAP", HeapTrim(slack=1 << 40, functions=_fake(free, trims, empties=False)))
    result = run_merge(recipe, tmp_path / "tight", threads=2, progress=False)
    assert len(trims) - count >= result.tensors
