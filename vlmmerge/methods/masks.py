"""Random keep-masks (DARE, DELLA) as common random numbers.

Every mask of a merge has its own generator, seeded by (recipe seed, tensor name, model), and
keeps an entry when its float32 uniform draw is below the keep probability. So one model's mask
depends on nothing else in the merge: not on the other models' densities (a density >= 1 draws
nothing), not on the order or the thread tensors are merged in, and not on the device the math
runs on (the uniforms are drawn on the generator's device, the CPU for `mask_generators`, then
moved). A higher density keeps a superset of a lower one's entries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor

# One generator for every model in turn (mergekit's stream), one per model, or torch's global one.
Generators = torch.Generator | Sequence[torch.Generator] | None


def mask_seed(seed: int, tensor: str, model: int) -> int:
    """The seed of one model's mask for one tensor: a 63-bit hash of (seed, tensor name, model).

    `model` is the model's position in the recipe's `models:` list (see methods/README.md).
    """
    digest = hashlib.blake2b(f"{seed}:{tensor}:{model}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def mask_generators(seed: int, tensor: str, models: Sequence[int]) -> list[torch.Generator]:
    """CPU generators, one per model, seeded by `mask_seed` (whatever device the merge runs on)."""
    return [torch.Generator(device="cpu").manual_seed(mask_seed(seed, tensor, model)) for model in models]


def generator_for(generators: Generators, index: int, count: int) -> torch.Generator | None:
    """Model `index`'s generator: its own from a sequence of `count`, else the shared one."""
    if generators is None or isinstance(generators, torch.Generator):
        return generators
    if len(generators) != count:
        raise ValueError(f"expected {count} generators (one per model), got {len(generators)}")
    return generators[index]


def draw_uniforms(
    shape: torch.Size | tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device | str | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """float32 uniforms in [0, 1) of `shape` on `device` (or in `out`).

    With a generator they are drawn on the generator's own device and then moved, so the same
    generator gives the same numbers whatever `device` is. Without one, torch's global generator
    of `device` draws them (mergekit's stream, for parity checks).
    """
    if out is not None and (out.dtype != torch.float32 or tuple(out.shape) != tuple(shape)):
        out = None
    target = torch.device(device) if device is not None else (out.device if out is not None else torch.device("cpu"))
    source = generator.device if generator is not None else target
    if out is not None and out.device == source:
        return torch.rand(shape, generator=generator, out=out)
    uniforms = torch.rand(shape, generator=generator, dtype=torch.float32, device=source)
    if out is not None:
        return out.copy_(uniforms)
    return uniforms.to(target)


def dare_mask(
    shape: torch.Size | tuple[int, ...],
    density: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Boolean keep-mask with P(keep) = density: `uniforms < density` (see `draw_uniforms`).

    Draws exactly the uniforms `torch.bernoulli(torch.full(shape, density))` draws, so the same
    generator state gives mergekit's mask.
    """
    return draw_uniforms(shape, generator, device).lt_(density).bool()
