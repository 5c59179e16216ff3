"""DFS candidates as live models: a genome's path set on the layer-path runtime (no weight is copied)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vlmmerge.dataflow.runtime import HopSpec, LayerPath
from vlmmerge.dataflow.spaces import DataflowSpace


@dataclass
class DataflowMaterializer:
    """A `vlmmerge.search.candidates.Materializer`: genome -> the runtime running that path."""

    runtime: LayerPath
    space: DataflowSpace

    def materialize(self, genome: np.ndarray) -> tuple[Any, Any]:
        hops = [HopSpec(*hop) for hop in self.space.path(genome)]  # InvalidPath: a failed candidate
        return self.runtime.materialize(hops)


@dataclass
class DataflowFitness:
    """A picklable fitness factory (`vlmmerge.search.ray_backend.FitnessFactory`): in a Ray actor it
    loads the same layer-path runtime, space and evaluator as the local run, once."""

    refs: list[str]
    names: list[str]
    config: Any  # vlmmerge.search.space.EvolveConfig
    dtype: Any  # torch.dtype
    device: str
    host: int = 0  # index into refs of the model that supplies embeddings, final norm, head (and vision side)
    head: int | None = None  # index into refs of the model lending embeddings, final norm, head (None: the host)

    def __call__(self):
        from vlmmerge.dataflow.runtime import load_layer_path
        from vlmmerge.search.fitness import ModelFitness, make_evaluator
        from vlmmerge.search.optimize import nonnegative_seed

        runtime = load_layer_path(self.refs, self.names, device=self.device, dtype=self.dtype, host=self.host,
                                  head=self.head)
        space = DataflowSpace(self.refs, runtime.layer_counts, self.config, self.names, host=self.host, head=self.head)
        evaluator = make_evaluator(self.config.fitness, nonnegative_seed(self.config.seed))
        return ModelFitness(DataflowMaterializer(runtime, space), evaluator, self.config.fitness)
