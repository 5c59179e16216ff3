"""The evolved path, drawn and in words: which layer of which model sits at each position, with its scale."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def hop_text(hop: Sequence) -> str:
    """`ja_lm[3] x0.9` for (name, layer, scale); `[L3 = 0.7 vlm + 0.3 ja_lm] x1.1` for a mixed hop
    (name, layer, scale, other name, alpha)."""
    name, layer, scale = hop[:3]
    if len(hop) == 5:
        text = f"[L{layer} = {1 - hop[4]:.3g} {name} + {hop[4]:.3g} {hop[3]}]"
    else:
        text = f"{name}[{layer}]"
    return text + ("" if scale == 1.0 else f" x{scale:.3g}")


def path_text(path: Sequence[Sequence], names: Sequence[str] | None = None) -> str:
    """`vlm[0] x1.2 -> ja_lm[3] x0.9 -> ...` for hops (name, layer, scale[, other name, alpha])."""
    return " -> ".join(hop_text(hop) for hop in path)


def draw_path(path: Sequence[Sequence], out: Path, title: str = "evolved data-flow path") -> Path:
    """One column per hop, one row per model: a box at (hop, model) labelled with the layer and the scale
    (a mixed hop: a box in each of its two rows, labelled with that model's share)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(n for hop in path for n in (hop[0], *hop[3:4])))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(path) + 1.5), 1.0 + 0.8 * len(names)), dpi=120)
    colours = plt.get_cmap("tab10")
    previous = None
    for hop, entry in enumerate(path):
        name, layer, scale = entry[:3]
        parts = [(name, 1.0)] if len(entry) != 5 else [(name, 1 - entry[4]), (entry[3], entry[4])]
        for part, share in parts:
            row = names.index(part)
            ax.add_patch(plt.Rectangle((hop - 0.4, row - 0.35), 0.8, 0.7, color=colours(row % 10),
                                       alpha=0.25 + 0.5 * share))
            label = f"L{layer}" if share == 1.0 else f"L{layer} {share:.2f}"
            ax.text(hop, row + 0.08, label, ha="center", va="center", fontsize=9 if share == 1.0 else 7, weight="bold")
            ax.text(hop, row - 0.18, f"x{scale:.2f}", ha="center", va="center", fontsize=7)
        row = names.index(max(parts, key=lambda p: p[1])[0])
        if previous is not None:
            ax.annotate("", xy=(hop - 0.4, row), xytext=(hop - 0.6, previous),
                        arrowprops={"arrowstyle": "->", "color": "0.4", "lw": 0.8})
        previous = row
    ax.set_xlim(-0.7, len(path) - 0.3)
    ax.set_ylim(-0.7, len(names) - 0.3)
    ax.set_yticks(range(len(names)), names)
    ax.set_xticks(range(len(path)), [str(i) for i in range(len(path))])
    mixed = any(len(entry) == 5 for entry in path)
    ax.set_xlabel("hop; box: layer (mixed: this model's share), input scale" if mixed
                  else "position on the path (hop); box: layer of that model, input scale")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return out
