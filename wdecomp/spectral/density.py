"""Spectral density by stochastic Lanczos quadrature (SLQ).

The spectral density of a symmetric ``A`` ``(p, p)`` with eigenvalues ``lambda_i`` is
``phi(t) = (1/p) sum_i delta(t - lambda_i)``. For a unit start ``v``,
``v^T f(A) v = sum_i (v^T u_i)^2 f(lambda_i)``; ``m`` Lanczos steps from ``v`` give a
tridiagonal ``T_m = S diag(theta) S^T`` whose Gauss quadrature rule
``sum_j tau_j f(theta_j)``, ``tau_j = S_{1j}^2``, is exact for polynomials of degree
``2m - 1`` (Golub & Meurant 2010). Averaging over random ``v`` (``E[(v^T u_i)^2] = 1/p``)
gives the SLQ estimate (Ubaru, Chen & Saad 2017, "Fast estimation of tr(f(A)) via stochastic
Lanczos quadrature", SIAM J. Matrix Anal. Appl. 38(4); Ghorbani, Krishnan & Xiao 2019,
arXiv 1901.10159, for neural-network Hessians):

    phi_sigma(t) = (1 / n_v) sum_l sum_j tau_{lj} N(t; theta_{lj}, sigma^2).

Each start's density integrates to one (``sum_j tau_j = 1``) and has mean
``sum_j tau_j theta_j = v^T A v``, so the density's mean is a Hutchinson estimate of
``tr(A) / p``. Counting ``p sum_j tau_j [|theta_j| > t]`` estimates the number of
eigenvalues above ``t`` (Ubaru & Saad 2016, "Fast methods for estimating the numerical rank
of large matrices", ICML), used by :func:`wdecomp.spectral.rank` for large operators.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from wdecomp.progress import progress_bar
from wdecomp.spectral._probes import probes
from wdecomp.spectral._table import table, to_jsonable
from wdecomp.spectral.operator import as_operator

__all__ = ["SpectralDensity", "lanczos_quadrature", "plot_density", "slq_density"]


@dataclass(frozen=True, eq=False)
class SpectralDensity:
    """An SLQ spectral density and the quadrature rules behind it.

    Attributes:
        grid: ``(G,)`` evaluation points.
        density: ``(G,)`` mean density over starts.
        std_error: ``(G,)`` standard error of ``density`` across starts.
        per_start: ``(n_v, G)`` density of each start.
        nodes: ``(n_v, m)`` Gauss nodes (Ritz values) of each start.
        weights: ``(n_v, m)`` Gauss weights (each row sums to one; zero-padded where
            Lanczos stopped early on an invariant subspace).
        sigma: Gaussian broadening.
        p: Operator size.
        matvecs: Operator-vector products used.
    """

    grid: Tensor
    density: Tensor
    std_error: Tensor
    per_start: Tensor
    nodes: Tensor
    weights: Tensor
    sigma: float
    p: int
    matvecs: int

    def integral(self) -> float:
        """``int phi(t) dt`` on the grid (trapezoid); one when the grid covers the spectrum."""
        return float(torch.trapezoid(self.density, self.grid))

    def mean(self) -> float:
        """Mean of the (unbroadened) density, an estimate of ``tr(A) / p``."""
        return float((self.weights * self.nodes).sum(1).mean())

    def trace(self) -> tuple[float, float]:
        """``(estimate, std_error)`` of ``tr(A) = p * mean``."""
        per = self.p * (self.weights * self.nodes).sum(1)
        se = float(per.std() / math.sqrt(len(per))) if len(per) > 1 else math.inf
        return float(per.mean()), se

    def count_above(self, threshold: float) -> tuple[float, float]:
        """``(estimate, std_error)`` of the number of eigenvalues with ``|lambda| > threshold``."""
        per = self.p * (self.weights * (self.nodes.abs() > threshold)).sum(1)
        se = float(per.std() / math.sqrt(len(per))) if len(per) > 1 else math.inf
        return float(per.mean()), se

    def plot(self, path: str | Path | None = None, **kw: Any) -> Any:
        """See :func:`plot_density`."""
        return plot_density(self, path, **kw)

    def __str__(self) -> str:
        tr, se = self.trace()
        rows = [
            ("starts", self.nodes.shape[0]),
            ("Lanczos steps", self.nodes.shape[1]),
            ("sigma", self.sigma),
            ("range", f"[{float(self.nodes.min()):.4g}, {float(self.nodes.max()):.4g}]"),
            ("trace", f"{tr:.6g} +- {se:.2g}"),
            ("integral", self.integral()),
            ("matvecs", self.matvecs),
        ]
        return table(["quantity", "value"], rows, f"SLQ spectral density (p = {self.p})")

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(
            {
                "grid": self.grid,
                "density": self.density,
                "std_error": self.std_error,
                "nodes": self.nodes,
                "weights": self.weights,
                "sigma": self.sigma,
                "p": self.p,
                "matvecs": self.matvecs,
            }
        )


def lanczos_quadrature(
    op: Any, starts: Tensor, steps: int, progress: bool | None = None
) -> tuple[Tensor, Tensor]:
    """Gauss quadrature rules of ``A`` for each start column, by Lanczos run in parallel.

    All starts advance together, one batched product ``A @ [q_1, ..., q_n]`` per step; each
    column is fully reorthogonalised against its own basis (classical Gram-Schmidt twice), so
    this holds ``steps * n`` parameter-sized vectors (pass fewer starts to hold fewer).
    A column whose ``beta_j`` falls to round-off has found an invariant subspace: its rule is
    exact and stops there (later nodes get weight zero).

    Args:
        op: Operator.
        starts: ``(p, n)`` start vectors (normalised here).
        steps: Lanczos steps ``m`` (at most ``p``).

    Returns:
        ``nodes`` and ``weights``, each ``(n, m)`` float64 on the CPU.
    """
    A = as_operator(op)
    p, n = starts.shape
    steps = min(steps, p)
    eps = torch.finfo(A.dtype).eps
    basis = torch.zeros(steps, p, n, dtype=A.dtype, device=A.device)
    basis[0] = starts / starts.norm(dim=0)
    alpha = torch.zeros(n, steps, dtype=torch.float64)
    beta = torch.zeros(n, steps, dtype=torch.float64)
    length = torch.full((n,), steps, dtype=torch.long)
    alive = torch.ones(n, dtype=torch.bool)
    scale = torch.zeros(n, dtype=torch.float64)
    with progress_bar(total=steps, desc="slq", enabled=progress) as bar:
        for j in range(steps):
            W = A.matmat(basis[j])
            a = (basis[j] * W).sum(0)
            alpha[:, j] = a.double().cpu()
            for _ in range(2):
                c = torch.einsum("jpn,pn->jn", basis[: j + 1], W)
                W -= torch.einsum("jpn,jn->pn", basis[: j + 1], c)
            bnorm = W.norm(dim=0)
            bc = bnorm.double().cpu()
            scale = torch.maximum(scale, alpha[:, j].abs() + bc)
            dead = alive & (bc <= 100 * eps * scale.clamp_min(1e-300))
            length[dead] = j + 1
            alive &= ~dead
            beta[:, j] = torch.where(alive, bc, torch.zeros_like(bc))
            if j + 1 < steps:
                nxt = W / bnorm.clamp_min(1e-300)
                nxt[:, ~alive.to(W.device)] = 0
                basis[j + 1] = nxt
            bar.update(1)
            if not alive.any():
                break
    nodes = torch.zeros(n, steps, dtype=torch.float64)
    weights = torch.zeros(n, steps, dtype=torch.float64)
    for i in range(n):
        L = int(length[i])
        T = torch.diag(alpha[i, :L]) + torch.diag(beta[i, : L - 1], 1) + torch.diag(beta[i, : L - 1], -1)
        theta, S = torch.linalg.eigh(T)
        nodes[i, :L] = theta
        weights[i, :L] = S[0].pow(2)
        if L < steps:
            nodes[i, L:] = theta[-1]
    return nodes, weights


def slq_density(
    op: Any,
    *,
    steps: int = 80,
    num_starts: int = 10,
    sigma: float | None = None,
    grid: Tensor | int = 1000,
    parallel: int = 10,
    seed: int = 0,
    progress: bool | None = None,
) -> SpectralDensity:
    """Spectral density of ``op`` by stochastic Lanczos quadrature with Gaussian broadening.

    Args:
        op: Operator (see :func:`wdecomp.spectral.as_operator`).
        steps: Lanczos steps per start (quadrature degree).
        num_starts: Random Rademacher starts ``n_v``.
        sigma: Broadening; default ``(theta_max - theta_min) / 200``.
        grid: Evaluation points, or their number on
            ``[theta_min - 5 sigma, theta_max + 5 sigma]``.
        parallel: Starts run together (memory: ``steps * parallel`` vectors of size ``p``).
        seed: Seed of the starts.
        progress: tqdm bar (default: only on a TTY).

    Returns:
        A :class:`SpectralDensity`; ``num_starts * steps`` products.
    """
    A = as_operator(op)
    mv0 = A.matvecs
    p = A.shape[0]
    gen = torch.Generator().manual_seed(seed)
    all_nodes, all_weights = [], []
    for s in range(0, num_starts, parallel):
        n = min(parallel, num_starts - s)
        Z = probes(p, n, "rademacher", gen, A.dtype, A.device)
        nd, wt = lanczos_quadrature(A, Z, steps, progress)
        all_nodes.append(nd)
        all_weights.append(wt)
    nodes, weights = torch.cat(all_nodes), torch.cat(all_weights)
    lo, hi = float(nodes.min()), float(nodes.max())
    if sigma is None:
        sigma = max(hi - lo, abs(hi), 1e-300) / 200
    if isinstance(grid, int):
        grid = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, grid, dtype=torch.float64)
    else:
        grid = grid.to(dtype=torch.float64, device="cpu")
    z = (grid[None, None, :] - nodes[:, :, None]) / sigma
    per = (weights[:, :, None] * torch.exp(-0.5 * z * z)).sum(1) / (sigma * math.sqrt(2 * math.pi))
    dens = per.mean(0)
    se = per.std(0) / math.sqrt(per.shape[0]) if per.shape[0] > 1 else torch.full_like(dens, math.inf)
    return SpectralDensity(grid, dens, se, per, nodes, weights, float(sigma), p, A.matvecs - mv0)


def plot_density(
    density: SpectralDensity,
    path: str | Path | None = None,
    *,
    log_y: bool = False,
    log_x: bool = False,
    band: float = 2.0,
    ax: Any = None,
    title: str | None = None,
) -> Any:
    """Plot an SLQ density with a ``band``-standard-error band across starts.

    Args:
        density: From :func:`slq_density`.
        path: Write a PNG (or any format matplotlib knows) here.
        log_y: Logarithmic density axis (the bulk near zero and the outliers both show).
        log_x: Symmetric-log eigenvalue axis (eigenvalues can be negative).
        band: Width of the shaded band in standard errors (0 for none).
        ax: Draw into this axes instead of a new figure.
        title: Axes title.

    Returns:
        The matplotlib ``Figure`` (built without pyplot, so no GUI backend is needed).
    """
    from matplotlib.figure import Figure

    if ax is None:
        fig = Figure(figsize=(6, 4), dpi=100)
        ax = fig.subplots()
    else:
        fig = ax.figure
    x = density.grid.numpy()
    y = density.density.numpy()
    floor = max(float(y.max()) * 1e-12, 1e-300)
    if band > 0:
        lo = (density.density - band * density.std_error).clamp_min(floor if log_y else 0.0)
        hi = density.density + band * density.std_error
        ax.fill_between(x, lo.numpy(), hi.numpy(), alpha=0.3, linewidth=0, label=f"±{band:g} s.e.")
    ax.plot(x, y.clip(floor) if log_y else y, lw=1.2, label=f"SLQ ({density.nodes.shape[0]} starts)")
    if log_y:
        ax.set_yscale("log")
        ax.set_ylim(bottom=max(floor, float(y.max()) * 1e-10))
    if log_x:
        ax.set_xscale("symlog", linthresh=max(density.sigma, 1e-12))
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(title or f"Spectral density (p = {density.p}, sigma = {density.sigma:.2g})")
    ax.legend(loc="best", fontsize=8)
    if path is not None:
        fig.savefig(str(path))
    return fig
