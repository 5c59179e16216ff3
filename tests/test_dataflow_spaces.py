"""DFS search spaces: genomes decode to the paths the issue's definitions say (checked by hand-built genomes)."""

from __future__ import annotations

import numpy as np
import pytest

from vlmmerge.dataflow.spaces import DataflowSpace, InvalidPath
from vlmmerge.errors import RecipeError
from vlmmerge.search.space import parse_evolve


def _config(**flow):
    return parse_evolve({"dataflow": flow, "fitness": {"tasks": [{"task": "ja_math"}]}, "popsize": 4, "budget": 8})


def _space(**flow) -> DataflowSpace:
    return DataflowSpace(["A", "B"], [3, 2], _config(**flow))


def test_paper_space_indicator_and_w_matrix():
    space = _space(variant="paper", repeats=2, scale_bounds=[0.0, 2.0])
    m, t = 5, 10
    assert space.dimension == t + m * m
    genome = space.initial_genome()
    # the paper's start: A's first-repetition slots on, W = 1
    assert space.path(genome) == [(0, 0, 1.0), (0, 1, 1.0), (0, 2, 1.0)]
    genome = np.full(space.dimension, 0.5)
    on = [0, 4, 5]  # A0, B1, then A0 again (second repetition)
    genome[on] = 0.9
    genome[t + 0 * m + 4] = 0.75  # W[A0 -> B1] = 1.5
    genome[t + 4 * m + 0] = 0.25  # W[B1 -> A0] = 0.5
    assert space.path(genome) == [(0, 0, 1.0), (1, 1, 1.5), (0, 0, 0.5)]


def test_hop_scales_interleaved_and_same_size():
    space = _space(variant="hop_scales", repeats=1)
    genome = np.full(space.dimension, 0.5)
    genome[[1, 3]] = 1.0
    genome[5 + 1], genome[5 + 3] = 0.0, 1.0  # scale bounds (0.5, 1.5)
    assert space.path(genome) == [(0, 1, 0.5), (1, 0, 1.5)]
    inter = _space(variant="interleaved", repeats=1)
    assert inter.layers == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)]
    same = _space(variant="same_size")
    assert same.dimension == 6
    assert same.path(same.initial_genome()) == [(0, 0, 1.0), (0, 1, 1.0), (0, 2, 1.0)]
    genome = same.initial_genome()
    genome[1] = 0.9  # position 1: B's layer 1
    genome[2] = 0.9  # position 2: B has no layer 2, A's stays
    assert same.path(genome) == [(0, 0, 1.0), (1, 1, 1.0), (0, 2, 1.0)]


def test_empty_and_over_long_paths_are_invalid_candidates():
    space = _space(variant="hop_scales", repeats=2, max_path_length=4)
    genome = np.zeros(space.dimension)
    with pytest.raises(InvalidPath, match="empty"):
        space.path(genome)
    assert space.decode(genome)["invalid"].startswith("empty")
    genome[:5] = 1.0
    with pytest.raises(InvalidPath, match="over max_path_length 4"):
        space.path(genome)


def test_bad_dataflow_settings_name_the_key():
    with pytest.raises(RecipeError, match="evolve.dataflow.scale_bounds"):
        _config(scale_bounds=[1.5, 0.5])
    with pytest.raises(RecipeError, match="evolve.dataflow.variant"):
        _config(variant="zigzag")
