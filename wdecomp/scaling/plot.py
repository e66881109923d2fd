"""Log-log plot of a law's compute-optimal frontier with losses marked at their compute-equivalent.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend change), so it
works headless and does not disturb a user's interactive session.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from wdecomp.scaling.base import ScalingLaw
from wdecomp.scaling.forms import ComputeLaw

__all__ = ["plot_frontier"]


def plot_frontier(
    law: ScalingLaw,
    points: Mapping[str, float] | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
    compute_range: tuple[float, float] | None = None,
    title: str | None = None,
    dpi: int = 120,
) -> Figure:
    """Plot ``L*(C)`` of ``law`` on log axes and mark losses at their compute-equivalents.

    Each entry of ``points`` (label -> loss, e.g. ``{"original": 3.1, "ablated k=10": 3.4}``) is
    drawn at ``(C_eq(loss), loss)`` on the frontier with a dotted drop line to the compute axis,
    so the horizontal distance between two marks is the log of their compute-equivalent ratio.
    The irreducible loss ``E`` is drawn as a dashed line when positive, and the law's fitted
    compute range is shaded.

    Args:
        law: any :class:`ScalingLaw`.
        points: label -> loss; each loss must be above the irreducible loss.
        path: write a PNG here if given.
        compute_range: ``(C_lo, C_hi)`` of the frontier curve; by default it spans the marked
            points and the fitted range, padded by a decade on each side.
        title: figure title (default: the law's name).
        dpi: resolution of the PNG.

    Returns:
        The matplotlib ``Figure`` (Agg canvas attached).

    Raises:
        ScalingLawRangeError: a marked loss is at or below the irreducible loss.
    """
    points = dict(points or {})
    marks = {label: (float(law.compute_for_loss(loss)), float(loss)) for label, loss in points.items()}
    if compute_range is None:
        cs = [c for c, _ in marks.values() if math.isfinite(c) and c > 0]
        fr = law.fitted_range
        cs += [c for c in (fr.c_min, fr.c_max) if c is not None]
        if not cs:
            cs = [1e18, 1e24]
        compute_range = (min(cs) / 10.0, max(cs) * 10.0)
    lo, hi = compute_range
    if not (0 < lo < hi):
        raise ValueError(f"compute_range must satisfy 0 < lo < hi, got {compute_range}")

    fig = Figure(figsize=(6.4, 4.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    c = np.logspace(math.log10(lo), math.log10(hi), 400)
    unit = law.compute_unit if isinstance(law, ComputeLaw) else "FLOPs"
    ax.plot(c, law._optimal_loss(c), color="C0", lw=2, label=f"{law.name} frontier $L^*(C)$")
    if law.irreducible_loss > 0:
        ax.axhline(
            law.irreducible_loss, color="0.5", ls="--", lw=1, label=f"irreducible $E$ = {law.irreducible_loss:.4g}"
        )
    fr = law.fitted_range
    if fr.c_min is not None and fr.c_max is not None:
        ax.axvspan(fr.c_min, fr.c_max, color="C0", alpha=0.08, label="fitted compute range")
    for i, (label, (cx, lx)) in enumerate(marks.items()):
        color = f"C{(i + 1) % 10}"
        ax.plot([cx], [lx], "o", color=color, ms=7, label=f"{label}: L={lx:.4g}, C={cx:.3g}")
        ax.plot([cx, cx], [ax.get_ylim()[0], lx], ":", color=color, lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"training compute on the compute-optimal frontier ({unit})")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title if title is not None else f"Compute-equivalent on {law.name}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(os.fspath(path), dpi=dpi, format="png")
    return fig
