"""Plots of an SPD result (matplotlib, Agg, to files): importance heat map, piece norms, training curves."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from wdecomp.decomposition.api import SPDResult
from wdecomp.io import atomic_write

__all__ = ["plot_importance_matrix", "plot_norms", "plot_training"]


def _save(fig: Any, path: str | os.PathLike) -> Path:
    import matplotlib.pyplot as plt

    out = atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight",
                                                           format=Path(path).suffix.lstrip(".") or "png"))
    plt.close(fig)
    return out


def _order(M: np.ndarray) -> list[int]:
    """Columns matched to rows (maximum-weight assignment), then the rest by largest importance."""
    rows, cols = linear_sum_assignment(-M)
    first = [int(c) for _, c in sorted(zip(rows, cols))]
    rest = sorted(set(range(M.shape[1])) - set(first), key=lambda c: -M[:, c].max())
    return first + rest


def plot_importance_matrix(result: SPDResult, path: str | os.PathLike, layers: Sequence[str] | None = None,
                           value: float = 0.75, n_inputs: int | None = None) -> Path:
    """Heat map of the importances on one-hot inputs ``value * e_i`` (rows) per subcomponent (columns),
    one panel per layer, columns ordered by the Hungarian matching (SPD paper, Fig. 8)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(layers or result.layers)
    mats = result.one_hot_importances(n_inputs, value)
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers) + 1, 3.2), squeeze=False)
    for ax, name in zip(axes[0], layers):
        M = mats[name].detach().double().cpu().numpy()
        im = ax.imshow(M[:, _order(M)], vmin=0, vmax=1, cmap="Blues", aspect="auto")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("subcomponent (matched order)")
        ax.set_ylabel(f"one-hot input (x_i = {value})")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="causal importance g")
    return _save(fig, path)


def plot_norms(result: SPDResult, path: str | os.PathLike) -> Path:
    """Sorted norms ``||U_{:,c} V_{c,:}||_F`` per layer, with the 5%-of-largest line used for aliveness."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(result.layers), figsize=(3.2 * len(result.layers), 2.8), squeeze=False)
    for ax, name in zip(axes[0], result.layers):
        n = np.sort(result.norms(name).double().cpu().numpy())[::-1]
        ax.bar(np.arange(len(n)), n, color="tab:blue")
        ax.axhline(0.05 * n.max(), color="grey", ls="--", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("subcomponent (by norm)")
    axes[0][0].set_ylabel("||u v^T||_F")
    return _save(fig, path)


def plot_training(result: SPDResult, path: str | os.PathLike) -> Path:
    """Every loss term against the step (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in result.history.items():
        v = np.asarray(values, dtype=float)
        ax.plot(np.arange(len(v)), np.clip(v, 1e-12, None), label=name, lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss term")
    ax.legend(fontsize=7)
    return _save(fig, path)
