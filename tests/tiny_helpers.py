"""Assertions shared by the tiny-model tests (test_tiny_models.py, test_tiny_layouts.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open


def disk_keys(folder: Path) -> list[str]:
    """Tensor names stored in a folder's weight files (safetensors or .bin, single or sharded)."""
    keys: list[str] = []
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as handle:
            keys.extend(handle.keys())
    for file in sorted(folder.glob("*.bin")):
        keys.extend(torch.load(file, map_location="cpu", weights_only=True).keys())
    return keys


def assert_same_state_dict(expected: torch.nn.Module, actual: torch.nn.Module) -> None:
    a, b = expected.state_dict(), actual.state_dict()
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), f"tensor {name} differs after the round trip"


def greedy_new_tokens(model: torch.nn.Module, inputs: dict[str, torch.Tensor], n: int = 3) -> torch.Tensor:
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[:, inputs["input_ids"].shape[1]:]
