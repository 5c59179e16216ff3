"""The evolved path, drawn and in words: which layer of which model sits at each position, with its scale."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def path_text(path: Sequence[Sequence], names: Sequence[str] | None = None) -> str:
    """`vlm[0] x1.2 -> ja_lm[3] x0.9 -> ...` for hops (name, layer, scale)."""
    return " -> ".join(f"{name}[{layer}]" + ("" if scale == 1.0 else f" x{scale:.3g}") for name, layer, scale in path)


def draw_path(path: Sequence[Sequence], out: Path, title: str = "evolved data-flow path") -> Path:
    """One column per hop, one row per model: a box at (hop, model) labelled with the layer and the scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(name for name, _, _ in path))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(path) + 1.5), 1.0 + 0.8 * len(names)), dpi=120)
    colours = plt.get_cmap("tab10")
    previous = None
    for hop, (name, layer, scale) in enumerate(path):
        row = names.index(name)
        ax.add_patch(plt.Rectangle((hop - 0.4, row - 0.35), 0.8, 0.7, color=colours(row % 10), alpha=0.75))
        ax.text(hop, row + 0.08, f"L{layer}", ha="center", va="center", fontsize=9, weight="bold")
        ax.text(hop, row - 0.18, f"x{scale:.2f}", ha="center", va="center", fontsize=7)
        if previous is not None:
            ax.annotate("", xy=(hop - 0.4, row), xytext=(hop - 0.6, previous),
                        arrowprops={"arrowstyle": "->", "color": "0.4", "lw": 0.8})
        previous = row
    ax.set_xlim(-0.7, len(path) - 0.3)
    ax.set_ylim(-0.7, len(names) - 0.3)
    ax.set_yticks(range(len(names)), names)
    ax.set_xticks(range(len(path)), [str(i) for i in range(len(path))])
    ax.set_xlabel("position on the path (hop); box: layer of that model, input scale")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return out
