"""The same YAML recipe run by mergekit 0.1.5 and by vlmmerge gives the same tensors (float32, <= 1e-5).

Covers every deterministic method mergekit also has; DARE and DELLA draw random masks and are
covered statistically in test_methods.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core_helpers import load_tensors, perturb, write_recipe
from vlmmerge.engine import run_merge
from vlmmerge.testing.tiny import build_tiny_lm_for, save_model

MERGEKIT = shutil.which("mergekit-yaml") or str(Path(sys.executable).parent / "mergekit-yaml")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    base = build_tiny_lm_for("llava", seed=1)
    return {
        "base": save_model(base, root / "base"),
        "a": save_model(perturb(build_tiny_lm_for("llava", seed=1), seed=21), root / "a"),
        "b": save_model(perturb(build_tiny_lm_for("llava", seed=1), seed=22), root / "b"),
        "c": save_model(perturb(build_tiny_lm_for("llava", seed=1), seed=23), root / "c"),
    }


def _recipes(m):
    a, b, c, base = str(m["a"]), str(m["b"]), str(m["c"]), str(m["base"])
    tv = lambda method, params, extra=None: {  # noqa: E731
        "merge_method": method,
        "base_model": base,
        "models": [{"model": a, "parameters": params[0]}, {"model": b, "parameters": params[1]}],
        "parameters": extra or {},
        "dtype": "float32",
    }
    return {
        "linear": {
            "merge_method": "linear",
            "models": [{"model": a, "parameters": {"weight": [0.2, 0.9]}}, {"model": b, "parameters": {"weight": 0.5}}],
            "dtype": "float32",
        },
        "linear_unnormalised": {
            "merge_method": "linear",
            "models": [{"model": a, "parameters": {"weight": 0.7}}, {"model": b, "parameters": {"weight": 0.6}}],
            "parameters": {"normalize": False},
            "dtype": "float32",
        },
        "task_arithmetic": tv(
            "task_arithmetic",
            [{"weight": [0.3, 1.1]}, {"weight": [{"filter": "mlp", "value": 0.9}, {"value": 0.4}]}],
            {"lambda": 0.8},
        ),
        "ties": tv("ties", [{"weight": 0.7, "density": 0.6}, {"weight": 1.3, "density": 0.35}]),
        "ties_unnormalised": tv(
            "ties", [{"weight": 0.7, "density": [0.3, 0.9]}, {"weight": 0.9, "density": 0.5}], {"normalize": False, "lambda": 1.2}
        ),
        "breadcrumbs": tv("breadcrumbs", [{"weight": 0.6, "density": 0.8, "gamma": 0.05}, {"weight": 0.8, "density": 0.7, "gamma": 0.02}]),
        "breadcrumbs_ties": tv(
            "breadcrumbs_ties", [{"weight": 0.6, "density": 0.8, "gamma": 0.05}, {"weight": 0.8, "density": 0.7, "gamma": 0.02}]
        ),
        "slerp": {
            "merge_method": "slerp",
            "base_model": a,
            "models": [{"model": a}, {"model": b}],
            "parameters": {"t": [{"filter": "self_attn", "value": [0.1, 0.8]}, {"value": 0.35}]},
            "dtype": "float32",
        },
        "model_stock": {
            "merge_method": "model_stock",
            "base_model": base,
            "models": [{"model": a}, {"model": b}, {"model": c}],
            "dtype": "float32",
        },
    }


METHOD_CASES = [
    "linear",
    "linear_unnormalised",
    "task_arithmetic",
    "ties",
    "ties_unnormalised",
    "breadcrumbs",
    "breadcrumbs_ties",
    "slerp",
    "model_stock",
]


@pytest.mark.parametrize("case", METHOD_CASES)
def test_same_tensors_as_mergekit(case, models, tmp_path):
    recipe = _recipes(models)[case]
    path = write_recipe(tmp_path / f"{case}.yaml", recipe)
    theirs = tmp_path / "mergekit"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [MERGEKIT, str(path), str(theirs), "--no-cuda", "--quiet", "--random-seed", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ours = tmp_path / "vlmmerge"
    run_merge(path, ours, progress=False)
    expected, got = load_tensors(theirs), load_tensors(ours)
    assert set(got) == set(expected)
    worst = max((got[n].float() - expected[n].float()).abs().max().item() for n in expected)
    assert worst <= 1e-5, f"{case}: max abs difference {worst}"
    # Not trivially equal to an input: the recipe really merged something.
    a = load_tensors(models["a"])
    assert any(not torch.equal(got[n], a[n]) for n in got)
