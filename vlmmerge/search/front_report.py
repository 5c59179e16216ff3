"""Tables of multi-objective, raced and estimated runs, from their run folders (summary.json, test/):
the acceptance numbers in docs/results/pareto.json and the `pareto-results` blocks of README.md and
docs/miniature-world.md, and `demo_front_block` for `vlmmerge demo`.

    python -m vlmmerge.search.front_report --pareto runs/demo-vlm-pareto --full runs/demo-vlm-full \
        --racing runs/demo-vlm-racing --estimate runs/demo-vlm-estimate [--three runs/demo-three-pareto] --write
    # one more row into the existing results (the other rows as they are in the JSON):
    python -m vlmmerge.search.front_report --base docs/results/pareto.json --full runs/demo-vlm-full \
        --racing-likelihood runs/demo-vlm-racing-likelihood --write
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vlmmerge.docblocks import replace_marked_block

BLOCK = "pareto-results"


def _summary(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "summary.json").read_text(encoding="utf-8"))


def _ci(ci: Any) -> str:
    return f"[{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "-"


def front_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Front members then references, each with test values and intervals per objective."""
    rows = [{"name": f"front {m['member']:02d}", "kind": "front", "fitness": m["fitness"], "test": m.get("test", {})}
            for m in summary["front"]]
    for name, vector in summary.get("reference_test", {}).items():
        rows.append({"name": name, "kind": "reference", "fitness": None, "test": vector})
    return rows


def demo_front_block(summary: dict[str, Any], folder: str | None = None, pictures: tuple[str, str] | None = None) -> str:
    """Markdown for one multi-objective run: every front member and reference on every objective
    (test split, 95% intervals), which references the front dominates, and the picture's path."""
    names = summary["objectives"]
    head = "| model | " + " | ".join(f"{n} (test)" for n in names) + " | " + " | ".join(f"{n} (fitness)" for n in names) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(names))]
    for row in front_rows(summary):
        tests = [f"{row['test'][n]['value']:.1f} {_ci(row['test'][n]['ci'])}" if n in row["test"] else "-" for n in names]
        fits = [f"{row['fitness'][n]:.1f}" if row["fitness"] else "" for n in names]
        label = f"**{row['name']}**" if row["kind"] == "front" else row["name"]
        lines.append(f"| {label} | " + " | ".join(tests) + " | " + " | ".join(fits) + " |")
    dominated = summary.get("dominated_by_front", {})
    lines.append("")
    lines.append("Dominated by a front member (test means): " + ", ".join(
        f"{name} {'yes' if members else 'no'}" for name, members in dominated.items()) + ".")
    picture = Path(folder) / "front.png" if folder else summary.get("front_png")
    if pictures:
        lines.append(f"Front picture: [{pictures[0]}]({pictures[0]}); hypervolume per generation: "
                     f"[{pictures[1]}]({pictures[1]}).")
    elif picture:
        lines.append(f"Front picture: `{picture}`; hypervolume per generation: `{Path(str(picture)).with_name('hypervolume.png')}`.")
    return "\n".join(lines) + "\n"


def acceptance_a(pareto: dict[str, Any], full: dict[str, Any], ja: str = "ja_caption", en: str = "en_caption",
                 share: float = 0.8) -> dict[str, Any]:
    """Does the front dominate every reference, and hold a member with >= 80% of the VLM's English and
    >= 80% of the single-objective run's Japanese score (test means)?"""
    vlm_en = pareto["reference_test"]["source: vlm"][en]["value"]
    single_ja = full["test"]["scores"][ja]["evolved"]["value"]
    members = [m for m in pareto["front"]
               if m["test"][en]["value"] >= share * vlm_en and m["test"][ja]["value"] >= share * single_ja]
    return {"vlm_en": vlm_en, "single_objective_ja": single_ja, "needed": {en: share * vlm_en, ja: share * single_ja},
            "members_meeting_both": [m["member"] for m in members],
            "front_dominates_all": pareto["front_dominates_all"], "dominated_by_front": pareto["dominated_by_front"],
            "holds": bool(members) and pareto["front_dominates_all"]}


