"""Hierarchical learned merging: groups of sources, then the groups' results; equal to the flat merge
when the second stage weighs every group 1 (a linear combination either way)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tests.core_helpers import load_tensors
from vlmmerge.engine import run_merge
from vlmmerge.recipe import load_recipe
from vlmmerge.tune import run_tune
from vlmmerge.zoo.refs import resolve_zoo_ref


def perturbed_copy(source: Path, out: Path, seed: int, scale: float = 0.01) -> Path:
    shutil.copytree(source, out)
    tensors = load_file(out / "model.safetensors")
    generator = torch.Generator().manual_seed(seed)
    noisy = {k: v + scale * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
             for k, v in tensors.items()}
    save_file(noisy, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def four_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    ja, math = Path(resolve_zoo_ref("zoo:ja_lm")), Path(resolve_zoo_ref("zoo:math_lm"))
    return [str(ja), str(math), str(perturbed_copy(ja, root / "ja2", 1)), str(perturbed_copy(math, root / "math2", 2))]


def test_hierarchical_with_unit_group_weights_equals_flat(tmp_path, four_sources):
    recipe = {
        "merge_method": "task_arithmetic", "base_model": "zoo:base", "tokenizer_source": four_sources[0],
        "models": [{"model": m} for m in four_sources], "dtype": "float32", "seed": 0,
        "tune": {"granularity": "layer", "scale": 2.0, "init": 0.5, "steps": 2, "batch_size": 2, "examples": 4,
                 "group_size": 2, "group_merge": "static",
                 "fitness": {"tasks": [{"task": "ja_math", "metric": "accuracy_in_language"}]}},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    summary = run_tune(path, tmp_path / "run", progress=False)
    assert [g["models"] for g in summary["hierarchical"]["groups"]] == [four_sources[:2], four_sources[2:]]
    # The flat recipe: every source with the weights its group learned.
    entries = []
    for index in range(2):
        group = load_recipe(tmp_path / "run" / "groups" / f"{index:02d}" / "recipe.yaml")
        entries += [e.model_dump() for e in group.models if e.model != group.base_model]
    flat = {**{k: v for k, v in recipe.items() if k != "tune"}, "models": entries, "base_model": resolve_zoo_ref("zoo:base")}
    (tmp_path / "flat.yaml").write_text(yaml.safe_dump(flat, sort_keys=False))
    run_merge(str(tmp_path / "flat.yaml"), tmp_path / "flat", overwrite=True, progress=False)
    hierarchical, expected = load_tensors(tmp_path / "run" / "best-model"), load_tensors(tmp_path / "flat")
    assert sorted(hierarchical) == sorted(expected)
    for name in expected:
        torch.testing.assert_close(hierarchical[name], expected[name], rtol=0, atol=2e-6)
    assert any(not torch.equal(hierarchical[n], load_tensors(Path(four_sources[0]))[n]) for n in expected)
