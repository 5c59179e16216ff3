"""The non-dominated set of a multi-objective run: `front.json`, `front/NN/recipe.yaml`, the front
picture (front members with the sources and untuned baselines on the same axes) and the
hypervolume per generation (pymoo's HV indicator, reference point 0 on every objective).

Pure: gets journal entries and already computed test scores; evaluates nothing.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlmmerge.search.files import atomic_write_bytes, atomic_write_text
from vlmmerge.search.journal import JournalEntry
from vlmmerge.search.racing import complete, dominates


def usable(entry: JournalEntry) -> bool:
    """Scored on the whole fitness split (not raced out), not failed, every objective finite."""
    return complete(entry) and entry.objectives is not None and all(math.isfinite(v) for v in entry.objectives)


def non_dominated(entries: Sequence[JournalEntry]) -> list[JournalEntry]:
    """The front: usable entries no other usable entry dominates; of equal vectors the first (by index)."""
    pool = [e for e in entries if usable(e)]
    front, seen = [], set()
    for entry in sorted(pool, key=lambda e: e.index):
        vector = tuple(entry.objectives)
        if vector in seen or any(dominates(other.objectives, entry.objectives) for other in pool):
            continue
        seen.add(vector)
        front.append(entry)
    return sorted(front, key=lambda e: tuple(-v for v in e.objectives))


def hypervolume(vectors: Sequence[Sequence[float]], reference: Sequence[float] | None = None) -> float:
    """Hypervolume (maximising) above `reference` (default: 0 on every objective), by pymoo."""
    from pymoo.indicators.hv import HV

    points = np.asarray([v for v in vectors], dtype=float)
    if points.size == 0:
        return 0.0
    ref = np.zeros(points.shape[1]) if reference is None else np.asarray(reference, dtype=float)
    points = points[(points > ref).all(axis=1)]
    if points.size == 0:
        return 0.0
    return float(HV(ref_point=-ref)(-points))


def hypervolume_curve(entries: Sequence[JournalEntry]) -> list[float]:
    """Hypervolume of the front of everything evaluated up to and including each generation."""
    curve, seen = [], []
    for generation in sorted({e.generation for e in entries}):
        seen.extend(e for e in entries if e.generation == generation)
        curve.append(hypervolume([e.objectives for e in non_dominated(seen)]))
    return curve


def write_front(front: Sequence[JournalEntry], names: Sequence[str], space: Any, out_dir: Path,
                test: Mapping[int, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """`front.json` and one static recipe per member (`front/NN/recipe.yaml`); returns the members."""
    members = []
    for number, entry in enumerate(front):
        folder = out_dir / "front" / f"{number:02d}"
        recipe = space.to_recipe(np.asarray(entry.genome))
        atomic_write_text(folder / "recipe.yaml", recipe.to_yaml())
        member = {"member": number, "index": entry.index, "generation": entry.generation,
                  "fitness": dict(zip(names, entry.objectives)), "params": entry.params,
                  "recipe": str(folder / "recipe.yaml"), "genome": entry.genome}
        if test and entry.index in test:
            member["test"] = test[entry.index]
        members.append(member)
    atomic_write_text(out_dir / "front.json", json.dumps({"objectives": list(names), "members": members},
                                                         indent=2, ensure_ascii=False) + "\n")
    return members


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, plt, out: Path) -> Path:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return atomic_write_bytes(out, buffer.getvalue())


def plot_front(points: Mapping[str, Mapping[str, Any]], names: Sequence[str], out: Path, title: str) -> Path:
    """Scatter of the first two objectives: `points` name -> {"values": {objective: v}, "ci": {objective:
    [lo, hi]} (optional), "kind": "front" | "source" | "baseline" | "single"}; members labelled by number."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6.4, 5.0), dpi=120)
    x_name, y_name = names[0], names[1] if len(names) > 1 else names[0]
    style = {"front": ("tab:blue", "o"), "source": ("tab:green", "s"), "baseline": ("tab:gray", "^"),
             "single": ("tab:red", "D")}
    labelled = []
    for label, point in points.items():
        colour, marker = style.get(point.get("kind", "front"), ("black", "x"))
        x, y = point["values"][x_name], point["values"][y_name]
        ci = point.get("ci") or {}
        xerr = [[x - ci[x_name][0]], [ci[x_name][1] - x]] if ci.get(x_name) else None
        yerr = [[y - ci[y_name][0]], [ci[y_name][1] - y]] if ci.get(y_name) else None
        ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt=marker, color=colour, ms=6, alpha=0.85, capsize=2, lw=0.8)
        if point.get("kind") == "front":  # members numbered as in front.json (test values may cross)
            ax.annotate(label.split()[-1], (x, y), textcoords="offset points", xytext=(3, -9), fontsize=6,
                        color="tab:blue")
        else:  # references at the same spot get their labels stacked, not overprinted
            stacked = sum(1 for px, py in labelled if abs(px - x) < 1.5 and abs(py - y) < 3)
            labelled.append((x, y))
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4 + 9 * stacked), fontsize=7)
    for kind, (colour, marker) in style.items():
        if any(p.get("kind") == kind for p in points.values()):
            ax.scatter([], [], color=colour, marker=marker, label=kind)
    ax.set_xlabel(x_name)
    ax.set_ylabel(y_name)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, plt, out)


def plot_hypervolume(curve: Sequence[float], out: Path, names: Sequence[str]) -> Path:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    ax.plot(range(len(curve)), curve, marker="o", ms=3, lw=1.5)
    ax.set_xlabel("generation")
    ax.set_ylabel("hypervolume (fitness split, reference 0)")
    ax.set_title(f"Front hypervolume per generation ({' x '.join(names)})")
    ax.grid(alpha=0.3)
    return _save(fig, plt, out)