def cheaper_vs_full(folder: Path, full_folder: Path, task: str = "ja_caption", metric: str = "exact_match") -> dict:
    """A raced / estimated run against the full-fitness run: test score, paired difference with its
    interval (the same paired bootstrap as the test reports) and the generated-items ratio."""
    from vlmmerge.evaluation import EvalResult, paired_bootstrap_diff

    summary, full = _summary(folder), _summary(full_folder)
    mine = EvalResult.load(Path(folder) / "test" / "models" / "evolved").per_item(task, metric)
    theirs = EvalResult.load(Path(full_folder) / "test" / "models" / "evolved").per_item(task, metric)
    diff = paired_bootstrap_diff(mine, theirs, seed=0)
    items = summary["fitness_items"]
    return {"test": summary["test"]["scores"][task]["evolved"], "full_test": full["test"]["scores"][task]["evolved"],
            "diff": diff.mean_diff, "ci": [diff.lo, diff.hi], "same_or_better": diff.lo <= 0 <= diff.hi or diff.lo > 0,
            "generated_items": items["generated"], "full_split_items": items["full_split_equivalent"],
            "ratio": items["ratio"], "at_most_a_third": items["ratio"] <= 1 / 3 + 1e-12,
            "best_fitness": summary["best"]["fitness"], "dropped": summary.get("racing", {}).get("dropped"),
            **{k: summary["racing"][k] for k in ("likelihood_dropped", "likelihood_items", "settings")
               if k in summary.get("racing", {}) and "likelihood_dropped" in summary["racing"]}}


CHEAP = {"racing": "racing", "estimate": "estimate", "racing_likelihood": "likelihood first stage + racing"}


def add_row(results: dict[str, Any], name: str, folder: Path, full_folder: Path) -> dict[str, Any]:
    """`results` (e.g. docs/results/pareto.json loaded) with one cheaper-fitness row added or replaced."""
    return {**results, name: cheaper_vs_full(folder, full_folder)}


