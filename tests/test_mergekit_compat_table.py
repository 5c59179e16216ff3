"""The README's mergekit compatibility table is generated (tests/mergekit_compat.py), names only
tests that exist, and covers every method mergekit 0.1.5 registers and every key of its recipe."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import mergekit_compat as compat
from core_helpers import load_tensors, perturb, write_recipe
from vlmmerge.docblocks import markers
from vlmmerge.engine import run_merge
from vlmmerge.errors import RecipeError
from vlmmerge.recipe import load_recipe
from vlmmerge.testing.tiny import build_tiny_lm_for, save_model

REPO = compat.REPO


def _all_rows() -> list[compat.Row]:
    return [*compat.METHODS, *compat.keys()]


def test_readme_block_is_the_generated_table() -> None:
    start, end = markers("mergekit-compat")
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert start in text and end in text, "run: .venv/bin/python tests/mergekit_compat.py"
    block = text.split(start, 1)[1].split(end, 1)[0].strip("\n")
    assert block == compat.render(), "README table is stale; run: .venv/bin/python tests/mergekit_compat.py"


def _defined(path: Path) -> tuple[set[str], set[str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    functions = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return functions, strings


@pytest.mark.parametrize("test_id", sorted({t for row in _all_rows() for t in row.tests}))
def test_every_listed_test_exists(test_id: str) -> None:
    file, _, rest = test_id.partition("::")
    path = REPO / file
    assert path.is_file(), test_id
    if not rest:
        return
    name, _, param = rest.partition("[")
    functions, strings = _defined(path)
    assert name.startswith("test_") and name in functions, test_id
    if param:
        assert param.rstrip("]") in strings, test_id  # a parametrize value written in the file


def test_every_mergekit_method_is_listed() -> None:
    from mergekit.merge_methods.registry import registered_methods

    assert sorted(r.name for r in compat.METHODS) == sorted(m.spec.name for m in registered_methods())
    assert all(r.tests for r in compat.METHODS)


def test_every_mergekit_recipe_key_is_listed() -> None:
    from mergekit.config import InputModelDefinition, MergeConfiguration
    from mergekit.tokenizer.config import TokenizerConfig

    listed = " ".join(r.name for r in compat.keys())
    for field in MergeConfiguration.model_fields:
        assert field in listed, field
    for field in InputModelDefinition.model_fields:
        assert f"models[].{field}" in listed, field
    for field in TokenizerConfig.model_fields:
        assert field in listed, field
    statuses = {r.status for r in _all_rows()}
    assert statuses <= {compat.SAME, compat.DIFF, compat.NOT, "in progress"}


def test_slices_row_follows_the_tests_that_exist() -> None:
    row = compat._slices_row()
    exists = any((REPO / "tests").glob("test_slices_*.py"))
    assert (row.status == compat.SAME) == exists and bool(row.tests) == exists


def test_lora_reference_is_refused() -> None:
    with pytest.raises(RecipeError, match=r"models\.0\.model: .*'model\+lora' references are not supported"):
        load_recipe({"merge_method": "linear", "models": [{"model": "org/base+org/lora"}]})


def test_out_dtype_writes_in_that_dtype(tmp_path: Path) -> None:
    a = save_model(perturb(build_tiny_lm_for("llava", seed=1), seed=3), tmp_path / "a")
    b = save_model(perturb(build_tiny_lm_for("llava", seed=1), seed=4), tmp_path / "b")
    recipe = write_recipe(tmp_path / "r.yaml", {
        "merge_method": "linear", "dtype": "float32", "out_dtype": "bfloat16",
        "models": [{"model": str(a), "parameters": {"weight": 0.25}}, {"model": str(b), "parameters": {"weight": 0.75}}],
    })
    run_merge(recipe, tmp_path / "out", progress=False)
    got, ta, tb = load_tensors(tmp_path / "out"), load_tensors(a), load_tensors(b)
    for name, value in got.items():
        assert value.dtype == torch.bfloat16, name
        expected = 0.25 * ta[name] + 0.75 * tb[name]  # float32 math, then one rounding to bf16 (1 ulp: 2^-8)
        torch.testing.assert_close(value.float(), expected, rtol=2**-8, atol=1e-7, msg=name)
