"""Racing: with exact bounds it never drops a candidate the full split would have kept (constructed
examples, one objective and two); binomial bounds drop a candidate that would reach the threshold
at most 1 - confidence of the time; a raced run journals its stages and resumes them exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from core_helpers import make_evolve_world
from vlmmerge.cli import main as cli_main
from vlmmerge.search import Journal
from vlmmerge.search.racing import RacingConfig, dominates, keeps, stage_sizes, upper_full_mean


def _race(items: np.ndarray, stages, bound, top=1, confidence=0.95):
    """Simulate racing over candidates (rows of per-objective item matrices): returns, per candidate,
    (dropped, would the full split have kept it)."""
    n = items.shape[-1]
    sizes = stage_sizes(n, stages)
    earlier, outcome = [], []
    for candidate in items:  # candidate: objectives x items
        full = [float(row.mean()) for row in candidate]
        would_keep = keeps(full, earlier, top)
        dropped = False
        for size in sizes[:-1]:
            upper = [upper_full_mean(row[:size], n, confidence, bound, 100.0) for row in candidate]
            if not keeps(upper, earlier, top):
                dropped = True
                break
        outcome.append((dropped, would_keep))
        if not dropped:
            earlier.append(full)
    return outcome


def test_exact_racing_never_drops_a_candidate_the_full_split_keeps():
    rng = np.random.default_rng(0)
    # a strong first candidate, then a mix: clearly worse ones (prunable), close ones, better ones
    means = np.concatenate([[0.9], rng.uniform(0.0, 1.0, 79)])
    items = (rng.random((80, 1, 50)) < means[:, None, None]).astype(float) * 100
    for top in (1, 3):
        outcome = _race(items, [0.3, 0.6, 1.0], "exact", top=top)
        assert not any(dropped and keep for dropped, keep in outcome)
        assert sum(dropped for dropped, _ in outcome) >= 10  # and it does prune


def test_exact_racing_never_drops_a_candidate_that_would_enter_the_front():
    rng = np.random.default_rng(1)
    means = rng.uniform(0.0, 1.0, (80, 2, 1))
    means[0] = 0.85
    items = (rng.random((80, 2, 40)) < means).astype(float) * 100
    outcome = _race(items, [0.5, 1.0], "exact")
    assert not any(dropped and keep for dropped, keep in outcome)
    assert sum(dropped for dropped, _ in outcome) >= 5


def test_binomial_racing_wrongly_drops_at_most_one_minus_confidence():
    rng = np.random.default_rng(2)
    n, threshold = 100, 30.0
    wrong = 0
    trials = 2000
    item_values = np.zeros(n)
    item_values[: int(threshold)] = 100.0  # full mean exactly at the threshold: the full split keeps it
    for _ in range(trials):
        seen = rng.permutation(item_values)[:20]
        wrong += upper_full_mean(seen, n, 0.95, "binomial", 100.0) < threshold
    assert wrong / trials <= 0.05
    # and it is much sharper than the exact bound for a weak candidate
    weak = np.zeros(20)
    assert upper_full_mean(weak, n, 0.95, "binomial", 100.0) < 15 < upper_full_mean(weak, n, 0.95, "exact", 100.0)


def test_bounds_and_settings():
    assert upper_full_mean([100.0] * 5, 10, 0.95, "binomial", 100.0) == 100.0
    assert upper_full_mean([0.0, 100.0], 4, 0.95, "exact", 100.0) == pytest.approx((100 + 200) / 4)
    assert upper_full_mean([10.0, 20.0], 2, 0.95, "exact", 100.0) == 15.0
    assert stage_sizes(100, [0.2, 1.0]) == [20, 100] and stage_sizes(3, [0.1, 0.2, 1.0]) == [1, 2, 3]
    assert dominates([2, 2], [2, 1]) and not dominates([2, 2], [2, 2])
    with pytest.raises(ValueError, match="ending with 1.0"):
        RacingConfig(stages=[0.5, 0.9])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_evolve_world(tmp_path_factory.mktemp("racing"))


def test_raced_run_journals_stages_and_resumes_them_exactly(world, tmp_path):
    task = str(world["set"])
    recipe = {
        "merge_method": "task_arithmetic", "base_model": str(world["base"]),
        "models": [{"model": str(world["vlm"])}, {"model": str(world["ft_a"])}], "dtype": "float32", "seed": 5,
        "evolve": {"params": ["weight"], "budget": 6, "popsize": 3, "seed": 1,
                   "objectives": [{"task": task, "metric": "concepts"}],
                   "racing": {"stages": [0.5, 1.0], "bound": "binomial", "confidence": 0.6},
                   "fitness": {"limit": 4, "batch_size": 4}},
    }
    path = tmp_path / "race.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    assert cli_main(["evolve", str(path), "--out", str(out), "--quiet", "--no-model"]) == 0
    entries = Journal(out / "journal.jsonl").of("cma")
    assert len(entries) == 6 and all(e.stages for e in entries)
    for e in entries:
        assert e.stages[0]["items"] == 2 and (e.stages[-1]["complete"] == (len(e.stages) == 2))
        assert e.scores["generated_items"] == e.stages[-1]["items"]
        if not e.stages[-1]["complete"]:  # dropped: its seen mean is its fitness, below the best
            assert e.fitness == e.stages[-1]["objectives"][0] < max(x.fitness for x in entries if x.stages[-1]["complete"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fitness_items"]["generated"] == sum(e.stages[-1]["items"] for e in entries)
    # a run killed after 4 evaluations resumes with the same stage decisions
    lines = (out / "journal.jsonl").read_text().splitlines(keepends=True)
    (out / "journal.jsonl").write_text("".join(lines[:4]))
    assert cli_main(["evolve", str(path), "--out", str(out), "--quiet", "--no-model"]) == 0
    def timeless(text_lines):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in text_lines]

    assert (out / "journal.jsonl").read_text().splitlines()[:4] == [line.rstrip("\n") for line in lines[:4]]
    assert timeless((out / "journal.jsonl").read_text().splitlines()) == timeless(lines)
