"""Chooses the number of PCA components and draws the scree plot."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np


def max_components(n_rows: int, n_features: int) -> int:
    """n rows span at most n-1 centred dimensions, and there are only n_features axes."""
    if n_rows < 2:
        raise ValueError(f"PCA needs at least 2 feature rows, got {n_rows}")
    return min(n_rows - 1, n_features)


def choose_k(explained_variance: Sequence[float], target: float) -> tuple[int, float]:
    """The smallest k whose cumulative explained variance reaches `target`, and that variance."""
    if not 0 < target <= 1:
        raise ValueError(f"Target explained variance must be in (0, 1], got {target}")
    cumulative = np.cumsum(np.asarray(explained_variance, dtype=np.float64))
    # Rounding can leave the full sum at 0.9999999; the last component always counts as reaching it.
    reached = np.nonzero(cumulative >= target - 1e-9)[0]
    k = int(reached[0]) + 1 if reached.size else len(cumulative)
    return k, float(min(cumulative[k - 1], 1.0))


def scree_png(explained_variance: Sequence[float], target: float, k: int) -> bytes:
    """Cumulative explained variance against k, with the target and the chosen k marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cumulative = np.cumsum(np.asarray(explained_variance, dtype=np.float64))
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(np.arange(1, len(cumulative) + 1), cumulative, lw=1.5, label="cumulative variance")
    ax.axhline(target, color="tab:red", ls="--", lw=1, label=f"target {target:.0%}")
    ax.axvline(k, color="tab:green", ls=":", lw=1, label=f"k = {k}")
    ax.set_xlabel("number of components k")
    ax.set_ylabel("explained variance")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
