"""Pictures of a tune run: the loss curve and the learned coefficients as a heat map (pure writers)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from vlmmerge.search.files import atomic_write_bytes


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, plt, out: Path) -> Path:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return atomic_write_bytes(out, buffer.getvalue())


def plot_loss(entries: Sequence[dict], method: str, out: Path) -> Path:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot([e["step"] for e in entries], [e["loss"] for e in entries], color="tab:blue", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy of references" if method == "supermerge" else "prediction entropy")
    ax.set_title(f"Learned merge ({method}): training loss")
    ax.grid(alpha=0.3)
    return _save(fig, plt, out)


def plot_coefficients(values: Sequence[Sequence[float]], models: Sequence[str], groups: Sequence[str], out: Path) -> Path:
    """Heat map: one row per model, one column per coefficient group (layer, component, tensor)."""
    import numpy as np

    plt = _figure()
    data = np.asarray(values, dtype=float)
    width = min(16.0, 3.0 + 0.45 * data.shape[1])
    fig, ax = plt.subplots(figsize=(width, 1.6 + 0.6 * data.shape[0]), dpi=120)
    bound = max(1e-6, float(np.abs(data).max()))
    image = ax.imshow(data, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_yticks(range(len(models)), [Path(m).name for m in models])
    ax.set_xticks(range(len(groups)), list(groups), rotation=70, ha="right", fontsize=7)
    if data.size <= 120:
        for (i, j), v in np.ndenumerate(data):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(image, ax=ax, label="coefficient")
    ax.set_title("Learned coefficients (model x layer group)")
    return _save(fig, plt, out)
