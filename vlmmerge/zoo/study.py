"""Do the demo's conclusions survive reseeding? The two demo searches and the world table, per world.

`study_world(spec, out)` runs on one world (the shipped one, or a (seed, threads) rebuild):
`configs/demo-vlm.yaml` and `configs/demo-llm.yaml` through `vlmmerge evolve` and the world table
(`world_table.score_world`), and checks the README's claims for each case:

- the evolved merge beats every source and both untuned baselines on the case's test task, each
  paired bootstrap 95% interval of (evolved - other) lying above 0;
- CMA-ES reaches random search's final best fitness within half the budget;
- the search has plateaued: its best fitness is flat over the last quarter of the budget.

Evaluation runs with one torch thread (`EVAL_THREADS`) so a world gives the same numbers on every
machine. `run_study` runs several worlds as parallel worker processes and resumes: a world whose
`study.json` exists is not run again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmmerge.zoo.refs import WORLD_ENV, WorldSpec

CASES = ("vlm", "llm")
QUICK = {"budget": 24, "popsize": 6, "compare_random": True}  # `vlmmerge demo --quick`
EVAL_THREADS = 1
RESULT = "study.json"
REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def world_arg(spec: WorldSpec) -> str:
    if spec.folder is not None:
        return str(spec.folder)
    return "shipped" if spec.shipped else f"{spec.size}-s{spec.seed}-t{spec.threads}"


def _journal(path: Path, optimizer: str) -> list[float]:
    """Fitness of each journaled evaluation of `optimizer`, in index order."""
    from vlmmerge.search.journal import Journal

    return [entry.fitness for entry in Journal(path).of(optimizer)]


def best_so_far(values: Sequence[float]) -> list[float]:
    out, best = [], float("-inf")
    for v in values:
        best = max(best, v)
        out.append(best)
    return out


def plateau(values: Sequence[float], fraction: float = 0.25) -> bool:
    """True when the best-so-far fitness did not improve over the last `fraction` of the evaluations."""
    curve = best_so_far(values)
    if not curve:
        return False
    start = int(round(len(curve) * (1 - fraction))) - 1
    return curve[-1] <= curve[max(start, 0)]


def case_result(summary: dict[str, Any], journal: Path) -> dict[str, Any]:
    """The claims of one demo case, from `vlmmerge evolve`'s summary and journal."""
    test = summary["test"]
    task = next(iter(test["scores"]))
    scores = {name: {"value": round(s["value"], 2),
                     "ci": [round(c, 2) for c in s["ci"]] if s.get("ci") else None}
              for name, s in test["scores"][task].items()}
    versus = {name: {"diff": round(c["diff"], 2), "ci": [round(x, 2) for x in c["ci"]],
                     "significant": bool(c["significant"])}
              for name, c in test["evolved_vs"][task].items()}
    other_tasks = {t: {name: round(s["value"], 2) for name, s in by.items()}
                   for t, by in test["scores"].items() if t != task}
    cma = _journal(journal, "cma")
    random = _journal(journal, "random")
    reach = summary.get("cma_evaluations_to_reach_random_best")
    result = {
        "task": task, "metric": next(iter(test["scores"][task].values()))["metric"],
        "scores": scores, "evolved_vs": versus, "other_tasks": other_tasks,
        "best_fitness": round(summary["best"]["fitness"], 2),
        "random_best_fitness": round(max(random), 2) if random else None,
        "budget": len(cma), "cma_reach": reach,
        "cma_curve": [round(v, 2) for v in best_so_far(cma)],
        "random_curve": [round(v, 2) for v in best_so_far(random)],
        "claims": {
            "evolved_beats_all": all(v["significant"] for v in versus.values()),
            "cma_half_budget": reach is not None and reach <= len(random) / 2,
            "plateau": plateau(cma),
        },
    }
    result["claims_hold"] = all(result["claims"].values())
    return result


