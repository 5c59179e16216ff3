"""Racing with a likelihood first stage: the kept set is exactly the documented rule (replayed from
the journal and against an independent rank formula), dropped candidates generate nothing, generated
items are counted per stage, and a killed run resumes with the same stages."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from core_helpers import make_evolve_world
from vlmmerge.cli import main as cli_main
from vlmmerge.search import Journal
from vlmmerge.search.racing import RacingConfig, likelihood_keeps, stage_sizes


def _rank_rule(value, earlier, keep, warmup, window=None):
    """Independent form: sort earlier + itself (ties in the candidate's favour); kept iff its
    position on some objective is within the top ceil(keep * count), or during warm-up."""
    if len(earlier) < warmup:
        return True
    if window:
        earlier = earlier[len(earlier) - min(window, len(earlier)):]
    for j, v in enumerate(value):
        pool = sorted([e[j] for e in earlier] + [v], reverse=True)
        if pool.index(v) + 1 <= math.ceil(keep * len(pool) - 1e-9):
            return True
    return False


def test_likelihood_rule_matches_rank_formula():
    import numpy as np

    rng = np.random.default_rng(3)
    for trial in range(300):
        n, d = int(rng.integers(0, 12)), int(rng.integers(1, 3))
        earlier = rng.integers(0, 6, (n, d)).astype(float).tolist()  # ties on purpose
        value = rng.integers(0, 6, d).astype(float).tolist()
        keep, warmup = float(rng.choice([0.25, 0.5, 1.0])), int(rng.integers(0, 4))
        window = [None, 1, 3][trial % 3]
        assert likelihood_keeps(value, earlier, keep, warmup, window) == _rank_rule(value, earlier, keep, warmup, window)
    assert likelihood_keeps([1.0], [[2.0], [0.3], [0.5]], 0.5, 0)  # 2nd of 4: top ceil(0.5 * 4) = 2
    assert not likelihood_keeps([1.0], [[2.0], [3.0], [0.5]], 0.5, 0)  # 3rd of 4
    assert likelihood_keeps([1.0, 0.0], [[2.0, 0.0], [3.0, 0.0], [0.5, 0.0]], 0.5, 0)  # ties on the 2nd objective
    assert likelihood_keeps([0.0], [[2.0]], 0.5, 2)  # warm-up
    assert likelihood_keeps([1.0], [[2.0], [3.0], [0.5]], 0.5, 0, window=1)  # only [0.5] counts
    assert not likelihood_keeps([1.0], [[9.0], [2.0], [3.0]], 0.5, 3, window=1)  # window after warm-up
    with pytest.raises(ValueError):
        RacingConfig(likelihood={"keep": 0.0})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_evolve_world(tmp_path_factory.mktemp("racing-likelihood"))


def test_likelihood_first_stage_journals_keeps_by_rule_and_resumes(world, tmp_path):
    task = str(world["set"])
    keep, warmup, window = 0.5, 2, 3
    recipe = {
        "merge_method": "task_arithmetic", "base_model": str(world["base"]),
        "models": [{"model": str(world["vlm"])}, {"model": str(world["ft_a"])}], "dtype": "float32", "seed": 5,
        "evolve": {"params": ["weight"], "budget": 8, "popsize": 4, "seed": 1,
                   "objectives": [{"task": task, "metric": "concepts"}],
                   "racing": {"likelihood": {"keep": keep, "warmup": warmup, "window": window}, "stages": [0.5, 1.0],
                              "bound": "binomial", "confidence": 0.6},
                   "fitness": {"limit": 4, "batch_size": 4}},
    }
    path = tmp_path / "race.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    assert cli_main(["evolve", str(path), "--out", str(out), "--quiet", "--no-model"]) == 0
    entries = Journal(out / "journal.jsonl").of("cma")
    assert len(entries) == 8
    sizes = stage_sizes(4, [0.5, 1.0])
    compared = []
    for e in entries:
        first = e.stages[0]
        assert first["kind"] == "likelihood" and first["items"] == 0 and first["likelihood_items"] == 4
        assert len(first["likelihood"]) == 1 and 0.0 < first["likelihood"][0] <= 100.0
        assert first["kept"] == likelihood_keeps(first["compared"], compared, keep, warmup, window)
        assert first["kept"] == _rank_rule(first["compared"], compared, keep, warmup, window)
        compared.append(first["compared"])
        if first["kept"]:  # then the generated stages, counted as before
            assert e.stages[1]["items"] == sizes[0] and e.scores["generated_items"] == e.stages[-1]["items"]
        else:  # dropped by likelihood: nothing generated, floor objectives, never complete
            assert len(e.stages) == 1 and e.scores["generated_items"] == 0
            assert e.fitness == 0.0 and e.objectives == [0.0] and not first["complete"]
    assert entries[0].stages[0]["kept"] and entries[1].stages[0]["kept"]  # warm-up
    dropped = [e for e in entries if not e.stages[0]["kept"]]
    assert dropped and len(dropped) < len(entries) - warmup  # the stage does prune, and keeps some
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fitness_items"]["generated"] == sum(e.scores["generated_items"] for e in entries)
    assert summary["fitness_items"]["generated"] == sum(e.stages[-1]["items"] for e in entries)
    assert summary["racing"]["likelihood_dropped"] == len(dropped)
    assert summary["racing"]["likelihood_items"] == 4 * len(entries)
    assert summary["best"]["index"] not in {e.index for e in dropped}
    # killed after 5 evaluations: the resumed run makes the same likelihood and generated decisions
    lines = (out / "journal.jsonl").read_text().splitlines(keepends=True)
    (out / "journal.jsonl").write_text("".join(lines[:5]))
    assert cli_main(["evolve", str(path), "--out", str(out), "--quiet", "--no-model"]) == 0

    def timeless(text_lines):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in text_lines]

    assert timeless((out / "journal.jsonl").read_text().splitlines()) == timeless(lines)


def test_pareto_blocks_are_generated_from_the_results_json():
    from pathlib import Path

    from vlmmerge.search.front_report import pareto_markdown

    root = Path(__file__).resolve().parents[1]
    results = json.loads((root / "docs" / "results" / "pareto.json").read_text(encoding="utf-8"))
    body = pareto_markdown(results)
    assert body in (root / "README.md").read_text(encoding="utf-8")
    row = results["racing_likelihood"]
    assert f"| likelihood first stage + racing | {row['test']['value']:.1f}" in body
    assert f"| racing | {results['racing']['test']['value']:.1f}" in body  # the earlier rows stay
    assert row["generated_items"] / row["full_split_items"] == pytest.approx(row["ratio"])