def pareto_markdown(results: dict[str, Any]) -> str:
    parts = []
    if "vlm" in results:
        a = results["vlm"]["acceptance"]
        parts += ["**(a) VLM, objectives ja_caption x en_caption (NSGA-II)**", "",
                  demo_front_block(results["vlm"]["summary"], results["vlm"].get("folder"), results["vlm"].get("pictures")),
                  f"Needed: en_caption >= {a['needed']['en_caption']:.1f} (80% of the VLM's {a['vlm_en']:.1f}) and "
                  f"ja_caption >= {a['needed']['ja_caption']:.1f} (80% of the single-objective run's "
                  f"{a['single_objective_ja']:.1f}); members meeting both: {a['members_meeting_both'] or 'none'}; "
                  f"front dominates every source and baseline: {'yes' if a['front_dominates_all'] else 'no'}.", ""]
    if "vlm_comocma" in results:
        summary = results["vlm_comocma"]["summary"]
        parts += ["**(a, COMO-CMA-ES) the same recipe with `optimizer: comocma`**", "",
                  demo_front_block(summary, results["vlm_comocma"].get("folder"), results["vlm_comocma"].get("pictures"))]
        if "acceptance" in results["vlm_comocma"]:
            a = results["vlm_comocma"]["acceptance"]
            parts += [f"Members meeting both 80% targets: {a['members_meeting_both'] or 'none'}.", ""]
    if "three" in results:
        parts += ["**(b) VLM + Japanese LM + math LM, objectives ja_caption x ja_math**", "",
                  demo_front_block(results["three"]["summary"], results["three"].get("folder"),
                                   results["three"].get("pictures")), ""]
    cheap = {k: results[k] for k in CHEAP if k in results}
    if cheap:
        parts += ["**(c) Cheaper fitness vs the full-fitness CMA-ES search (ja_caption, test split)**", "",
                  "| search | test | full-fitness test | paired diff [95% CI] | generated fitness items | ratio |",
                  "|---|---|---|---|---|---|"]
        for name, r in cheap.items():
            parts.append(f"| {CHEAP[name]} | {r['test']['value']:.1f} {_ci(r['test']['ci'])} | {r['full_test']['value']:.1f} | "
                         f"{r['diff']:+.1f} [{r['ci'][0]:+.1f}, {r['ci'][1]:+.1f}] | {r['generated_items']} / "
                         f"{r['full_split_items']} | {r['ratio']:.3f} |")
        if "racing_likelihood" in cheap:
            r = cheap["racing_likelihood"]
            setting = ", ".join(f"{k} {v}" for k, v in r["settings"]["likelihood"].items() if v is not None)
            parts.append(f"\nLikelihood first stage ({setting}): {r['likelihood_dropped']} candidates "
                         f"dropped before any generation; {r['likelihood_items']} likelihood forward passes (not "
                         "counted as generated items); no guarantee on this stage (vlmmerge/search/racing.py).")
        parts.append("")
    for key, title in (("estimation_error", "Subset-estimation error vs the full split on journaled candidates"),
                       ("likelihood", "Likelihood objective vs generated exact match (journal)")):
        if key in results:
            r = results[key]
            parts.append(f"{title}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in r.items() if not isinstance(v, list)) + ".")
    return "\n".join(parts).rstrip() + "\n"


def write_docs(results: dict[str, Any], root: Path) -> None:
    out = root / "docs" / "results" / "pareto.json"
    out.write_text(json.dumps(results, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    body = pareto_markdown(results) + "\n_Generated by `python -m vlmmerge.search.front_report` from docs/results/pareto.json._"
    replace_marked_block(root / "README.md", BLOCK, body, append_if_missing=True)
    # links relative to docs/ there
    replace_marked_block(root / "docs" / "miniature-world.md", BLOCK, body.replace("](docs/results/", "](results/"),
                         append_if_missing=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("pareto", "comocma", "full", "racing", "estimate", "three", "racing-likelihood"):
        parser.add_argument(f"--{name}", type=Path)
    parser.add_argument("--base", type=Path, help="start from this results JSON (its rows kept as they are)")
    parser.add_argument("--extra", type=Path, help="a JSON of measured extras (estimation_error, likelihood)")
    parser.add_argument("--write", action="store_true", help="write docs/results/pareto.json and the doc blocks")
    args = parser.parse_args(argv)
    results: dict[str, Any] = json.loads(args.base.read_text(encoding="utf-8")) if args.base else {}
    fresh = {"vlm": args.pareto, "vlm_comocma": args.comocma, "three": args.three}
    if args.pareto:
        summary = _summary(args.pareto)
        results["vlm"] = {"folder": str(args.pareto), "summary": summary}
        if args.full:
            results["vlm"]["acceptance"] = acceptance_a(summary, _summary(args.full))
    if args.comocma:
        summary = _summary(args.comocma)
        results["vlm_comocma"] = {"folder": str(args.comocma), "summary": summary}
        if args.full:
            results["vlm_comocma"]["acceptance"] = acceptance_a(summary, _summary(args.full))
    if args.three:
        results["three"] = {"folder": str(args.three), "summary": _summary(args.three)}
    for name in ("racing", "estimate", "racing_likelihood"):
        if getattr(args, name) and args.full:
            results = add_row(results, name, getattr(args, name), args.full)
    if args.write:  # the pictures go next to docs/results/pareto.json, linked from the blocks
        import shutil

        root = Path(__file__).resolve().parents[2]
        for case in ("vlm", "vlm_comocma", "three"):
            if fresh[case]:  # rows taken from --base keep their pictures
                names = []
                for picture in ("front", "hypervolume"):
                    target = root / "docs" / "results" / f"pareto-{case.replace('_', '-')}-{picture}.png"
                    shutil.copyfile(Path(results[case]["folder"]) / f"{picture}.png", target)
                    names.append(f"docs/results/{target.name}")
                results[case]["pictures"] = names
    if args.extra:
        results.update(json.loads(args.extra.read_text(encoding="utf-8")))
    print(pareto_markdown(results))
    if args.write:
        write_docs(results, Path(__file__).resolve().parents[2])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
