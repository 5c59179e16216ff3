"""DFS search spaces: genome in [0, 1]^n <-> a path of (source, layer, scale) hops.

Slots: the layers of all sources laid out in order (A's, then B's, ...; `interleaved`: layer 1 of every
source, then layer 2, ...), repeated r times: T = M x r slots for M layers in all. A slot is on when its
indicator gene, read as 2x - 1, is > 0; the path is the slots that are on, in slot order.

- `paper`: T indicators + the M x M matrix W, W_ij scaling the input of layer j when the previous hop was
  layer i (the first hop is scaled by 1). Initialisation as in the paper: the host's (model A's unless
  `host:` names another) first-repetition slots on, every other indicator at the threshold, W = 1; every
  variant starts from the host's own layers.
- `hop_scales` / `interleaved`: T indicators + one scale per slot (the released models' form).
- `same_size`: per layer position of the host, which source's layer sits there (a gene cut into equal
  parts) and its scale; the path keeps the host's layer count. `same_size_mix: weighted`: the gene x is
  read on the line of sources 0..n-1, x (n - 1) = k + alpha: layer p of source k merged linearly with
  layer p of source k + 1, (1 - alpha) W_k + alpha W_{k+1} (alpha 0: source k alone; x = 1: the last).
  A mixed hop is (k, p, scale, k + 1, alpha); every other hop is (source, layer, scale).

A genome whose path is empty or longer than `max_path_length` is an invalid candidate: `hops` raises
`InvalidPath`, which the search journals as a failed evaluation with the worst fitness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from vlmmerge.dataflow.config import DataflowConfig
from vlmmerge.dataflow.export import PathHop
from vlmmerge.errors import RecipeError


class InvalidPath(ValueError):
    """A genome that decodes to no usable path (empty, or over the length limit)."""


class DataflowSpace:
    """The genome <-> path map for one DFS recipe; `config` is the whole EvolveConfig (for the optimizer)."""

    def __init__(self, models: Sequence[str], layer_counts: Sequence[int], config, names: Sequence[str] | None = None,
                 host: int = 0, head: int | None = None):
        self.config = config
        self.host = host
        self.head = host if head is None else head  # the source of embeddings, final norm, head (describe only)
        self.dataflow: DataflowConfig = config.dataflow
        self.models = list(models)
        self.names = list(names or models)
        self.layer_counts = list(layer_counts)
        flow = self.dataflow
        self.variant = flow.variant
        self.weighted = self.variant == "same_size" and flow.same_size_mix == "weighted"
        if self.weighted and len(set(self.layer_counts)) > 1:
            raise RecipeError(f"evolve.dataflow.same_size_mix: weighted merges layer p of two sources, so every "
                              f"source needs the same layer count; got {self.layer_counts}")
        layers = [(s, l) for s, count in enumerate(self.layer_counts) for l in range(count)]
        if self.variant == "interleaved":
            layers = sorted(layers, key=lambda sl: (sl[1], sl[0]))
        self.layers = layers  # the M layers in slot order
        self.slots = layers * flow.repeats if self.variant != "same_size" else []
        self.low, self.high = flow.scale_bounds
        m, t = len(layers), len(self.slots)
        if self.variant == "paper":
            self.dimension = t + m * m
        elif self.variant == "same_size":
            self.dimension = 2 * self.layer_counts[host]
        else:
            self.dimension = 2 * t
        self.max_length = flow.max_path_length or max(t, self.layer_counts[host])

    # genes -> values
    def _scale(self, x: float) -> float:
        return float(f"{self.low + float(np.clip(x, 0.0, 1.0)) * (self.high - self.low):.8g}")

    def _unscale(self, value: float) -> float:
        return float(np.clip((value - self.low) / (self.high - self.low), 0.0, 1.0))

    def initial_genome(self) -> np.ndarray:
        genome = np.full(self.dimension, 0.5)
        one = self._unscale(1.0)
        n, host = len(self.layer_counts), self.host
        if self.variant == "same_size":  # the host's layer at every position
            count = self.layer_counts[host]
            genome[:count] = (host / max(n - 1, 1)) if self.weighted else (host + 0.5) / n
            genome[count:] = one
            return genome
        t = len(self.slots)
        genome[:t] = 0.5 - self.dataflow.init_off / 2
        for i, (source, _) in enumerate(self.slots[: len(self.layers)]):
            if source == host:  # the paper's start: the host's (model A's) first-repetition slots on
                genome[i] = 0.5 + self.dataflow.init_on / 2
        genome[t:] = one
        return genome

    def path(self, genome: np.ndarray) -> list[tuple]:
        """(source index, layer, scale) per hop, (source, layer, scale, other source, alpha) for a mixed
        one; raises InvalidPath for an empty or over-long path."""
        genome = np.asarray(genome, dtype=float)
        if genome.shape != (self.dimension,):
            raise ValueError(f"genome has {genome.shape} genes; this data-flow space has {self.dimension}")
        if self.variant == "same_size":
            return self._same_size(genome)
        t = len(self.slots)
        on = [i for i in range(t) if 2 * genome[i] - 1 > 0]
        if not on:
            raise InvalidPath("empty path: no slot is on")
        if len(on) > self.max_length:
            raise InvalidPath(f"path of {len(on)} hops is over max_path_length {self.max_length}")
        if self.variant != "paper":
            return [(*self.slots[i], self._scale(genome[t + i])) for i in on]
        m = len(self.layers)
        hops, previous = [], None
        for i in on:
            j = i % m
            scale = 1.0 if previous is None else self._scale(genome[t + previous * m + j])
            hops.append((*self.slots[i], scale))
            previous = j
        return hops

    def _same_size(self, genome: np.ndarray) -> list[tuple]:
        n, count = len(self.layer_counts), self.layer_counts[self.host]
        hops: list[tuple] = []
        for position in range(count):
            x, scale = float(np.clip(genome[position], 0.0, 1.0)), self._scale(genome[count + position])
            if self.weighted:
                k = min(int(x * (n - 1)), n - 1)
                alpha = float(f"{x * (n - 1) - k:.8g}")
                if alpha in (0.0, 1.0):  # one source (1.0: only after rounding to 8 digits)
                    hops.append((k + int(alpha), position, scale))
                else:
                    hops.append((k, position, scale, k + 1, alpha))
                continue
            source = min(int(x * n), n - 1)
            if position >= self.layer_counts[source]:
                source = self.host  # a position the source lacks: the host's layer
            hops.append((source, position, scale))
        return hops

    def hops(self, genome: np.ndarray) -> list[PathHop]:
        return [path_hop(hop, self.models) for hop in self.path(genome)]

    def decode(self, genome: np.ndarray) -> dict[str, Any]:
        """What the journal records: the path in words (or why the genome has none)."""
        try:
            path = self.path(genome)
        except InvalidPath as exc:
            return {"path": [], "invalid": str(exc)}
        return {"path": named_path(path, self.names), "length": len(path)}

    def describe(self) -> dict[str, Any]:
        search = self.config.search
        population = search.population_size(self.dimension)
        return {
            "kind": "dataflow", "variant": self.variant, "dimension": self.dimension, "models": self.models,
            **({"same_size_mix": "weighted"} if self.weighted else {}),
            **({"host": self.models[self.host]} if self.host else {}),
            **({"head_from": self.models[self.head]} if self.head != self.host else {}),
            "layers_per_model": self.layer_counts, "repeats": self.dataflow.repeats, "slots": len(self.slots),
            "max_path_length": self.max_length, "scale_bounds": [self.low, self.high],
            "population": population, "budget": search.budget, "generations": math.ceil(search.budget / population),
        }


def path_hop(hop: Sequence, models: Sequence[str]) -> PathHop:
    """A space's hop tuple (indices) as a PathHop (model references)."""
    if len(hop) == 5:
        return PathHop(models[hop[0]], hop[1], hop[2], models[hop[3]], hop[4])
    return PathHop(models[hop[0]], hop[1], hop[2])


def named_path(path: Sequence[Sequence], names: Sequence[str]) -> list[list]:
    """Hop tuples with model names: [name, layer, scale] or [name, layer, scale, other name, alpha]."""
    return [[names[h[0]], h[1], h[2], *([names[h[3]], h[4]] if len(h) == 5 else [])] for h in path]
