"""Plots shown in the UI: the PCA scree plot, the classifier's confusion of its worst classes."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np


def preload() -> None:
    """Import matplotlib now (half a second), e.g. in a thread while Spark works, rather than
    when the first plot is due."""
    _pyplot()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_to_png(fig) -> bytes:  # a matplotlib Figure
    """The figure as PNG bytes, trimmed to its content so no label is cut; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0.1)
    _pyplot().close(fig)
    return buffer.getvalue()


def scree_png(explained_variance: Sequence[float], target: float, k: int) -> bytes:
    """Cumulative explained variance against k, with the target and the chosen k marked."""
    plt = _pyplot()
    cumulative = np.cumsum(np.asarray(explained_variance, dtype=np.float64))
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(np.arange(1, len(cumulative) + 1), cumulative, lw=1.5, label="cumulative variance")
    ax.axhline(target, color="tab:red", ls="--", lw=1, label=f"target {target:.0%}")
    ax.axvline(k, color="tab:green", ls=":", lw=1, label=f"k = {k}")
    ax.set_xlabel("number of components k")
    ax.set_ylabel("explained variance")
    # Zoomed on where the curve meets the target, so a 99 % line does not sit on the frame.
    low = min(float(cumulative[0]), target - 0.1)
    ax.set_ylim(max(0.0, low - 0.02), 1.0 + (1.0 - low) * 0.05)
    ax.legend(loc="lower right")
    return figure_to_png(fig)


def confusion_png(
    predicted: np.ndarray, truth: np.ndarray, labels: list[str], classes: list[int]
) -> bytes:
    """The confusion sub-matrix of the given (worst) classes and what they were mistaken for;
    when no test image was confused, a short figure that says so."""
    plt = _pyplot()
    confused = [c for c in classes if np.any((truth == c) & (predicted != c))]
    if not confused:
        fig, ax = plt.subplots(figsize=(4.5, 1.2), dpi=100)
        ax.axis("off")
        ax.text(
            0.5, 0.5, f"no confusion: all {len(truth)} test images\nclassified correctly",
            ha="center", va="center", fontsize=10,
        )  # fmt: skip
        return figure_to_png(fig)
    shown = sorted(set(confused) | set(predicted[np.isin(truth, confused)].tolist()))
    index = {c: i for i, c in enumerate(shown)}
    matrix = np.zeros((len(confused), len(shown)), dtype=int)
    for t, p in zip(truth, predicted, strict=True):
        if t in confused:
            matrix[confused.index(t), index[p]] += 1
    fig, ax = plt.subplots(figsize=(2 + 0.45 * len(shown), 1.5 + 0.4 * len(confused)), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(
        range(len(shown)), [labels[c] for c in shown], rotation=60, ha="right", fontsize=7
    )
    ax.set_yticks(range(len(confused)), [labels[c] for c in confused], fontsize=7)
    for (i, j), n in np.ndenumerate(matrix):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true class (worst first)")
    return figure_to_png(fig)
