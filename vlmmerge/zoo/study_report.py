"""Tables of a reseeding study and of the shipped world's demo, rendered from recorded `study.json`s.

Pure functions of the recorded results: the README and docs/miniature-world.md sections are these
strings, so a test can check that the documents say what the recorded results say."""

from __future__ import annotations

from typing import Any

from vlmmerge.zoo.world_table import world_table_markdown

CASE_TITLES = {
    "vlm": "VLM case: Japanese captions, exact match",
    "llm": "LLM case: Japanese word problems, right answer written in Japanese",
}
SOURCE_LABELS = {"source: vlm": "source: VLM (English captions)",
                 "source: ja_lm": "source: Japanese LM",
                 "source: math_lm": "source: math LM (right, but in English)"}
CASE_SOURCE_LABELS = {("vlm", "source: ja_lm"): "source: Japanese LM (VLM's vision attached)"}


def _ci(score: dict[str, Any]) -> str:
    ci = score.get("ci")
    return f"{score['value']:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else f"{score['value']:.1f}"


def _diff(v: dict[str, Any]) -> str:
    return f"{v['diff']:+.1f} [{v['ci'][0]:+.1f}, {v['ci'][1]:+.1f}]"


def _yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def case_table(case: str, result: dict[str, Any]) -> str:
    """One demo case on one world: every compared model, its score and evolved minus it."""
    lines = [f"| {CASE_TITLES[case]} | score (test, 95% CI) | evolved minus it (paired 95% CI) |", "|---|---|---|"]
    for name, score in result["scores"].items():
        if name == "evolved":
            continue
        label = CASE_SOURCE_LABELS.get((case, name)) or SOURCE_LABELS.get(name, name)
        lines.append(f"| {label} | {_ci(score)} | {_diff(result['evolved_vs'][name])} |")
    lines.append(f"| **evolved** ({result['budget']} CMA-ES evaluations) | **{_ci(result['scores']['evolved'])}** | |")
    return "\n".join(lines)


def demo_summary_lines(result: dict[str, Any]) -> str:
    out = []
    for case, r in result["cases"].items():
        others = ", ".join(f"{t} {by['evolved']:.1f}" for t, by in r["other_tasks"].items())
        out.append(f"- {case.upper()} case: CMA-ES reached random search's final best fitness "
                   f"({r['random_best_fitness']:.1f}) after {r['cma_reach']} of {r['budget']} evaluations; best "
                   f"fitness flat over the last quarter of the budget: {'yes' if r['claims']['plateau'] else 'no'}; "
                   f"the evolved merge on the other test task: {others}.")
    return "\n".join(out)


def readme_demo_block(result: dict[str, Any]) -> str:
    """The README's 'Demo results' tables: the shipped world's recorded demo."""
    parts = [case_table(case, r) for case, r in result["cases"].items()]
    return "\n\n".join(parts) + "\n\n" + demo_summary_lines(result)


def readme_world_block(result: dict[str, Any]) -> str:
    return world_table_markdown(result["world_table"])


def _budget_curve(curve: list[float]) -> str:
    if not curve:
        return ""
    at = [curve[max(0, round(len(curve) * f) - 1)] for f in (0.5, 0.75, 1.0)]
    return " / ".join(f"{v:.0f}" for v in at)


def claim_counts(results: list[dict[str, Any]]) -> str:
    pairs = [(w["world"], case, r) for w in results for case, r in w["cases"].items()]
    names = {"evolved_beats_all": "evolved above every source and untuned baseline",
             "cma_half_budget": "CMA-ES reaches random search's best within half the budget",
             "plateau": "plateau over the last quarter"}
    lines = [f"- {label}: {sum(r['claims'][key] for _, _, r in pairs)} of {len(pairs)}"
             + "".join(f"; misses: {', '.join(f'{w} {c.upper()}' for w, c, r in pairs if not r['claims'][key])}"
                       for _ in [0] if any(not r['claims'][key] for _, _, r in pairs))
             for key, label in names.items()]
    return "\n".join(lines)


