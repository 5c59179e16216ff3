"""The demo's multi-objective row: `configs/demo-vlm-pareto.yaml` (Japanese AND English captions,
NSGA-II) on one world, next to the single-objective searches.

The run writes its front (`front.json`, `front/NN/recipe.yaml`), the front picture (`front.png`,
with the sources and untuned baselines on the same axes) and the hypervolume curve into
`out/vlm-pareto/`; the demo prints the front table (`search.front_report.demo_front_block`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vlmmerge.zoo.refs import WORLD_ENV, WorldSpec

PARETO_CONFIG = "demo-vlm-pareto.yaml"
PARETO_FOLDER = "vlm-pareto"
QUICK_PARETO = {"budget": 48, "popsize": 8}  # `vlmmerge demo --quick`: 6 generations


def study_pareto(spec: WorldSpec, out: Path, configs: Path, quick: bool = False,
                 progress: bool = True) -> tuple[dict[str, Any], Path]:
    """Run the two-objective VLM search on the world; its summary and run folder."""
    import torch

    from vlmmerge.search import run_evolution
    from vlmmerge.zoo.study import EVAL_THREADS, world_arg

    torch.set_num_threads(EVAL_THREADS)
    os.environ[WORLD_ENV] = world_arg(spec)
    folder = out / PARETO_FOLDER
    summary = run_evolution(configs / PARETO_CONFIG, folder, progress=progress,
                            overrides=QUICK_PARETO if quick else None, save_model=False)
    return summary, folder


def pareto_block(summary: dict[str, Any], folder: Path) -> str:
    """The front table with links to the front picture and hypervolume curve of this run."""
    from vlmmerge.search.front_report import demo_front_block

    pictures = (str(folder / "front.png"), str(folder / "hypervolume.png"))
    return demo_front_block(summary, pictures=pictures)


def load_summary(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "summary.json").read_text(encoding="utf-8"))
