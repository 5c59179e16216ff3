"""`vlmmerge tune`: the run folder, resume after a kill, the command line, bad `tune:` sections."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vlmmerge.errors import RecipeError
from vlmmerge.tune import parse_tune, run_tune
from vlmmerge.tune.trainer import StopRequested, read_journal

RECIPE = {
    "merge_method": "task_arithmetic", "base_model": "zoo:base",
    "models": [{"model": "zoo:ja_lm"}, {"model": "zoo:math_lm"}], "tokenizer_source": "zoo:ja_lm",
    "dtype": "float32", "seed": 0,
    "tune": {"method": "supermerge", "granularity": "layer", "scale": 2.0, "init": 1.0, "steps": 6, "lr": 0.05,
             "batch_size": 4, "examples": 8, "checkpoint_every": 2,
             "fitness": {"tasks": [{"task": "ja_math", "metric": "accuracy_in_language"}]}},
}


def write(tmp_path: Path, **tune) -> Path:
    recipe = {**RECIPE, "tune": {**RECIPE["tune"], **tune}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True))
    return path


def numbers(entries):
    return [(e["step"], e["loss"], e["coefficients"]) for e in entries]


def test_resume_after_kill_gives_the_uninterrupted_journal(tmp_path):
    recipe = write(tmp_path)
    whole = run_tune(recipe, tmp_path / "whole", progress=False, save_model=False)
    with pytest.raises(StopRequested):  # killed after step 2 was journaled, before its state was saved
        run_tune(recipe, tmp_path / "killed", progress=False, save_model=False, stop_after=3)
    assert len(read_journal(tmp_path / "killed" / "journal.jsonl")) == 3
    resumed = run_tune(recipe, tmp_path / "killed", progress=False, save_model=False)
    expected = numbers(read_journal(tmp_path / "whole" / "journal.jsonl"))
    assert numbers(read_journal(tmp_path / "killed" / "journal.jsonl")) == expected
    assert len(expected) == 6 and expected[-1][1] < expected[0][1]  # the loss went down
    assert resumed["coefficients"] == whole["coefficients"]
    assert (tmp_path / "killed" / "best-recipe.yaml").read_text() == (tmp_path / "whole" / "best-recipe.yaml").read_text()
    for name in ("loss.png", "coefficients.png", "summary.json", "state.pt", "tune-recipe.yaml"):
        assert (tmp_path / "whole" / name).is_file(), name


def test_adamerging_runs_without_references(tmp_path):
    recipe = write(tmp_path, method="adamerging", steps=2, max_new_tokens=8)
    summary = run_tune(recipe, tmp_path / "run", progress=False, save_model=False)
    assert summary["method"] == "adamerging" and summary["steps"] == 2
    assert summary["first_loss"] >= 0  # an entropy


def test_command_line_writes_the_run_folder(tmp_path, capsys):
    from vlmmerge.cli import main

    recipe = write(tmp_path, steps=2)
    assert main(["tune", str(recipe), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert "static recipe" in capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2
    assert (tmp_path / "run" / "best-model" / "config.json").is_file()
    with pytest.raises(Exception, match="different recipe"):
        run_tune(write(tmp_path, steps=3), tmp_path / "run", progress=False)


@pytest.mark.parametrize("section,key", [
    ({"granularity": "row"}, "tune.granularity"),
    ({"init": 2.5}, "tune"),
    ({"steps": 0}, "tune.steps"),
    ({"sparsify": "magic"}, "tune.sparsify"),
])
def test_bad_tune_sections_name_the_key(section, key):
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
        parse_tune({**RECIPE["tune"], **section})
