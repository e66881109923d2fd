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
from scipy.stats import t as student
from torch import Tensor

from wdecomp.errors import ArgumentError, NonFiniteError
from wdecomp.linop import aslinop
from wdecomp.progress import progress_bar
from wdecomp.spectral._probes import probes
from wdecomp.spectral._table import table, to_jsonable

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
        tridiagonals: The Lanczos tridiagonals behind the rules (for the rigorous count
            bounds of :meth:`count_interval`); ``None`` for a density built by hand.
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
    tridiagonals: Tridiagonals | None = None

    def integral(self) -> float:
        """``int phi(t) dt`` on the grid (trapezoid); one when the grid covers the spectrum."""
        return float(torch.trapezoid(self.density, self.grid))

    def mean(self) -> float:
        """Mean of the (unbroadened) density, an estimate of ``tr(A) / p``."""
        return float((self.weights * self.nodes).sum(1).mean())

    def trace(self) -> tuple[float, float]:
        """``(estimate, std_error)`` of ``tr(A) = p * mean``: Hutchinson's estimator on the SLQ
        starts. Its standard error is only trustworthy when no few outliers dominate the
        trace; prefer :meth:`deflated_trace`."""
        per = self.p * (self.weights * self.nodes).sum(1)
        se = float(per.std() / math.sqrt(len(per))) if len(per) > 1 else math.inf
        return float(per.mean()), se

    def deflated_trace(self) -> tuple[float, float, int]:
        """``(estimate, std_error, k)`` of ``tr(A)`` with ``k`` converged outliers deflated.

        Plain SLQ gives Hutchinson's ``p v^T A v = p sum_j w_j theta_j`` per start, whose
        distribution is heavily skewed when a few outlying eigenvalues dominate the trace
        (``p (v^T u_1)^2 lambda_1`` is ``lambda_1`` times a chi-square-like variable): a handful
        of starts then underestimate the trace and its standard error together. The ``k``
        largest-magnitude Ritz values that have converged in *every* start (Ritz residual
        ``beta_L |S_{Lj}| <= sqrt(eps) ||A||``) are eigenvalues ``lambda_1..lambda_k``; each
        start's estimate is then
        ``p (sum_j w_j theta_j - sum_{j <= k} w_j theta_j) + sum_{i <= k} lambda_i``,
        unbiased (``E[p w_j] = 1`` for an isolated eigenvalue) with the outliers' variance
        removed — the deflation Hutch++ does with a sketch, done here with the rules at hand.
        """
        per, lam = self._deflated_trace_samples()
        se = float(per.std() / math.sqrt(len(per))) if len(per) > 1 else math.inf
        return float(per.mean()), se, len(lam)

    def _deflated_trace_samples(self) -> tuple[Tensor, Tensor]:
        plain = self.p * (self.weights * self.nodes).sum(1)
        tri = self.tridiagonals
        if tri is None or self.nodes.shape[0] < 2:
            return plain, torch.zeros(0, dtype=torch.float64)
        tops = []
        for i in range(self.nodes.shape[0]):
            L = int(tri.lengths[i])
            theta, S = torch.linalg.eigh(tri.matrix(i))
            resid = float(tri.beta[i, L - 1]) * S[-1].abs()
            order = theta.abs().argsort(descending=True)
            ok = resid[order] <= math.sqrt(tri.eps) * float(tri.scale[i].clamp_min(1e-300))
            k = int(ok.long().cumprod(0).sum())
            tops.append((theta[order][:k], S[0].pow(2)[order][:k]))
        k = min(len(t[0]) for t in tops)
        if k == 0:
            return plain, torch.zeros(0, dtype=torch.float64)
        lam = torch.stack([t[0][:k] for t in tops]).median(0).values
        part = torch.stack([(t[1][:k] * t[0][:k]).sum() for t in tops])
        return plain - self.p * part + lam.sum(), lam

    def count_above(self, threshold: float) -> tuple[float, float]:
        """``(estimate, std_error)`` of the number of eigenvalues with ``|lambda| > threshold``
        (Ubaru & Saad 2016's point estimate ``p mean_l sum_j w_lj [|theta_lj| > threshold]``)."""
        per = self.p * (self.weights * (self.nodes.abs() > threshold)).sum(1)
        se = float(per.std() / math.sqrt(len(per))) if len(per) > 1 else math.inf
        return float(per.mean()), se

    def count_bounds(self, threshold: float) -> tuple[Tensor, Tensor]:
        """Per-start rigorous bounds on ``p v^T 1{|A| > threshold} v`` (whose mean over starts
        estimates the count of eigenvalues with ``|lambda| > threshold``).

        For a start ``v`` with spectral measure ``mu_v`` (distribution function ``F``), the mass
        in the band ``[-t, t]`` is ``F(t) - F(-t - 0)``. Gauss-Radau rules with a node prescribed
        at ``t`` and at ``-t`` (:meth:`Tridiagonals.radau`) bound ``F`` there by the
        Chebyshev-Markov-Stieltjes inequalities, which hold for *every* measure with the moments
        Lanczos has seen, so the bounds are not estimates: they are what ``L`` steps can and
        cannot resolve. A start whose Krylov space is invariant has an exact rule (point).
        Valid in exact arithmetic; thresholds below ``sqrt(eps) ||A||`` are refused by
        :func:`wdecomp.spectral.rank` because round-off moves Ritz values by about
        ``L eps ||A||``.

        Returns:
            ``(low, high)``, each ``(n_v,)`` float64.
        """
        tri = self.tridiagonals
        if tri is None:
            raise ArgumentError("count_bounds needs the Lanczos tridiagonals (a density from slq_density)")
        t = float(threshold)
        lo = torch.empty(len(tri.lengths), dtype=torch.float64)
        hi = torch.empty_like(lo)
        for i in range(len(tri.lengths)):
            if bool(tri.exact[i]):
                theta, w = tri.gauss(i)
                lo[i] = hi[i] = float((w * (theta.abs() > t)).sum())
                continue
            f_lo, f_hi = _distribution_bounds(*tri.radau(i, t), t)
            g_lo, g_hi = _distribution_bounds(*tri.radau(i, -t), -t)
            # F(t) in [f_lo, f_hi]; F(-t - 0) in [g_lo, g_hi] (the Radau node at -t itself counts
            # as possibly below -t for the upper bound, as mass exactly at -t is inside the band).
            band_lo = min(max(f_lo - g_hi, 0.0), 1.0)
            band_hi = min(max(f_hi - g_lo, 0.0), 1.0)
            lo[i], hi[i] = 1.0 - band_hi, 1.0 - band_lo
        return self.p * lo, self.p * hi

    def count_interval(self, threshold: float, confidence: float = 0.95) -> tuple[float, float]:
        """A ``confidence`` interval for the number of eigenvalues with ``|lambda| > threshold``.

        The count is ``p E[v^T P v]`` over random starts ``v`` (``P`` the spectral projector
        above the threshold); each start's value lies in :meth:`count_bounds`' ``[l_v, h_v]``,
        so ``[mean(l) - t s_l / sqrt(n), mean(h) + t s_h / sqrt(n)]`` (``t`` the two-sided
        Student quantile with ``n - 1`` degrees of freedom) covers it with at least the stated
        confidence, clipped to ``[0, p]``. Its width shows both the sampling error and the
        quadrature's resolution at the threshold.
        """
        lo, hi = self.count_bounds(threshold)
        n = len(lo)
        if n < 2:
            return max(float(lo.min()), 0.0), min(float(hi.max()), float(self.p))
        q = float(student.ppf(0.5 + confidence / 2, n - 1))
        low = float(lo.mean() - q * lo.std() / math.sqrt(n))
        high = float(hi.mean() + q * hi.std() / math.sqrt(n))
        return max(low, 0.0), min(high, float(self.p))

    def plot(self, path: str | Path | None = None, **kw: Any) -> Any:
        """See :func:`plot_density`."""
        return plot_density(self, path, **kw)

    def __str__(self) -> str:
        tr, se, k = self.deflated_trace()
        rows = [
            ("starts", self.nodes.shape[0]),
            ("Lanczos steps", self.nodes.shape[1]),
            ("sigma", self.sigma),
            ("range", f"[{float(self.nodes.min()):.4g}, {float(self.nodes.max()):.4g}]"),
            ("trace", f"{tr:.6g} +- {se:.2g} ({k} converged outliers deflated)"),
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


@dataclass(frozen=True, eq=False)
class Tridiagonals:
    """The Lanczos tridiagonals ``T_m`` of several start vectors, run side by side.

    Attributes:
        alpha: ``(n, m)`` diagonals (float64, CPU).
        beta: ``(n, m)`` off-diagonals; ``beta[i, j]`` couples steps ``j`` and ``j + 1``, so
            ``beta[i, L_i - 1]`` is the residual norm ``beta_m`` past the last step (zero where
            the start found an invariant subspace).
        lengths: ``(n,)`` steps actually taken by each start (``L_i <= m``).
        exact: ``(n,)`` whether the start's Krylov space is invariant (``beta`` fell to round-off,
            or ``L_i = p``): its Gauss rule then *is* its spectral measure.
        scale: ``(n,)`` running estimate of ``||A||_2`` (largest ``|alpha| + beta`` seen).
        eps: Unit round-off of the operator's dtype.
    """

    alpha: Tensor
    beta: Tensor
    lengths: Tensor
    exact: Tensor
    scale: Tensor
    eps: float

    def matrix(self, i: int) -> Tensor:
        """``T_{L_i}`` of start ``i`` as a dense ``(L_i, L_i)`` float64 matrix."""
        L = int(self.lengths[i])
        b = self.beta[i, : L - 1]
        return torch.diag(self.alpha[i, :L]) + torch.diag(b, 1) + torch.diag(b, -1)

    def gauss(self, i: int) -> tuple[Tensor, Tensor]:
        """Gauss rule of start ``i``: nodes ``theta`` (ascending) and weights ``S_{1j}^2``."""
        theta, S = torch.linalg.eigh(self.matrix(i))
        return theta, S[0].pow(2)

    def radau(self, i: int, node: float) -> tuple[Tensor, Tensor]:
        """Gauss-Radau rule of start ``i`` with one node prescribed at ``node``.

        Extends ``T_L`` by one row and column (Golub 1973; Golub & Meurant 2010, sec. 6.2):
        ``alpha_{L+1} = node + delta_L`` with ``(T_L - node I) delta = beta_L^2 e_L``, so that
        ``node`` is an eigenvalue of the extended matrix. The rule matches the spectral
        measure's moments up to degree ``2L`` and, being a canonical representation through
        ``node``, bounds its distribution function there (Chebyshev-Markov-Stieltjes):
        ``sum_{theta_j < node} w_j <= F(node - 0) <= F(node) <= sum_{theta_j <= node} w_j``.
        """
        T = self.matrix(i)
        L = T.shape[0]
        bL = float(self.beta[i, L - 1])
        e = torch.zeros(L, dtype=torch.float64)
        e[-1] = bL * bL
        delta = torch.linalg.solve(T - node * torch.eye(L, dtype=torch.float64), e)
        ext = torch.zeros(L + 1, L + 1, dtype=torch.float64)
        ext[:L, :L] = T
        ext[L, L - 1] = ext[L - 1, L] = bL
        ext[L, L] = node + delta[-1]
        theta, S = torch.linalg.eigh(ext)
        return theta, S[0].pow(2)


def _distribution_bounds(theta: Tensor, weights: Tensor, node: float) -> tuple[float, float]:
    """``(sum_{theta_j < node} w_j, sum_{theta_j <= node} w_j)`` for a Radau rule through ``node``.

    The prescribed node is the computed eigenvalue nearest to ``node`` (round-off moves it by a
    few ulps, so comparing it with ``node`` would misplace its weight); it counts on the ``<=``
    side only.
    """
    j = int((theta - node).abs().argmin())
    others = torch.ones_like(weights, dtype=torch.bool)
    others[j] = False
    below = float(weights[others & (theta < node)].sum())
    return below, below + float(weights[j])


def lanczos_tridiagonals(op: Any, starts: Tensor, steps: int, progress: bool | None = None) -> Tridiagonals:
    """Run Lanczos from each start column in parallel and keep the tridiagonals.

    All starts advance together, one batched product ``A @ [q_1, ..., q_n]`` per step; each
    column is fully reorthogonalised against its own basis (classical Gram-Schmidt twice), so
    this holds ``steps * n`` parameter-sized vectors (pass fewer starts to hold fewer).
    A column whose ``beta_j`` falls to ``100 eps ||A||`` has found an invariant subspace and
    stops there.

    Args:
        op: Operator.
        starts: ``(p, n)`` start vectors (normalised here).
        steps: Lanczos steps ``m`` (at most ``p``).
        progress: tqdm bar (default: only on a TTY).
    """
    A = aslinop(op)
    p, n = starts.shape
    steps = min(steps, p)
    eps = torch.finfo(A.dtype).eps
    basis = torch.zeros(steps, p, n, dtype=A.dtype, device=A.device)
    basis[0] = starts / starts.norm(dim=0)
    alpha = torch.zeros(n, steps, dtype=torch.float64)
    beta = torch.zeros(n, steps, dtype=torch.float64)
    length = torch.full((n,), steps, dtype=torch.long)
    alive = torch.ones(n, dtype=torch.bool)
    exact = torch.zeros(n, dtype=torch.bool)
    scale = torch.zeros(n, dtype=torch.float64)
    with progress_bar(total=steps, desc="slq", enabled=progress) as bar:
        for j in range(steps):
            W = A.matmat(basis[j])
            a = (basis[j] * W).sum(0)
            alpha[:, j] = torch.where(alive, a.double().cpu(), torch.zeros(n, dtype=torch.float64))
            for _ in range(2):
                c = torch.einsum("jpn,pn->jn", basis[: j + 1], W)
                W -= torch.einsum("jpn,jn->pn", basis[: j + 1], c)
            bnorm = W.norm(dim=0)
            bc = bnorm.double().cpu()
            if not torch.isfinite(alpha[alive, j]).all() or not torch.isfinite(bc[alive]).all():
                raise NonFiniteError(
                    f"a product of the operator is NaN or infinite at Lanczos step {j + 1}: fix the operator "
                    "(its loss or weights) before estimating its spectrum"
                )
            scale = torch.maximum(scale, alpha[:, j].abs() + bc)
            dead = alive & (bc <= 100 * eps * scale.clamp_min(1e-300))
            length[dead] = j + 1
            exact |= dead
            alive &= ~dead
            beta[:, j] = torch.where(alive, bc, torch.zeros_like(bc))
            if j + 1 < steps:
                nxt = W / bnorm.clamp_min(1e-300)
                nxt[:, ~alive.to(W.device)] = 0
                basis[j + 1] = nxt
            bar.update(1)
            if not alive.any():
                break
    if steps == p:
        exact[:] = True
    return Tridiagonals(alpha, beta, length, exact, scale, float(eps))


def lanczos_quadrature(
    op: Any, starts: Tensor, steps: int, progress: bool | None = None
) -> tuple[Tensor, Tensor]:
    """Gauss quadrature rules of ``A`` for each start column (see :func:`lanczos_tridiagonals`).

    A start that found an invariant subspace after ``L < steps`` steps has an exact rule; its
    later nodes get weight zero.

    Args:
        op: Operator.
        starts: ``(p, n)`` start vectors (normalised here).
        steps: Lanczos steps ``m`` (at most ``p``).
        progress: tqdm bar (default: only on a TTY).

    Returns:
        ``nodes`` and ``weights``, each ``(n, m)`` float64 on the CPU.
    """
    return _gauss_rules(lanczos_tridiagonals(op, starts, steps, progress))


def _gauss_rules(tri: Tridiagonals) -> tuple[Tensor, Tensor]:
    n, steps = tri.alpha.shape
    nodes = torch.zeros(n, steps, dtype=torch.float64)
    weights = torch.zeros(n, steps, dtype=torch.float64)
    for i in range(n):
        L = int(tri.lengths[i])
        theta, w = tri.gauss(i)
        nodes[i, :L] = theta
        weights[i, :L] = w
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
        op: Operator (see :func:`wdecomp.linop.aslinop`).
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
    if steps < 1 or num_starts < 1 or parallel < 1:
        raise ArgumentError(
            f"slq_density needs steps >= 1, num_starts >= 1 and parallel >= 1 "
            f"(got steps={steps}, num_starts={num_starts}, parallel={parallel})"
        )
    if sigma is not None and not (math.isfinite(sigma) and sigma > 0):
        raise ArgumentError(f"sigma must be a positive finite broadening, got {sigma}")
    A = aslinop(op)
    mv0 = A.matvecs
    p = A.shape[0]
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for s in range(0, num_starts, parallel):
        n = min(parallel, num_starts - s)
        Z = probes(p, n, "rademacher", gen, A.dtype, A.device)
        parts.append(lanczos_tridiagonals(A, Z, steps, progress))
    tri = Tridiagonals(
        *(torch.cat([getattr(t, f) for t in parts]) for f in ("alpha", "beta", "lengths", "exact", "scale")),
        parts[0].eps,
    )
    nodes, weights = _gauss_rules(tri)
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
    return SpectralDensity(grid, dens, se, per, nodes, weights, float(sigma), p, A.matvecs - mv0, tri)


def plot_density(
    density: SpectralDensity,
    path: str | Path | None = None,
    *,
    log_y: bool = True,
    log_x: bool = False,
    band: float = 2.0,
    ax: Any = None,
    title: str | None = None,
) -> Any:
    """Plot an SLQ density with a ``band``-standard-error band across starts.

    Args:
        density: From :func:`slq_density`.
        path: Write a PNG (or any format matplotlib knows) here.
        log_y: Logarithmic density axis (default: the bulk near zero and the outliers both show;
            on a linear axis the bulk is one spike at zero).
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
