"""`kill -9` of `vlmmerge evolve` at several points, then the same command: nothing lost, nothing
evaluated twice, and the same journal, best candidate and best model as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from core_helpers import load_tensors, make_world
from vlmmerge.evaluation import Evaluator, load_model_for_eval
from vlmmerge.evaluation.toy import write_toy_caption_set

CLI = "import sys; from vlmmerge.cli import main; sys.exit(main(sys.argv[1:]))"
GENERATION = {"max_new_tokens": 8, "num_beams": 1}


def _fitness_set(world, root: Path) -> Path:
    """The toy caption set with the VLM's own answers as references: a random tiny model scores 0
    on real captions, but candidates nearer the VLM reproduce more of its answers, so fitness varies."""
    folder = write_toy_caption_set(root / "own_answers", n_fitness=4)
    model, processor = load_model_for_eval(world["vlm"])
    for split in ("fitness", "test"):
        evaluator = Evaluator([str(folder)], split=split, batch_size=8, progress=False, compute_ci=False,
                              generation=GENERATION)
        answers = {s["id"]: s["prediction"] for s in evaluator.evaluate(model, processor).samples}
        path = folder / f"{split}.jsonl"
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        for row in rows:
            row["reference"] = answers[row["id"]] or "-"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    world = make_world(root, "llava")
    tasks = [{"task": str(_fitness_set(world, root)), "metric": "rougeL"}]
    recipe = {
        "merge_method": "task_arithmetic",
        "base_model": str(world["base"]),
        "models": [{"model": str(world["vlm"])}, {"model": str(world["ft_a"])}],
        "dtype": "float32",
        "seed": 3,
        "evolve": {
            "params": ["weight"], "granularity": "layer", "bounds": {"weight": [0.0, 2.0]}, "init": {"weight": 1.0},
            "sigma0": 0.3, "popsize": 4, "budget": 8, "compare_random": True, "baselines": [],
            "fitness": {"tasks": tasks, "batch_size": 8, "generation": GENERATION},
            "test": {"tasks": tasks, "batch_size": 8, "generation": GENERATION},
        },
    }
    path = root / "evolve.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _command(recipe_path: Path, out: Path) -> list[str]:
    return [sys.executable, "-c", CLI, "evolve", str(recipe_path), "--out", str(out), "--quiet"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VLMMERGE_FAULT_AT"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", **extra)
    return env


def _journal_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _run_and_kill_after(recipe_path: Path, out: Path, lines: int, timeout: float = 120) -> int:
    """Start the command, SIGKILL it once the journal holds `lines` complete lines; the count then."""
    process = subprocess.Popen(_command(recipe_path, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while _journal_lines(out / "journal.jsonl") < lines:
            if process.poll() is not None:
                raise AssertionError(f"evolve ended before {lines} journal lines: {process.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {lines} journal lines after {timeout} s")
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    return _journal_lines(out / "journal.jsonl")


def _run(recipe_path: Path, out: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(_command(recipe_path, out), env=_env(**env), capture_output=True, text=True, timeout=300)


def _journal(out: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (out / "journal.jsonl").read_text(encoding="utf-8").splitlines()]
    return [(r["optimizer"], r["index"], r["genome"], r["fitness"]) for r in rows]


def test_kill_minus_nine_at_several_points_then_resume(recipe_path, tmp_path):
    reference = tmp_path / "uninterrupted"
    done = _run(recipe_path, reference)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = _journal(reference)
    assert len(expected) == 16 and len({row[3] for row in expected}) > 1  # fitness varies

    out = tmp_path / "killed"
    seen = [_run_and_kill_after(recipe_path, out, k) for k in (2, 6, 11)]  # mid-cma, cma/random border, random
    assert seen == sorted(seen) and seen[-1] < 16
    crashed = _run(recipe_path, out, VLMMERGE_FAULT_AT="mid-shard")  # dies while writing best-model/
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    assert not (out / "best-model").exists()
    finished = _run(recipe_path, out)
    assert finished.returncode == 0, finished.stderr[-3000:]

    journal = _journal(out)
    assert journal == expected  # same genomes in the same order, same fitness: none lost, none repeated
    assert len({(row[0], row[1]) for row in journal}) == len(journal)
    summary, reference_summary = (json.loads((o / "summary.json").read_text()) for o in (out, reference))
    assert summary["best"] == reference_summary["best"]
    assert summary["test"]["scores"] == reference_summary["test"]["scores"]
    assert (out / "best-recipe.yaml").read_text() == (reference / "best-recipe.yaml").read_text()
    saved, again = load_tensors(out / "best-model"), load_tensors(reference / "best-model")
    assert saved.keys() == again.keys() and all(torch.equal(saved[n], again[n]) for n in saved)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left behind
