"""One validated job (recipe + engine options) built at the edge; the CLI's user-facing help."""

from __future__ import annotations

import pytest
import torch
import yaml

from core_helpers import load_tensors, make_world, write_recipe
from vlmmerge.cli import build_parser, main as cli_main
from vlmmerge.engine import MergeJob, run_merge
from vlmmerge.errors import RecipeError, VlmMergeError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("job"), "llava")


def _recipe(world, **extra) -> dict:
    return {
        "merge_method": "linear",
        "models": [{"model": str(world["ft_a"]), "parameters": {"weight": 0.3}},
                   {"model": str(world["ft_b"]), "parameters": {"weight": 0.7}}],
        "dtype": "float32",
        **extra,
    }


def test_help_opens_with_a_user_facing_description():
    text = build_parser().format_help()
    description = text.split("\n\n")[1]
    assert description.startswith("Merge a vision-language model")
    assert "vlmmerge/commands" not in text and "register(" not in text


def test_command_line_overrides_recipe_options_which_override_defaults(world):
    recipe = _recipe(world, options={"threads": 2, "max_shard_size": "5MB"})
    job = MergeJob.build(recipe, threads=3, compute_dtype="float64")
    assert (job.options.threads, job.options.max_shard_size, job.options.device) == (3, "5MB", "cpu")
    assert job.options.compute_dtype == torch.float64
    assert job.recipe.options.threads == 3  # the recipe carried down holds the effective options
    assert MergeJob.build(job) is job  # a job is never converted twice


def test_recorded_recipe_is_the_users_text_unless_compute_dtype_changes_the_numbers(world):
    text = yaml.safe_dump(_recipe(world)) + "# my comment\n"
    assert MergeJob.build(text, threads=1, recipe_text=text).recipe_yaml == text
    recorded = yaml.safe_load(MergeJob.build(text, compute_dtype="float64", recipe_text=text).recipe_yaml)
    assert recorded["options"]["compute_dtype"] == "float64"


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"threads": 0}, VlmMergeError, "threads must be at least 1"),
        ({"max_shard_size": "lots"}, VlmMergeError, "cannot read size 'lots'"),
        ({"compute_dtype": "float16"}, RecipeError, "options.compute_dtype: unknown compute dtype 'float16'"),
    ],
)
def test_bad_engine_options_fail_at_the_edge_before_any_model_is_opened(world, overrides, error, match, monkeypatch):
    import vlmmerge.engine.plan as plan

    monkeypatch.setattr(plan.Source, "open", lambda ref: pytest.fail(f"opened {ref}"))
    with pytest.raises(error, match=match):
        MergeJob.build(_recipe(world), **overrides)


def test_run_merge_reads_and_validates_the_recipe_once(world, tmp_path, monkeypatch):
    import vlmmerge.engine.job as job_module

    calls = []
    load = job_module.load_recipe
    monkeypatch.setattr(job_module, "load_recipe", lambda source: calls.append(source) or load(source))
    run_merge(write_recipe(tmp_path / "r.yaml", _recipe(world)), tmp_path / "out", progress=False)
    assert len(calls) == 1


def test_float64_compute_from_the_command_line(world, tmp_path):
    path = write_recipe(tmp_path / "r.yaml", _recipe(world))
    assert cli_main(["merge", str(path), str(tmp_path / "f64"), "--compute-dtype", "float64", "--quiet"]) == 0
    assert cli_main(["merge", str(path), str(tmp_path / "f32"), "--quiet"]) == 0
    f64, f32 = load_tensors(tmp_path / "f64"), load_tensors(tmp_path / "f32")
    a, b = load_tensors(world["ft_a"]), load_tensors(world["ft_b"])
    name = "model.layers.1.mlp.down_proj.weight"
    exact = 0.3 * a[name].double() + 0.7 * b[name].double()
    ulp = torch.finfo(torch.float32).eps * exact.abs().clamp(min=1e-3)
    assert ((f64[name].double() - exact).abs() <= ulp).all()  # float64 math, rounded to float32 once
    torch.testing.assert_close(f32[name].double(), exact, rtol=0, atol=1e-6)
    assert yaml.safe_load((tmp_path / "f64" / "recipe.yaml").read_text())["options"]["compute_dtype"] == "float64"
    assert (tmp_path / "f32" / "recipe.yaml").read_text() == path.read_text()
