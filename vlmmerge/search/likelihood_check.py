"""How well the likelihood objective ranks a run's candidates like its generated metric does:
re-materialise journaled candidates of a run folder and score the mean log-probability of the
fitness split's references (`vlmmerge.evaluation.likelihood`), then Spearman's rho against the
journaled fitness.

    python -m vlmmerge.search.likelihood_check RUN [--candidates 24] [--task ja_caption]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np


def journal_likelihood_correlation(folder: Path, candidates: int = 24, task: str | None = None,
                                   optimizer: str | None = None) -> dict[str, Any]:
    from vlmmerge.evaluation.likelihood import LikelihoodScorer, rank_correlation
    from vlmmerge.recipe import load_recipe
    from vlmmerge.search.evolve import EvolveRun, resolve_refs, split_evolve
    from vlmmerge.search.journal import Journal

    folder = Path(folder)
    template, config = split_evolve(resolve_refs(load_recipe(folder / "evolve-recipe.yaml")))
    run = EvolveRun(template, config, folder, progress=False)
    journal = Journal(folder / "journal.jsonl")
    name = optimizer or config.search.optimizer
    entries = [e for e in journal.of(name) if not e.failed]
    # evenly spaced over the run (early, poor candidates and late, good ones)
    picked = [entries[i] for i in np.unique(np.linspace(0, len(entries) - 1, min(candidates, len(entries))).astype(int))]
    evaluator = run.fitness_evaluator
    target = next(t for t in evaluator.tasks if task is None or t.name == task)
    scorer = LikelihoodScorer(target, evaluator.items)
    live = run.start_live()

    def likelihood_of(entry):
        model, processor = live.materialize(run.space.to_recipe(np.asarray(entry.genome)))
        return scorer(model, processor)

    result = rank_correlation(picked, likelihood_of)
    result.update({"run": str(folder), "task": target.name, "indices": [e.index for e in picked]})
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--candidates", type=int, default=24)
    parser.add_argument("--task")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result = journal_likelihood_correlation(args.run, args.candidates, args.task)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
