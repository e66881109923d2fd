"""Plots: a law's frontier with its uncertainty band and marked losses; a fit's report figure.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend change), so it
works headless and does not disturb a user's interactive session. matplotlib is imported inside
the plot functions, so importing :mod:`wdecomp.scaling` stays light.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from wdecomp.scaling.base import ScalingLaw
from wdecomp.scaling.fit import ScalingFit
from wdecomp.scaling.forms import ComputeLaw
from wdecomp.scaling.uncertainty import law_samples

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_fit", "plot_frontier"]


def _figure(size: tuple[float, float], ncols: int = 1) -> tuple[Figure, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols)


def plot_frontier(
    law: ScalingLaw | ScalingFit,
    points: Mapping[str, float] | None = None,
    *,
    band: bool = True,
    confidence: float = 0.95,
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
    compute range is shaded. With ``band`` and a law that has samples (a
    :class:`~wdecomp.scaling.ScalingFit`'s bootstrap, or Epoch's published standard errors), the
    pointwise ``confidence`` band of ``L*(C)`` over the samples is shaded around the curve.

    Args:
        law: any :class:`ScalingLaw`, or a :class:`~wdecomp.scaling.ScalingFit` (its law and band).
        points: label -> loss; each loss must be above the irreducible loss.
        band: shade the uncertainty band when samples exist.
        confidence: the band's pointwise coverage.
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
    samples = law_samples(law) if band else None
    if isinstance(law, ScalingFit):
        law = law.law
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

    fig, ax = _figure((6.4, 4.4))
    c = np.logspace(math.log10(lo), math.log10(hi), 400)
    unit = law.compute_unit if isinstance(law, ComputeLaw) else "FLOPs"
    ax.plot(c, law._optimal_loss(c), color="C0", lw=2, label=f"{law.name} frontier $L^*(C)$")
    drawn = [s for s in (samples.samples if samples is not None else ()) if s is not None]
    if drawn:
        curves = np.array([s._optimal_loss(c) for s in drawn])
        q = (100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2)
        lo_c, hi_c = np.nanpercentile(curves, q, axis=0)
        ax.fill_between(c, lo_c, hi_c, color="C0", alpha=0.2, lw=0,
                        label=f"{100 * confidence:g}% band ({len(drawn)} samples)")
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


def plot_fit(
    result: ScalingFit,
    *,
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
    dpi: int = 120,
) -> Figure:
    """A fit's report figure: the points against the fitted law, and the log-residuals.

    Left: each point's loss against its compute (``6 N D`` for a sweep), with the law's
    prediction at each point and, for the Chinchilla form, the compute-optimal frontier ``L*(C)``
    with its bootstrap band. Right: ``log L_fit - log L`` per point against compute, with the
    Huber threshold ``delta`` marked (points beyond it are treated as outliers). A degenerate
    fit's first diagnostic is printed in the title.

    Args:
        result: a :class:`~wdecomp.scaling.ScalingFit` (with its points).
        path: write a PNG here if given.
        title: figure title (default: the law's name and the fit's state).
        dpi: resolution of the PNG.

    Returns:
        The matplotlib ``Figure``.
    """
    pts = result.points
    law = result.law
    comp = 6.0 * pts[:, 0] * pts[:, 1] if pts.shape[1] == 3 else pts[:, 0]
    order = np.argsort(comp)
    fig, (ax, axr) = _figure((11.0, 4.4), ncols=2)
    ax.plot(comp, pts[:, -1], "o", color="C1", ms=5, label="points")
    pred = np.exp(result.residuals()) * pts[:, -1]
    ax.plot(comp[order], pred[order], "x", color="C0", ms=6, label="fitted law at each point")
    c = np.logspace(math.log10(comp.min()) - 0.5, math.log10(comp.max()) + 0.5, 200)
    ax.plot(c, law._optimal_loss(c), color="C0", lw=1.5, label="fitted frontier $L^*(C)$")
    drawn = [s for s in law_samples(result).samples if s is not None]
    if drawn:
        lo_c, hi_c = np.nanpercentile(np.array([s._optimal_loss(c) for s in drawn]), (2.5, 97.5), axis=0)
        ax.fill_between(c, lo_c, hi_c, color="C0", alpha=0.2, lw=0, label="95% bootstrap band")
    if law.irreducible_loss > 0:
        ax.axhline(law.irreducible_loss, color="0.5", ls="--", lw=1, label=f"E = {law.irreducible_loss:.4g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C (6ND)" if pts.shape[1] == 3 else "training compute C")
    ax.set_ylabel(f"loss ({law.loss_unit})")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    axr.axhline(0.0, color="0.3", lw=1)
    for s in (1, -1):
        axr.axhline(s * result.delta, color="0.5", ls=":", lw=1)
    axr.plot(comp, result.residuals(), "o", color="C1", ms=5)
    axr.set_xscale("log")
    axr.set_xlabel("training compute C")
    axr.set_ylabel("log L_fit - log L")
    axr.set_title(f"residuals (Huber delta = {result.delta:g} dotted)", fontsize=9)
    axr.grid(True, which="both", alpha=0.3)
    state = "DEGENERATE: " + result.diagnostics[0][:80] if result.degenerate else (
        "converged" if result.converged else "not at a stationary point")
    fig.suptitle(title if title is not None else f"{law.name}: {result.n_points} points, {state}", fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(os.fspath(path), dpi=dpi, format="png")
    return fig
