"""Acceptance of learned merges on the shipped miniature world: SuperMerge and AdaMerging against
CMA-ES (parameter space) and the untuned baselines, each at its own wall time, plus CMA-ES given
SuperMerge's wall time (an `evolve --budget` matching it). Test split, bootstrap intervals, paired
differences (SuperMerge minus each other model).

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/tune_acceptance.py [--cases vlm llm three] [--render-only]

Writes docs/results/tune.json and the `tune-results` blocks of README.md and docs/miniature-world.md.
Wall times: SuperMerge / AdaMerging = load + train + static recipe (`tune_seconds`); CMA-ES = the
search and its static recipe (`vlmmerge evolve` without the test report or best-model); same
machine, same thread count, one after the other.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "tune.json"
BLOCK = "tune-results"

CASES = {
    "vlm": {"title": "VLM + Japanese LM (Japanese captions)", "tune": "configs/demo-vlm-tune.yaml",
            "cma": "configs/demo-vlm.yaml"},
    "llm": {"title": "Japanese LM + math LM (Japanese math)", "tune": "configs/demo-llm-tune.yaml",
            "cma": "configs/demo-llm.yaml"},
    "three": {"title": "VLM + Japanese LM + math LM (Japanese captions and Japanese math)",
              "tune": "configs/demo-three-tune.yaml", "cma": "configs/demo-three-tune-cma.yaml"},
}
CMA, CMA_SAME, ADA = "CMA-ES PS", "CMA-ES PS (SuperMerge's wall time)", "AdaMerging"


def run_case(spec: dict, root: Path) -> dict:
    from vlmmerge.search import run_evolution
    from vlmmerge.tune import run_tune

    no_test = {"test": None}
    cma = run_evolution(ROOT / spec["cma"], root / "cma", progress=False, save_model=False,
                        overrides={**no_test, "compare_random": False})
    cma_evals = cma["evaluations"]["cma"]
    timing = run_tune(ROOT / spec["tune"], root / "supermerge-timing", progress=False, save_model=False, overrides=no_test)
    per_eval = cma["seconds"] / cma_evals
    budget = max(1, math.floor(timing["tune_seconds"] / per_eval))
    same = run_evolution(ROOT / spec["cma"], root / "cma-same-time", progress=False, save_model=False,
                         overrides={**no_test, "compare_random": False, "budget": budget})
    ada = run_tune(ROOT / spec["tune"], root / "adamerging", progress=False, save_model=False,
                   overrides={**no_test, "method": "adamerging"})
    compare = {CMA: str(root / "cma" / "best-recipe.yaml"), CMA_SAME: str(root / "cma-same-time" / "best-recipe.yaml"),
               ADA: str(root / "adamerging" / "best-recipe.yaml")}
    final = run_tune(ROOT / spec["tune"], root / "supermerge", progress=False, save_model=False,
                     overrides={"compare": compare})
    test = final["test"]
    seconds = {"evolved": final["tune_seconds"], CMA: cma["seconds"], CMA_SAME: same["seconds"], ADA: ada["tune_seconds"]}
    return {
        "title": spec["title"], "tune_recipe": spec["tune"], "cma_recipe": spec["cma"],
        "coefficients": final["space"]["coefficients"], "cma_dimension": cma["space"]["dimension"],
        "cma_evaluations": cma_evals, "cma_same_time_budget": budget,
        "supermerge_timing_run_seconds": timing["tune_seconds"],
        "seconds": seconds, "scores": test["scores"], "supermerge_vs": test["evolved_vs"],
        "final_loss": {"supermerge": final["final_loss"], "adamerging": ada["final_loss"]},
    }


def targets(case: dict) -> dict:
    out = {}
    for task, by_model in case["scores"].items():
        sm, cma = by_model["evolved"]["value"], by_model[CMA]["value"]
        diff = case["supermerge_vs"][task][CMA]
        out[task] = {"supermerge": sm, "cma": cma, "beats_or_matches": sm >= cma,
                     "not_significantly_worse": diff["ci"][1] >= 0}
    out["time_ratio"] = case["seconds"]["evolved"] / case["seconds"][CMA]
    out["quarter_time"] = out["time_ratio"] <= 0.25
    return out


def render(results: dict) -> str:
    lines = [f"Measured by `benchmarks/tune_acceptance.py` ({results['date']}, {results['threads']} torch thread, "
             "shipped miniature world, test split, 95% bootstrap intervals; Δ = SuperMerge minus the row's model, "
             "paired bootstrap). Wall time: training plus static recipe (SuperMerge, AdaMerging), search plus static "
             "recipe (CMA-ES), on the same machine. Raw numbers: docs/results/tune.json.", ""]
    for name, case in results["cases"].items():
        tasks = list(case["scores"])
        lines.append(f"**{case['title']}** — SuperMerge: {case['coefficients']} coefficients; CMA-ES: "
                     f"{case['cma_dimension']} genes, {case['cma_evaluations']} evaluations "
                     f"(same-time run: {case['cma_same_time_budget']}).")
        lines.append("")
        lines.append("| model | " + " | ".join(f"{t} | Δ {t}" for t in tasks) + " | wall time |")
        lines.append("|---|" + "---|---|" * len(tasks) + "---|")
        for model in case["scores"][tasks[0]]:
            label = "**SuperMerge**" if model == "evolved" else model
            cells = []
            for t in tasks:
                score = case["scores"][t][model]
                ci = score.get("ci")
                cells.append(f"{score['value']:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else ""))
                diff = case["supermerge_vs"][t].get(model)
                cells.append("" if diff is None else f"{diff['diff']:+.1f} [{diff['ci'][0]:+.1f}, {diff['ci'][1]:+.1f}]"
                             + (" *" if diff["significant"] else ""))
            seconds = case["seconds"].get(model)
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {'' if seconds is None else f'{seconds:.1f} s'} |")
        t = case["targets"]
        verdicts = "; ".join(f"{task}: SuperMerge {v['supermerge']:.1f} vs CMA-ES {v['cma']:.1f} "
                             f"({'matches or beats' if v['beats_or_matches'] else 'below'})"
                             for task, v in t.items() if isinstance(v, dict))
        lines += ["", f"Target (SuperMerge ≥ CMA-ES in ≤ 1/4 of its wall time): {verdicts}; time ratio "
                  f"{t['time_ratio']:.3f} ({'met' if t['quarter_time'] else 'missed'}). `*`: the paired interval excludes 0.", ""]
    return "\n".join(lines)


def write_docs(results: dict) -> None:
    from vlmmerge.docblocks import replace_marked_block

    body = render(results)
    replace_marked_block(ROOT / "README.md", BLOCK, body, append_if_missing=True)
    replace_marked_block(ROOT / "docs" / "miniature-world.md", BLOCK, body, append_if_missing=True)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--render-only", action="store_true", help="rewrite the doc blocks from docs/results/tune.json")
    parser.add_argument("--work", type=Path, help="keep the run folders here (default: a temporary folder)")
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"cases": {}}
    if not args.render_only:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        work = args.work or Path(tempfile.mkdtemp(prefix="tune-acceptance-"))
        for name in args.cases:
            started = time.perf_counter()
            case = run_case(CASES[name], work / name)
            case["targets"] = targets(case)
            case["case_seconds"] = time.perf_counter() - started
            results["cases"][name] = case
            results.update(date=time.strftime("%Y-%m-%d"), threads=torch.get_num_threads())
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
            print(json.dumps({name: case["targets"]}, ensure_ascii=False), flush=True)
    results["cases"] = {k: results["cases"][k] for k in CASES if k in results["cases"]}
    write_docs(results)


if __name__ == "__main__":
    main()
