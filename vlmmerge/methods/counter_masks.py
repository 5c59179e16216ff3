"""Counter-based mask uniforms (`mask_generator: counter`): a keyed hash of each element's index.

The k-th uniform a mask of seed `s` (`masks.mask_seed`: recipe seed, tensor, model) draws is

    u_k = (mix(mix(k ^ k0) ^ k1) >> 8) * 2**-24

with (k0, k1) the low and high 32 bits of `s` and `mix` the `lowbias32` integer hash of Wellons'
hash-prospector (x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16), in
wrapping 32-bit integer arithmetic. Integer math is exact, so the numbers are the same eager or
compiled, on any device: a GPU merge draws its masks itself (no CPU generator, no copy), a static
merge draws ~3x faster than torch's CPU generator (docs/benchmarks.md), and a mask needs no kept
state. The masks mean what torch's do (seeded per tensor and model, keep where u < p: a higher
density keeps a superset), but their bits differ, so it is a recipe key: a recipe without it
keeps torch's generator and reproduces as before. One stream holds at most 2**32 uniforms.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from vlmmerge.methods import fused

_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)
_SHIFTS = (16, 15, 16)
STREAM_LENGTH = 1 << 32
_CPU_CHUNK = 1 << 18  # elements per eager step (bounds the integer temporaries)
_DEVICE_CHUNK = 1 << 24


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int32 values (torch's `>>` is arithmetic on negative ones)."""
    return (x >> bits) & ((1 << (32 - bits)) - 1)


def _mix(x: Tensor) -> Tensor:
    x = x ^ _shift_right(x, _SHIFTS[0])
    x = x * _signed32(_MULTIPLIERS[0])
    x = x ^ _shift_right(x, _SHIFTS[1])
    x = x * _signed32(_MULTIPLIERS[1])
    return x ^ _shift_right(x, _SHIFTS[2])


def _uniforms_kernel(out: Tensor, k0: Tensor, k1: Tensor, start: Tensor) -> None:
    index = torch.arange(out.numel(), dtype=torch.int32, device=out.device) + start
    hashed = _mix(_mix(index ^ k0) ^ k1)
    out.copy_(_shift_right(hashed, 8).to(torch.float32) * (2.0 ** -24))


def reference_uniform(seed: int, k: int) -> float:
    """u_k of `seed` in plain Python integers (the independent formula tests compare with)."""
    def mix(x: int) -> int:
        x ^= x >> _SHIFTS[0]
        x = (x * _MULTIPLIERS[0]) & 0xFFFFFFFF
        x ^= x >> _SHIFTS[1]
        x = (x * _MULTIPLIERS[1]) & 0xFFFFFFFF
        return x ^ (x >> _SHIFTS[2])
    k0, k1 = seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF
    return (mix(mix((k & 0xFFFFFFFF) ^ k0) ^ k1) >> 8) * 2.0 ** -24


def _int32(value: int, device: torch.device) -> Tensor:
    return torch.tensor(_signed32(value), dtype=torch.int32, device=device)


def fill(out: Tensor, seed: int, start: int) -> Tensor:
    """u_start .. u_{start + out.numel() - 1} of `seed` into the float32 tensor `out` (contiguous)."""
    n = out.numel()
    if start < 0 or start + n > STREAM_LENGTH:
        raise ValueError(f"counter mask stream of seed {seed}: uniforms {start}..{start + n} are past its "
                         f"{STREAM_LENGTH} (a tensor of more than 2**32 elements)")
    flat, device = out.view(-1), out.device
    k0, k1 = _int32(seed, device), _int32(seed >> 32, device)

    def run(a: int, b: int) -> None:
        fused.calls["uniforms"] += 1
        with torch.no_grad():
            fused._run("uniforms", _uniforms_kernel, ("uniforms",), fused.segment(flat, a, b), k0, k1,
                       _int32(start + a, device))

    if device.type == "cpu" and fused.enabled(n):
        bounds = [0, *fused.split_points(n), n]
        fused.in_parts([functools.partial(run, a, b) for a, b in zip(bounds[:-1], bounds[1:])])
        return out
    step = _CPU_CHUNK if device.type == "cpu" else _DEVICE_CHUNK
    for a in range(0, n, step):
        _uniforms_kernel(flat[a:a + step], k0, k1, _int32(start + a, device))
    return out


class CounterUniforms:
    """A mask generator of `mask_generator: counter`: its draws continue one stream of `seed` (the
    k-th uniform drawn is u_k, whatever the shapes drawn before), computed on the device asked for."""

    def __init__(self, seed: int):
        self.seed = seed
        self.position = 0

    def rewind(self) -> "CounterUniforms":
        self.position = 0
        return self

    def next(self, shape: torch.Size | tuple[int, ...], device: torch.device | str | None = None,
             out: Tensor | None = None) -> Tensor:
        if out is None or out.dtype != torch.float32 or tuple(out.shape) != tuple(shape) or not out.is_contiguous():
            out = torch.empty(shape, dtype=torch.float32, device=device if device is not None else "cpu")
        fill(out, self.seed, self.position)
        self.position += out.numel()
        return out
