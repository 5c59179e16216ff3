"""DFS search spaces: genome in [0, 1]^n <-> a path of (source, layer, scale) hops.

Slots: the layers of all sources laid out in order (A's, then B's, ...; `interleaved`: layer 1 of every
source, then layer 2, ...), repeated r times: T = M x r slots for M layers in all. A slot is on when its
indicator gene, read as 2x - 1, is > 0; the path is the slots that are on, in slot order.

- `paper`: T indicators + the M x M matrix W, W_ij scaling the input of layer j when the previous hop was
  layer i (the first hop is scaled by 1). Initialisation as in the paper: A's first-repetition slots on,
  every other indicator at the threshold, W = 1.
- `hop_scales` / `interleaved`: T indicators + one scale per slot (the released models' form).
- `same_size`: per layer position of A, which source's layer sits there (a gene cut into equal parts)
  and its scale; the path keeps A's layer count.

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


class InvalidPath(ValueError):
    """A genome that decodes to no usable path (empty, or over the length limit)."""


class DataflowSpace:
    """The genome <-> path map for one DFS recipe; `config` is the whole EvolveConfig (for the optimizer)."""

    def __init__(self, models: Sequence[str], layer_counts: Sequence[int], config, names: Sequence[str] | None = None):
        self.config = config
        self.dataflow: DataflowConfig = config.dataflow
        self.models = list(models)
        self.names = list(names or models)
        self.layer_counts = list(layer_counts)
        flow = self.dataflow
        self.variant = flow.variant
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
            self.dimension = 2 * self.layer_counts[0]
        else:
            self.dimension = 2 * t
        self.max_length = flow.max_path_length or max(t, self.layer_counts[0])

    # genes -> values
    def _scale(self, x: float) -> float:
        return float(f"{self.low + float(np.clip(x, 0.0, 1.0)) * (self.high - self.low):.8g}")

    def _unscale(self, value: float) -> float:
        return float(np.clip((value - self.low) / (self.high - self.low), 0.0, 1.0))

    def initial_genome(self) -> np.ndarray:
        genome = np.full(self.dimension, 0.5)
        one = self._unscale(1.0)
        a_layers = self.layer_counts[0]
        if self.variant == "same_size":
            genome[:a_layers] = 0.5 / len(self.layer_counts)  # source 0 (A) at every position
            genome[a_layers:] = one
            return genome
        t = len(self.slots)
        genome[:t] = 0.5 - self.dataflow.init_off / 2
        for i, (source, _) in enumerate(self.slots[: len(self.layers)]):
            if source == 0:
                genome[i] = 0.5 + self.dataflow.init_on / 2
        genome[t:] = one
        return genome

    def path(self, genome: np.ndarray) -> list[tuple[int, int, float]]:
        """(source index, layer, scale) per hop; raises InvalidPath for an empty or over-long path."""
        genome = np.asarray(genome, dtype=float)
        if genome.shape != (self.dimension,):
            raise ValueError(f"genome has {genome.shape} genes; this data-flow space has {self.dimension}")
        if self.variant == "same_size":
            n, count = len(self.layer_counts), self.layer_counts[0]
            hops = []
            for position in range(count):
                source = min(int(np.clip(genome[position], 0.0, 1.0) * n), n - 1)
                if position >= self.layer_counts[source]:
                    source = 0
                hops.append((source, position, self._scale(genome[count + position])))
            return hops
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

    def hops(self, genome: np.ndarray) -> list[PathHop]:
        return [PathHop(self.models[s], l, c) for s, l, c in self.path(genome)]

    def decode(self, genome: np.ndarray) -> dict[str, Any]:
        """What the journal records: the path in words (or why the genome has none)."""
        try:
            path = self.path(genome)
        except InvalidPath as exc:
            return {"path": [], "invalid": str(exc)}
        return {"path": [[self.names[s], l, c] for s, l, c in path], "length": len(path)}

    def describe(self) -> dict[str, Any]:
        search = self.config.search
        population = search.population_size(self.dimension)
        return {
            "kind": "dataflow", "variant": self.variant, "dimension": self.dimension, "models": self.models,
            "layers_per_model": self.layer_counts, "repeats": self.dataflow.repeats, "slots": len(self.slots),
            "max_path_length": self.max_length, "scale_bounds": [self.low, self.high],
            "population": population, "budget": search.budget, "generations": math.ceil(search.budget / population),
        }