def study_world(spec: WorldSpec, out: Path, configs: Path = REPO_CONFIGS, overrides: dict | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Both demo cases and the world table on one world; writes `out/study.json` and returns it."""
    import torch

    from vlmmerge.search import run_evolution
    from vlmmerge.zoo.refs import world_paths
    from vlmmerge.zoo.world_table import score_world

    torch.set_num_threads(EVAL_THREADS)
    started = time.perf_counter()
    os.environ[WORLD_ENV] = world_arg(spec)
    paths = world_paths(spec, progress=progress)
    manifest = json.loads(paths.manifest.read_text(encoding="utf-8"))
    result: dict[str, Any] = {"world": world_arg(spec), "label": spec.label, "root": str(paths.root),
                              "build_seconds": manifest.get("total_seconds"), "cases": {}}
    for case in CASES:
        summary = run_evolution(configs / f"demo-{case}.yaml", out / case, progress=progress, overrides=overrides)
        result["cases"][case] = case_result(summary, out / case / "journal.jsonl")
        result["cases"][case]["seconds"] = round(summary["seconds"], 1)
    rows = [r.to_json() for r in score_world(paths)]
    result["world_table"] = rows
    result["headroom"] = {h: max(r["headroom"][h] for r in rows) for h in rows[0]["headroom"]}
    result["seconds"] = round(time.perf_counter() - started, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return result


DATAFLOW_KINDS = ("dfs", "psdfs")  # configs/demo-{case}-{kind}.yaml: DFS alone, PS+DFS (vlmmerge.dataflow)
DATAFLOW_RESULT = "dataflow.json"


def dataflow_result(summary: dict[str, Any], journal: Path) -> dict[str, Any]:
    """One DFS or PS+DFS run's claims: above every source, and (the target) above PS, paired 95% intervals."""
    result = case_result(summary, journal)
    versus = result["evolved_vs"]
    ps = versus.get("PS")
    result["claims"] = {
        "beats_every_source": all(v["significant"] for n, v in versus.items() if n.startswith("source: ")),
        "above_ps": bool(ps and ps["significant"]),
    }
    result["claims_hold"] = all(result["claims"].values())
    result.update(path=summary["path"], path_text=summary["path_text"],
                  exported_fitness=round(summary["exported_fitness"], 2), space=summary["space"]["variant"])
    return result


def study_dataflow(spec: WorldSpec, out: Path, configs: Path = REPO_CONFIGS, overrides: dict | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """The DFS and PS+DFS runs of both demo cases on one world; writes `out/dataflow.json` and returns it."""
    import torch

    from vlmmerge.search import run_evolution

    torch.set_num_threads(EVAL_THREADS)
    os.environ[WORLD_ENV] = world_arg(spec)
    result: dict[str, Any] = {"world": world_arg(spec), "label": spec.label, "cases": {}}
    for case in CASES:
        for kind in DATAFLOW_KINDS:
            folder = out / f"{case}-{kind}"
            summary = run_evolution(configs / f"demo-{case}-{kind}.yaml", folder, progress=progress, overrides=overrides)
            entry = dataflow_result(summary, folder / "journal.jsonl")
            entry["seconds"] = round(summary["seconds"], 1)
            result["cases"].setdefault(case, {})[kind] = entry
    out.mkdir(parents=True, exist_ok=True)
    (out / DATAFLOW_RESULT).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return result


def run_study(worlds: Sequence[WorldSpec], out: Path, jobs: int = 2, configs: Path = REPO_CONFIGS,
              quick: bool = False) -> list[dict[str, Any]]:
    """Each world in its own worker process (`jobs` at a time); worlds already studied are reused."""
    pending = [w for w in worlds if not (out / world_arg(w) / RESULT).is_file()]
    running: list[tuple[WorldSpec, subprocess.Popen]] = []
    out.mkdir(parents=True, exist_ok=True)
    while pending or running:
        while pending and len(running) < jobs:
            spec = pending.pop(0)
            folder = out / world_arg(spec)
            folder.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "vlmmerge.zoo.study", world_arg(spec), str(folder), str(configs)]
            if quick:
                cmd.append("--quick")
            log = open(folder / "worker.log", "w", encoding="utf-8")
            print(f"[study] {spec.label}: started (log {folder / 'worker.log'})", file=sys.stderr, flush=True)
            running.append((spec, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
        time.sleep(2)
        for item in list(running):
            spec, proc = item
            if proc.poll() is not None:
                running.remove(item)
                status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
                print(f"[study] {spec.label}: {status}", file=sys.stderr, flush=True)
    return [json.loads((out / world_arg(w) / RESULT).read_text(encoding="utf-8"))
            for w in worlds if (out / world_arg(w) / RESULT).is_file()]


def _main(argv: Sequence[str]) -> int:
    from vlmmerge.zoo.refs import parse_world

    world, out, configs, *rest = argv
    study_world(parse_world(world), Path(out), Path(configs), overrides=QUICK if "--quick" in rest else None,
                progress=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
