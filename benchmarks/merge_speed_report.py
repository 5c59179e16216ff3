"""Rendering the merge-speed benchmark: medians and ratios per method, the markdown table, and the
results block of docs/benchmarks.md."""

from __future__ import annotations

import statistics
from pathlib import Path

from merge_speed_runs import REPO, Benchmark

from vlmmerge.docblocks import markers, replace_marked_block

DOC = REPO / "docs" / "benchmarks.md"
RESULTS_BLOCK = "merge-speed:results"
RESULTS_START, RESULTS_END = markers(RESULTS_BLOCK)


def summarise(bench: Benchmark) -> list[dict]:
    """Median wall time and peak RSS per (method, tool), with ratios to mergekit and the floor."""
    def runs(tool, method):
        return [r for r in bench.runs if r.tool == tool and r.method == method]

    floor = runs("floor", "io")
    floor_wall = statistics.median(r.wall_s for r in floor) if floor else None
    rows = []
    for method in bench.methods:
        ours, theirs = runs("vlmmerge", method), runs("mergekit", method)
        row = {"method": method}
        for key, group in (("ours", ours), ("mergekit", theirs)):
            row[f"{key}_wall"] = statistics.median(r.wall_s for r in group) if group else None
            row[f"{key}_rss"] = statistics.median(r.peak_rss_mb for r in group) if group else None
            row[f"{key}_walls"] = [round(r.wall_s, 1) for r in group]
        row["floor_wall"] = floor_wall
        ratio = lambda a, b: (a / b) if (a is not None and b) else None  # noqa: E731
        row["wall_vs_mergekit"] = ratio(row["ours_wall"], row["mergekit_wall"])
        row["rss_vs_mergekit"] = ratio(row["ours_rss"], row["mergekit_rss"])
        row["wall_vs_floor"] = ratio(row["ours_wall"], floor_wall)
        rows.append(row)
    return rows


def markdown(bench: Benchmark) -> str:
    rows = summarise(bench)
    floor = [r for r in bench.runs if r.tool == "floor"]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    m = bench.machine
    loads = [r.load_before for r in bench.runs] + [r.load_after for r in bench.runs]
    lines = [
        f"Measured {bench.date} on {m['cores']} cores ({m['cpu']}), {m['ram_gib']} GiB RAM, {m['os']}; "
        f"python {m['python']}, torch {m['torch']}, mergekit {bench.versions['mergekit']}, "
        f"safetensors {bench.versions['safetensors']}.",
        "",
        f"Checkpoints: three Mistral-shaped bf16 models, {bench.parameters / 1e9:.2f}B parameters "
        f"({bench.checkpoint_gb} GB) each. {bench.repeats} repeat(s); medians shown, every run's wall "
        "time in brackets; each run starts after `os.sync()` and 3 s of rest. Load average (1 min) during the runs: "
        f"{min(loads):.1f} to {max(loads):.1f} on {m['cores']} cores (the benchmark's own processes included).",
        "",
        f"Command: `{bench.command}`",
        "",
        "| method | vlmmerge wall (s) | mergekit wall (s) | ours / mergekit | I/O floor (s) | ours / floor "
        "| vlmmerge peak RSS (MB) | mergekit peak RSS (MB) | ours / mergekit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {fmt(r['ours_wall'], '.1f')} {r['ours_walls']} | {fmt(r['mergekit_wall'], '.1f')} "
            f"{r['mergekit_walls']} | **{fmt(r['wall_vs_mergekit'], '.2f')}x** | {fmt(r['floor_wall'], '.1f')} | "
            f"{fmt(r['wall_vs_floor'], '.1f')}x | {fmt(r['ours_rss'], '.0f')} | {fmt(r['mergekit_rss'], '.0f')} | "
            f"**{fmt(r['rss_vs_mergekit'], '.2f')}x** |"
        )
    if "dare_ties_counter" in bench.methods:
        lines += ["", "dare_ties_counter: the dare_ties recipe with `mask_generator: counter` (vlmmerge's counter-hash "
                  "masks, `vlmmerge/methods/counter_masks.py`); mergekit runs its dare_ties recipe."]
    if bench.agreement:
        parts = []
        for method, agreement in bench.agreement.items():
            if agreement.get("same_names"):
                parts.append(
                    f"{method}: same {agreement['tensors']} tensors, largest difference "
                    f"{agreement['max_rel_diff']:.2g} and mean {agreement['mean_rel_diff']:.2g} of each tensor's largest magnitude"
                )
            else:
                parts.append(f"{method}: tensor names differ {agreement}")
        lines += ["", "Outputs, vlmmerge against mergekit (first repeat): " + "; ".join(parts) + "."]
    if floor:
        inner = [r.inner_s for r in floor if r.inner_s is not None]
        lines += [
            "",
            f"I/O floor process: wall {statistics.median(r.wall_s for r in floor):.1f} s "
            f"(of which reading and writing: {statistics.median(inner):.1f} s, the rest is starting Python and "
            f"importing torch), peak RSS {statistics.median(r.peak_rss_mb for r in floor):.0f} MB.",
        ]
    return "\n".join(lines) + "\n"


def write_doc(text: str, doc: Path = DOC) -> None:
    """Replace the results block of docs/benchmarks.md (between the merge-speed results markers)."""
    replace_marked_block(doc, RESULTS_BLOCK, text)

