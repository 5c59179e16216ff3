"""Random keep-masks (DARE, DELLA) as common random numbers.

Every mask of a merge has its own generator, seeded by (recipe seed, tensor name, model), and
keeps an entry when its float32 uniform draw is below the keep probability. So one model's mask
depends on nothing else in the merge: not on the other models' densities (a density >= 1 draws
nothing), not on the order or the thread tensors are merged in, and not on the device the math
runs on (the uniforms are drawn on the generator's device, the CPU for `mask_generators`, then
moved). A higher density keeps a superset of a lower one's entries.

A recipe's `mask_generator` picks the numbers: `torch` (the default: torch's CPU generator, seeded
as above) or `counter` (`counter_masks`: a keyed hash of the element index, drawn on the merge's
device; same meaning, other bits).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor

from vlmmerge.methods.counter_masks import CounterUniforms

MASK_GENERATORS = ("torch", "counter")
# One generator for every model in turn (mergekit's stream), one per model, or torch's global one.
Generators = torch.Generator | Sequence[torch.Generator] | Sequence["DrawnUniforms"] | Sequence[CounterUniforms] | None


def mask_seed(seed: int, tensor: str, model: int) -> int:
    """The seed of one model's mask for one tensor: a 63-bit hash of (seed, tensor name, model).

    `model` is the model's position in the recipe's `models:` list (see methods/README.md).
    """
    digest = hashlib.blake2b(f"{seed}:{tensor}:{model}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def seeded_generator(seed: int, kind: str = "torch") -> torch.Generator | CounterUniforms:
    """A fresh mask generator of `kind` seeded with `seed`: torch's CPU generator (whatever device
    the merge runs on) or a counter stream (drawn on the merge's device)."""
    if kind == "counter":
        return CounterUniforms(seed)
    if kind != "torch":
        raise ValueError(f"mask_generator {kind!r}: expected one of {', '.join(MASK_GENERATORS)}")
    return torch.Generator(device="cpu").manual_seed(seed)


def mask_generators(seed: int, tensor: str, models: Sequence[int],
                    kind: str = "torch") -> list[torch.Generator] | list[CounterUniforms]:
    """One generator per model of `kind` (`seeded_generator`), seeded by `mask_seed`."""
    return [seeded_generator(mask_seed(seed, tensor, model), kind) for model in models]


class DrawnUniforms:
    """A mask generator whose draws are kept, for merging the same tensor again and again (live
    candidates of a search): its k-th draw after `rewind()` is the k-th draw of a fresh CPU
    generator seeded with `seed` (of `kind`: torch's or a counter stream), drawn once, then handed
    out again (the same float32 numbers, so the same masks). It costs 4 bytes per element drawn; it
    saves a random draw per merge."""

    device = torch.device("cpu")

    def __init__(self, seed: int, kind: str = "torch"):
        self.seed = seed
        self.kind = kind
        self.draws: list[Tensor] = []
        self.position = 0
        self._generator: torch.Generator | CounterUniforms | None = None

    def rewind(self) -> "DrawnUniforms":
        self.position = 0
        return self

    def next(self, shape: torch.Size | tuple[int, ...]) -> Tensor:
        if self.position < len(self.draws):
            values = self.draws[self.position]
            if tuple(values.shape) != tuple(shape):
                raise ValueError(f"draw {self.position} was of shape {tuple(values.shape)}, now {tuple(shape)}")
        else:
            if self._generator is None:
                self._generator = seeded_generator(self.seed, self.kind)
            values = draw_uniforms(shape, self._generator)
            self.draws.append(values)
        self.position += 1
        return values

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.draws)


def generator_for(generators: Generators, index: int, count: int) -> torch.Generator | None:
    """Model `index`'s generator: its own from a sequence of `count`, else the shared one."""
    if generators is None or isinstance(generators, (torch.Generator, CounterUniforms, DrawnUniforms)):
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

    With a torch generator they are drawn on the generator's own device and then moved, so the same
    generator gives the same numbers whatever `device` is; a counter stream computes them where they
    go (the same numbers anywhere). Without one, torch's global generator of `device` draws them
    (mergekit's stream, for parity checks).
    """
    if out is not None and (out.dtype != torch.float32 or tuple(out.shape) != tuple(shape)):
        out = None
    if isinstance(generator, CounterUniforms):
        return generator.next(shape, device if device is not None else (out.device if out is not None else None), out)
    if isinstance(generator, DrawnUniforms):
        kept = generator.next(shape)
        if out is not None:
            return out.copy_(kept)
        return kept.to(device if device is not None else "cpu", copy=True)
    target = torch.device(device) if device is not None else (out.device if out is not None else torch.device("cpu"))
    source = generator.device if generator is not None else target
    if out is not None and out.device == source:
        return torch.rand(shape, generator=generator, out=out)
    uniforms = torch.rand(shape, generator=generator, dtype=torch.float32, device=source)
    if out is not None:
        return out.copy_(uniforms)
    return uniforms.to(target)


def keep_below(
    shape: torch.Size | tuple[int, ...],
    threshold: float | Tensor,
    generator: torch.Generator | DrawnUniforms | None,
    device: torch.device | str | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """1.0 / 0.0 (in `out` when it is a float32 tensor of `shape`) where the uniforms `draw_uniforms`
    gives are below `threshold`: kept draws are compared where they lie, without a copy."""
    if isinstance(generator, DrawnUniforms) and out is not None and out.dtype == torch.float32 \
            and tuple(out.shape) == tuple(shape):
        return torch.lt(generator.next(shape), threshold, out=out)
    return draw_uniforms(shape, generator, device, out=out).lt_(threshold)


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