def study_table(results: list[dict[str, Any]]) -> str:
    """One row per world and case: sources, untuned baselines, evolved, the three claims."""
    lines = ["| world | case | sources | TIES (untuned) | DARE-TIES (untuned) | evolved | evolved minus best other | "
             "CMA-ES reached random's best | best fitness at 1/2, 3/4, all of the budget | plateau | claims hold |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        for case, r in result["cases"].items():
            sources = " / ".join(_ci(s) for n, s in r["scores"].items() if n.startswith("source:"))
            best_other = min(r["evolved_vs"].values(), key=lambda v: v["diff"])
            reach = f"{r['cma_reach']} of {r['budget']}" if r["cma_reach"] is not None else f"never ({r['budget']})"
            lines.append(
                f"| {result['world']} | {case.upper()} | {sources} | {_ci(r['scores']['TIES (untuned)'])} | "
                f"{_ci(r['scores']['DARE-TIES (untuned)'])} | **{_ci(r['scores']['evolved'])}** | {_diff(best_other)} | "
                f"{reach}{'' if r['claims']['cma_half_budget'] else ' **(over half)**'} | {_budget_curve(r['cma_curve'])} | "
                f"{_yes(r['claims']['plateau'])} | "
                f"{_yes(r['claims_hold'])} |")
    return "\n".join(lines)


def headroom_table(results: list[dict[str, Any]]) -> str:
    """Per world, the best any source or untuned merge reaches on the next steps' two cases."""
    names = list(results[0]["headroom"]) if results else []
    lines = ["| world | " + " | ".join(f"best source or untuned merge: {n}" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for r in results:
        cells = []
        for h in names:
            row = max(r["world_table"], key=lambda row: row["headroom"][h])
            cells.append(f"{row['headroom'][h]:.1f} ({row['name']})")
        lines.append(f"| {r['world']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def study_block(results: list[dict[str, Any]]) -> str:
    held = sum(r["claims_hold"] for w in results for r in w["cases"].values())
    total = sum(len(w["cases"]) for w in results)
    return (study_table(results) + f"\n\nAll claims hold in {held} of {total} (world, case) pairs:\n\n"
            + claim_counts(results) + "\n\n"
            "Headroom for the next steps (min of the two scores; no model should already do it):\n\n"
            + headroom_table(results))


DATAFLOW_TITLES = {"dfs": "DFS alone", "psdfs": "PS+DFS"}


def dataflow_block(result: dict[str, Any]) -> str:
    """README / docs table of the recorded DFS and PS+DFS runs: every compared model and the paired differences."""
    parts = []
    for case, kinds in result["cases"].items():
        first = next(iter(kinds.values()))
        names = [n for n in first["scores"] if n != "evolved"]
        lines = [f"| {CASE_TITLES[case]} | score (test, 95% CI) | DFS minus it | PS+DFS minus it |", "|---|---|---|---|"]
        for name in names:
            label = CASE_SOURCE_LABELS.get((case, name)) or SOURCE_LABELS.get(name, name)
            if name == "PS":
                label = "PS (the recorded demo's evolved merge)"
            cells = [_diff(kinds[k]["evolved_vs"][name]) if k in kinds else "" for k in DATAFLOW_TITLES]
            lines.append(f"| {label} | {_ci(first['scores'][name])} | " + " | ".join(cells) + " |")
        for kind, title in DATAFLOW_TITLES.items():
            if kind in kinds:
                r = kinds[kind]
                lines.append(f"| **{title}** ({r['budget']} CMA-ES evaluations, {len(r['path'])} hops) | "
                             f"**{_ci(r['scores']['evolved'])}** | | |")
        claims = "; ".join(f"{title}: above every source {_yes(kinds[k]['claims']['beats_every_source'])}, "
                           f"above PS {_yes(kinds[k]['claims']['above_ps'])}, path `{kinds[k]['path_text']}` "
                           f"(fitness {kinds[k]['best_fitness']:.1f}, exported checkpoint {kinds[k]['exported_fitness']:.1f})"
                           for k, title in DATAFLOW_TITLES.items() if k in kinds)
        parts.append("\n".join(lines) + f"\n\n{case.upper()} case. {claims}.")
    return "\n\n".join(parts)
