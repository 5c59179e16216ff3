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
        hops = [HopSpec(s, l, c) for s, l, c in self.space.path(genome)]  # InvalidPath: a failed candidate
        return self.runtime.materialize(hops)
