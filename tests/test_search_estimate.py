"""Subset estimation: on a synthetic split made of groups of interchangeable items the anchors
recover every full-split mean exactly (the known answer); on a noisy split the error is small and
measured the same way it is measured on a run's journal."""

from __future__ import annotations

import numpy as np
import pytest

from vlmmerge.search.estimate import Anchors, choose_anchors, estimation_error


def _grouped_split(rng, groups, items_per_group, models):
    """Items in `groups` groups; every item of a group is answered identically by every model."""
    sizes = rng.integers(1, 2 * items_per_group, groups)
    difficulty = rng.random(groups)
    skill = rng.random(models)
    group_scores = (skill[:, None] > difficulty[None, :]).astype(float) * 100  # models x groups
    # make the groups distinguishable: a random pattern per group on top
    group_scores[:, :] = np.where(rng.random((models, groups)) < 0.5, group_scores, 100 - group_scores)
    columns = np.repeat(np.arange(groups), sizes)
    rng.shuffle(columns)
    return group_scores[:, columns], columns


def test_anchors_recover_grouped_means_exactly():
    rng = np.random.default_rng(0)
    matrix, columns = _grouped_split(rng, groups=6, items_per_group=15, models=40)
    reference, candidates = matrix[:8], matrix[8:]  # anchors chosen on 8 models, tested on 32 others
    anchors = choose_anchors(reference, k=10, seed=3)
    assert len(anchors.items) <= 10 and sum(anchors.weights) == pytest.approx(1.0)
    # the known answer: each group's share of the split times its (shared) score
    for row in candidates:
        assert anchors.estimate_full(row) == pytest.approx(row.mean(), abs=1e-9)
    report = estimation_error(anchors, candidates)
    assert report["mean_abs_error"] == pytest.approx(0.0, abs=1e-9) and report["candidates"] == 32


def test_estimation_error_on_a_noisy_split_is_measured_against_the_full_means():
    rng = np.random.default_rng(1)
    matrix, _ = _grouped_split(rng, groups=5, items_per_group=20, models=30)
    flip = rng.random(matrix.shape) < 0.05  # 5% of answers differ from their group's
    noisy = np.where(flip, 100 - matrix, matrix)
    anchors = choose_anchors(noisy[:10], k=20, seed=0)
    report = estimation_error(anchors, noisy[10:])
    errors = [abs(anchors.estimate_full(r) - r.mean()) for r in noisy[10:]]
    assert report["mean_abs_error"] == pytest.approx(np.mean(errors))
    assert report["max_abs_error"] == pytest.approx(max(errors))
    assert report["mean_abs_error"] < 10 and report["spearman"] > 0.8


def test_anchor_choice_is_deterministic_and_round_trips():
    rng = np.random.default_rng(2)
    matrix = (rng.random((6, 50)) < 0.4).astype(float) * 100
    a, b = choose_anchors(matrix, 8, seed=5), choose_anchors(matrix, 8, seed=5)
    assert a == b and Anchors.from_json(a.to_json()) == a
    everything = choose_anchors(matrix, 60, seed=0)
    assert everything.items == list(range(50))


def test_estimated_run_scores_anchors_only_and_keeps_them_on_resume(tmp_path):
    import json

    import yaml

    from core_helpers import make_evolve_world
    from vlmmerge.cli import main as cli_main
    from vlmmerge.search import Journal

    world = make_evolve_world(tmp_path / "world")
    task = str(world["set"])
    recipe = {
        "merge_method": "task_arithmetic", "base_model": str(world["base"]),
        "models": [{"model": str(world["vlm"])}, {"model": str(world["ft_a"])}], "dtype": "float32", "seed": 5,
        "evolve": {"params": ["weight"], "budget": 3, "popsize": 3, "seed": 1,
                   "objectives": [{"task": task, "metric": "concepts"}],
                   "estimate": {"anchors": 2, "probes": 1},
                   "fitness": {"limit": 4, "batch_size": 4}},
    }
    path = tmp_path / "estimate.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    assert cli_main(["evolve", str(path), "--out", str(out), "--quiet", "--no-model"]) == 0
    anchors = json.loads((out / "anchors.json").read_text())
    (name, chosen), = anchors["anchors"].items()
    assert len(chosen["items"]) <= 2 and sum(chosen["weights"]) == pytest.approx(1.0)
    # 2 sources + 2 baselines + 1 probe on the 4 items, to choose the anchors
    assert anchors["generated_items"] == 5 * 4 and len(anchors["matrix"][name]) == 5
    entries = Journal(out / "journal.jsonl").of("cma")
    assert all(e.scores["generated_items"] == len(chosen["items"]) for e in entries)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fitness_items"]["generated"] == 20 + 3 * len(chosen["items"])
    assert summary["fitness_items"]["full_split_equivalent"] == 3 * 4
    before = (out / "journal.jsonl").read_text()
    assert cli_main(["evolve", str(path), "--out", str(out), "--quiet", "--no-model"]) == 0
    assert (out / "journal.jsonl").read_text() == before
    assert json.loads((out / "anchors.json").read_text()) == anchors
