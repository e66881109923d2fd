"""Fit a scaling law to one's own sweep: Chinchilla's approach 3, with bootstrap intervals and diagnostics.

Hoffmann et al. 2022 (arXiv 2203.15556, section 3.3 and Appendix D.2) fit
``L(N, D) = E + A/N**alpha + B/D**beta`` by minimising, over ``(a, b, e, alpha, beta)`` with
``A = exp(a), B = exp(b), E = exp(e)``::

    sum_i Huber_delta( LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i ),   delta = 1e-3

from a grid of initialisations, keeping the best. :func:`fit` minimises exactly that objective
(and the one-term version ``LSE(a - alpha log C_i, e) - log L_i`` for ``L(C) = E + A/C**alpha``).
Numerical choices that change how the minimum is found, not where it is:

* the log-features are centred internally (``a' = a - alpha * mean(log N)``), which removes the
  near-collinearity of ``a`` and ``alpha`` when ``log N`` is ~20;
* the minimiser is a Levenberg-Marquardt iteration on the Huber objective (curvature ``J^T W J``
  with the reweighted-least-squares weights ``W_i = min(1, delta/|r_i|)``, analytic Jacobian),
  instead of the paper's L-BFGS. Besiroglu et al. 2024 (arXiv 2404.10102, section 3) traced
  Hoffmann's under-converged fit to L-BFGS stopping early on a tiny loss. Measured on 20 points
  with 50 bootstrap refits (``benchmarks/bench_scaling_fit.py``): 83 solves, about 30 objective
  evaluations each, 0.7 s on a loaded 2-core machine.
* every parameter lives in log space (``e, a, b``), so a bootstrap resample that drives ``A`` to
  ``1e300`` gives ``inf`` in ``samples`` and a flagged result, never an ``OverflowError``.

``converged`` means *at a stationary point of the objective*: the decrease a Newton step would
still predict, ``g^T H^+ g / 2`` (gradient ``g``, reweighted curvature ``H``), is below
``1e-8 (1 + F)`` (``F`` the objective in units of ``delta**2``; a scale-free test, unlike a raw
gradient norm in a flat valley), and a restart from the solution lowers ``F`` by less than
``1e-8 (1 + F)``. It is not the optimiser's own flag. ``grad_norm`` is reported beside it.

Diagnostics (:attr:`ScalingFit.diagnostics`): the fit is flagged as degenerate when ``E`` sits at
its bound 0, when the Jacobian at the optimum is numerically rank-deficient (the sweep's shape
cannot separate the parameters: e.g. too few distinct sizes), or when a bootstrap interval spans
more than two orders of magnitude. A flagged fit carries a suggested constrained form
(:attr:`ScalingFit.suggestion`, keyword arguments for :func:`fit`): ``fix_E`` (the irreducible
loss held at a value) and the residual bootstrap (keeps a designed grid's shape in every
resample); when ``E`` is already fixed, the text suggests the compute-only form.

Bootstrap intervals: ``bootstrap="cases"`` resamples the points with replacement (as Hoffmann and
Besiroglu et al. did); ``"residuals"`` keeps every point's (N, D) and resamples the full fit's
log-residuals, which suits a small designed grid (3 sizes x 3 token counts), whose case resamples
often lack a size altogether. Each refit starts from the full-data optimum.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wdecomp.errors import DataError
from wdecomp.scaling.base import FittedRange, ScalingLaw, law_from_dict
from wdecomp.scaling.forms import ChinchillaLaw, ComputeLaw

__all__ = ["ScalingFit", "default_grid", "fit", "huber"]

_HOFFMANN_EXPONENTS = (0.0, 0.5, 1.0, 1.5, 2.0)
_HOFFMANN_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
_HOFFMANN_LOGA = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
_COMPUTE_EXPONENTS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)

#: E below this fraction of the smallest fitted loss counts as "at its bound 0".
E_AT_BOUND = 1e-3
#: A bootstrap interval of a scale parameter (E, A, B) wider than this ratio is flagged.
MAX_INTERVAL_RATIO = 100.0
#: Smallest singular value / largest of the column-normalised Jacobian below this: non-identifiable.
MIN_SINGULAR_RATIO = 1e-6


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Huber loss: ``r**2/2`` for ``|r| <= delta``, else ``delta (|r| - delta/2)``."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def default_grid(form: str) -> np.ndarray:
    """Initialisations in the paper's parameterisation.

    Args:
        form: ``"chinchilla"``: Hoffmann et al.'s grid, columns ``(e, a, alpha, b, beta)`` with
            alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}
            (4500 points); ``"compute"``: columns ``(e, a, alpha)``, alpha in {0, 0.05, 0.1, 0.2,
            0.5, 1, 2} (compute exponents are small), same e and a.

    Returns:
        ``(n_grid, n_params)`` array.
    """
    if form == "chinchilla":
        rows = itertools.product(_HOFFMANN_E, _HOFFMANN_LOGA, _HOFFMANN_EXPONENTS, _HOFFMANN_LOGA, _HOFFMANN_EXPONENTS)
    elif form == "compute":
        rows = itertools.product(_HOFFMANN_E, _HOFFMANN_LOGA, _COMPUTE_EXPONENTS)
    else:
        raise ValueError(f"form must be 'chinchilla' or 'compute', got {form!r}")
    return np.array(list(rows), dtype=np.float64)


# --------------------------------------------------------------------------------------------
# objective in centred coordinates: theta = (e, a'_1, alpha_1, [a'_2, alpha_2]),
# prediction log L = LSE(e, a'_j - alpha_j x_j), x_j = log X_j - mean_j. With E fixed, e is a
# constant (-inf for E = 0: the term drops out) and the free vector omits it.


def _predict(theta: np.ndarray, xc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log-loss predictions and the softmax weights of the LSE terms.

    Args:
        theta: ``(G, 1 + 2k)`` full parameter batch (``e`` may be ``-inf``).
        xc: ``(n, k)`` centred log-features.

    Returns:
        ``pred (G, n)`` and ``w (G, n, k + 1)`` (column 0: the ``e`` term).
    """
    g = theta.shape[0]
    k = xc.shape[1]
    terms = np.empty((g, xc.shape[0], k + 1))
    terms[:, :, 0] = theta[:, 0:1]
    for j in range(k):
        terms[:, :, j + 1] = theta[:, 1 + 2 * j, None] - theta[:, 2 + 2 * j, None] * xc[None, :, j]
    top = terms.max(axis=2, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore"):
        ex = np.exp(terms - top)
    tot = ex.sum(axis=2)
    pred = top[:, :, 0] + np.log(tot)
    return pred, ex / tot[:, :, None]


def _decrement(h: np.ndarray, g: np.ndarray) -> float:
    """``g^T H^+ g / 2``: the decrease a Newton step predicts (pseudo-inverse for a singular ``H``)."""
    ridge = 1e-13 * max(float(np.trace(h)), 1e-300)
    try:
        return float(g @ np.linalg.solve(h + ridge * np.eye(len(g)), g)) / 2.0
    except np.linalg.LinAlgError:
        return math.inf


class _Problem:
    """The Huber objective on one set of points, with ``e`` free or fixed."""

    def __init__(self, xc: np.ndarray, y: np.ndarray, delta: float, fixed_e: float | None) -> None:
        self.xc, self.y, self.delta, self.fixed_e = xc, y, delta, fixed_e
        self.k = xc.shape[1]

    def full(self, free: np.ndarray) -> np.ndarray:
        """``(G, 1 + 2k)`` full parameters from ``(G, p)`` free ones."""
        if self.fixed_e is None:
            return free
        return np.column_stack([np.full(free.shape[0], self.fixed_e), free])

    def free(self, full: np.ndarray) -> np.ndarray:
        return full if self.fixed_e is None else full[:, 1:]

    def residual(self, th: np.ndarray) -> np.ndarray:
        return _predict(self.full(th[None, :]), self.xc)[0][0] - self.y

    def jacobian(self, th: np.ndarray) -> np.ndarray:
        _, w = _predict(self.full(th[None, :]), self.xc)
        w = w[0]
        cols = [w[:, 0]] if self.fixed_e is None else []
        for j in range(self.k):
            cols += [w[:, j + 1], -self.xc[:, j] * w[:, j + 1]]
        return np.column_stack(cols)

    def scaled_objective(self, th: np.ndarray) -> float:
        """``sum Huber_delta(r) / delta**2``."""
        return float(huber(self.residual(th), self.delta).sum()) / self.delta**2

    def scaled_gradient(self, th: np.ndarray) -> np.ndarray:
        psi = np.clip(self.residual(th), -self.delta, self.delta) / self.delta**2
        return self.jacobian(th).T @ psi

    def batch_objective(self, free: np.ndarray) -> np.ndarray:
        pred, _ = _predict(self.full(free), self.xc)
        return huber(pred - self.y[None, :], self.delta).sum(axis=1)

    def _eval(self, th: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        pred, w = _predict(self.full(th[None, :]), self.xc)
        r = pred[0] - self.y
        w = w[0]
        cols = [w[:, 0]] if self.fixed_e is None else []
        for j in range(self.k):
            cols += [w[:, j + 1], -self.xc[:, j] * w[:, j + 1]]
        return float(huber(r, self.delta).sum()) / self.delta**2, r, np.column_stack(cols)

    def solve(self, th0: np.ndarray, max_iter: int = 500) -> tuple[np.ndarray, float]:
        """Levenberg-Marquardt on the Huber objective with iteratively reweighted curvature.

        Each step solves ``(J^T W J + lam diag) s = -J^T psi(r)`` with ``psi`` Huber's derivative
        and ``W`` Huber's second derivative (1 inside ``delta``, 0 outside) once more points than
        parameters lie inside, else ``W_i = min(1, delta/|r_i|)`` (the reweighted least-squares
        majoriser, positive everywhere); a step is kept only if it lowers the objective. Stops when
        the predicted Newton decrease falls below 1e-14 (1 + F), or the objective and the step
        stall.
        """
        d2 = self.delta**2
        th = np.asarray(th0, dtype=float).copy()
        f, r, jac = self._eval(th)
        if not math.isfinite(f):
            return th, math.inf
        lam = 1e-3
        for _ in range(max_iter):
            psi = np.clip(r, -self.delta, self.delta) / d2
            g = jac.T @ psi
            if np.max(np.abs(g)) <= 1e-12 * (1.0 + f):
                break
            inside = np.abs(r) <= self.delta
            if inside.sum() > len(th):  # Huber's own curvature once enough points are quadratic
                wts = inside / d2
            else:  # far from the fit: the reweighted majoriser, positive everywhere
                wts = np.minimum(1.0, self.delta / np.maximum(np.abs(r), 1e-300)) / d2
            h = jac.T @ (wts[:, None] * jac)
            if _decrement(h, g) <= 1e-14 * (1.0 + f):
                break
            dh = np.diag(h).copy()
            dh = np.where(dh > 0, dh, 1e-12 * max(float(dh.max()), 1e-300))
            improved = False
            for _ in range(30):
                try:
                    step = np.linalg.solve(h + lam * np.diag(dh), -g)
                except np.linalg.LinAlgError:
                    lam *= 10.0
                    continue
                th_new = th + step
                f_new, r_new, jac_new = self._eval(th_new)
                if math.isfinite(f_new) and f_new <= f:
                    improved = True
                    lam = max(lam / 3.0, 1e-12)
                    break
                lam *= 4.0
            if not improved:
                break
            stalled = f - f_new <= 1e-15 * (1.0 + f)
            th, f, r, jac = th_new, f_new, r_new, jac_new
            if stalled and np.max(np.abs(step)) <= 1e-10 * (1.0 + np.max(np.abs(th))):
                break
        return th, f

    def decrement(self, th: np.ndarray) -> float:
        """Objective decrease a Newton step would predict, ``g^T H^+ g / 2`` (reweighted curvature)."""
        f, r, jac = self._eval(th)
        d2 = self.delta**2
        g = jac.T @ (np.clip(r, -self.delta, self.delta) / d2)
        wts = np.minimum(1.0, self.delta / np.maximum(np.abs(r), 1e-300)) / d2
        return _decrement(jac.T @ (wts[:, None] * jac), g)

    def best(self, starts: np.ndarray) -> tuple[np.ndarray, float]:
        best: tuple[np.ndarray, float] | None = None
        for t0 in starts:
            theta, f = self.solve(t0)
            if math.isfinite(f) and (best is None or f < best[1]):
                best = (theta, f)
        if best is None:
            raise DataError("every start of the fit diverged; check the points (positive, finite, decreasing)")
        return best

    def top_starts(self, grid_free: np.ndarray, k: int | None) -> np.ndarray:
        """The ``k`` grid points with the lowest initial objective."""
        if k is None or k >= len(grid_free):
            return grid_free
        vals = np.concatenate([self.batch_objective(grid_free[i : i + 512]) for i in range(0, len(grid_free), 512)])
        vals = np.where(np.isfinite(vals), vals, np.inf)
        return grid_free[np.argsort(vals, kind="stable")[:k]]


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Limit BLAS to one thread while fitting, if threadpoolctl is installed.

    The problem has 3-5 parameters; BLAS calls on tiny arrays from a multi-threaded OpenBLAS on a
    busy machine were ~15x slower (measured here).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


# --------------------------------------------------------------------------------------------
# result


@dataclass(frozen=True)
class ScalingFit:
    """Result of :func:`fit`.

    Attributes:
        law: the fitted law (ChinchillaLaw or ComputeLaw), its ``fitted_range`` set from the
            points.
        estimates: parameter name -> estimate (``E, A, B, alpha, beta`` or ``E, A, alpha``).
        ci: parameter name -> ``(low, high)`` percentile bootstrap interval (NaN if
            ``n_bootstrap == 0``; NaN too for a fixed ``E``); a Chinchilla fit also has
            ``a_opt = beta/(alpha+beta)``, the exponent of ``N_opt ∝ C**a_opt``.
        confidence: the interval's coverage, e.g. 0.95.
        objective: ``sum_i Huber_delta(r_i)`` at the estimate (unscaled, as in the paper).
        delta: Huber threshold.
        n_points: number of points fitted.
        n_starts: starts used on the full data.
        n_bootstrap: bootstrap refits.
        seed: bootstrap seed.
        converged: the estimate is a stationary point (see the module docstring), with
            ``grad_norm`` the max-norm of the gradient of the objective in units of ``delta**2``.
        samples: ``(n_bootstrap, n_params)`` bootstrap estimates, columns in ``estimates`` order
            (``inf`` where a resample drove a constant past float64; never an overflow error).
        grad_norm: see ``converged``.
        fixed: parameters held fixed (``{"E": value}``) or empty.
        bootstrap: ``"cases"`` or ``"residuals"``.
        diagnostics: why the fit is degenerate (empty when it is not).
        suggestion: keyword arguments of :func:`fit` for a constrained form the sweep can
            support (empty when the fit is not degenerate), explained in ``diagnostics``.
        points: the fitted ``(n, 3)`` or ``(n, 2)`` points (for residual plots).
    """

    law: ScalingLaw
    estimates: dict[str, float]
    ci: dict[str, tuple[float, float]]
    confidence: float
    objective: float
    delta: float
    n_points: int
    n_starts: int
    n_bootstrap: int
    seed: int | None
    converged: bool
    samples: np.ndarray = field(repr=False, compare=False)
    grad_norm: float = math.nan
    fixed: dict[str, float] = field(default_factory=dict)
    bootstrap: str = "cases"
    diagnostics: tuple[str, ...] = ()
    suggestion: dict[str, Any] = field(default_factory=dict)
    points: np.ndarray = field(default_factory=lambda: np.empty((0, 3)), repr=False, compare=False)

    @property
    def degenerate(self) -> bool:
        """True when :attr:`diagnostics` found the fit degenerate (see the module docstring)."""
        return bool(self.diagnostics)

    def residuals(self) -> np.ndarray:
        """``log L_fit - log L_i`` at each fitted point."""
        if self.points.shape[1] == 3:
            pred = self.law._loss(self.points[:, 0], self.points[:, 1])  # type: ignore[attr-defined]
        else:
            pred = self.law._optimal_loss(self.points[:, 0])
        return np.log(pred) - np.log(self.points[:, -1])

    def __str__(self) -> str:
        pct = f"{100 * self.confidence:g}%"
        lines = []
        if self.degenerate:
            lines.append("WARNING: degenerate fit; do not trust equivalents on this law:")
            lines += [f"  - {d}" for d in self.diagnostics]
            if self.suggestion:
                args = ", ".join(f"{k}={v!r}" for k, v in self.suggestion.items())
                lines.append(f"  suggested constrained fit: fit(points, {args})")
        fixed = "".join(f", {k} fixed at {v:g}" for k, v in self.fixed.items())
        lines += [
            f"Scaling-law fit: {self.law.kind} form, {self.n_points} points{fixed}, "
            f"Huber delta={self.delta:g}, objective={self.objective:.4g}, "
            f"{self.n_starts} starts, {self.n_bootstrap} bootstrap refits ({self.bootstrap}), "
            + ("converged" if self.converged else "NOT at a stationary point")
            + f" (gradient {self.grad_norm:.2g})",
            f"{'param':<8}{'estimate':>14}{pct + ' low':>14}{pct + ' high':>14}",
        ]
        for k, v in self.estimates.items():
            lo, hi = self.ci.get(k, (math.nan, math.nan))
            lines.append(f"{k:<8}{v:>14.6g}{lo:>14.6g}{hi:>14.6g}")
        fr = self.law.fitted_range
        if fr.loss_min is not None:
            lines.append(f"fitted range: loss [{fr.loss_min:.4g}, {fr.loss_max:.4g}]"
                         + (f", N [{fr.n_min:.3g}, {fr.n_max:.3g}], D [{fr.d_min:.3g}, {fr.d_max:.3g}]"
                            if fr.n_min is not None else "")
                         + (f", C [{fr.c_min:.3g}, {fr.c_max:.3g}]" if fr.c_min is not None else ""))
        return "\n".join(lines)

    def to_dict(self, include_samples: bool = False) -> dict[str, Any]:
        """JSON-ready dict (the law under ``"law"``); samples only if asked (non-finite as null)."""
        d: dict[str, Any] = {
            "law": self.law.to_dict(),
            "estimates": dict(self.estimates),
            "ci": {k: [_finite_or_none(lo), _finite_or_none(hi)] for k, (lo, hi) in self.ci.items()},
            "confidence": self.confidence,
            "objective": self.objective,
            "delta": self.delta,
            "n_points": self.n_points,
            "n_starts": self.n_starts,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
            "converged": self.converged,
            "grad_norm": _finite_or_none(self.grad_norm),
            "fixed": dict(self.fixed),
            "bootstrap": self.bootstrap,
            "diagnostics": list(self.diagnostics),
            "suggestion": dict(self.suggestion),
            "points": self.points.tolist(),
        }
        if include_samples:
            d["samples"] = [[_finite_or_none(v) for v in row] for row in self.samples.tolist()]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScalingFit:
        """Inverse of :meth:`to_dict` (samples empty unless saved)."""
        raw = d.get("samples")
        n_cols = len(d["estimates"]) - (1 if "a_opt" in d["estimates"] else 0)
        samples = (np.empty((0, n_cols)) if raw is None
                   else np.array([[math.nan if v is None else v for v in row] for row in raw], dtype=float))
        pts = d.get("points")
        return cls(
            law=law_from_dict(d["law"]),
            estimates={k: float(v) for k, v in d["estimates"].items()},
            ci={k: (_none_to_nan(v[0]), _none_to_nan(v[1])) for k, v in d["ci"].items()},
            confidence=float(d["confidence"]),
            objective=float(d["objective"]),
            delta=float(d["delta"]),
            n_points=int(d["n_points"]),
            n_starts=int(d["n_starts"]),
            n_bootstrap=int(d["n_bootstrap"]),
            seed=d["seed"],
            converged=bool(d["converged"]),
            samples=samples.reshape(-1, n_cols) if samples.size else np.empty((0, n_cols)),
            grad_norm=_none_to_nan(d.get("grad_norm")),
            fixed={k: float(v) for k, v in d.get("fixed", {}).items()},
            bootstrap=str(d.get("bootstrap", "cases")),
            diagnostics=tuple(d.get("diagnostics", ())),
            suggestion=dict(d.get("suggestion", {})),
            points=np.asarray(pts, dtype=float) if pts else np.empty((0, 3)),
        )


def _percentile_interval(col: np.ndarray, q: tuple[float, float]) -> tuple[float, float]:
    """Percentile interval of bootstrap values; a NaN (failed refit) counts as ``+inf`` and widens it.

    Linear interpolation between order statistics, except next to an infinite one, where the
    nearest order statistic is taken (interpolating towards ``inf`` gives NaN).
    """
    col = np.where(np.isnan(col), np.inf, col)
    lo, hi = np.percentile(col, q)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        lo, hi = np.percentile(col, q, method="nearest")
    return float(lo), float(hi)


def _finite_or_none(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _none_to_nan(v: Any) -> float:
    return math.nan if v is None else float(v)


# --------------------------------------------------------------------------------------------
# fit


def _parse_points(points: Any, form: str | None) -> tuple[str, np.ndarray]:
    if isinstance(points, dict):
        keys = {k.lower(): k for k in points}
        if {"n", "d", "loss"} <= set(keys):
            cols = [points[keys["n"]], points[keys["d"]], points[keys["loss"]]]
        elif {"c", "loss"} <= set(keys):
            cols = [points[keys["c"]], points[keys["loss"]]]
        else:
            raise DataError("a dict of points needs keys N, D, loss or C, loss")
        try:
            arr = np.column_stack([np.asarray(c, dtype=np.float64).ravel() for c in cols])
        except (TypeError, ValueError) as exc:
            raise DataError(f"points must be numeric: {exc}") from exc
    else:
        try:
            arr = np.asarray(points, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise DataError(f"points must be numeric (N, D, loss) or (C, loss) rows: {exc}") from exc
    if arr.size == 0:
        raise DataError("no points to fit (empty sweep)")
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise DataError(f"points must have shape (n, 3) for (N, D, loss) or (n, 2) for (C, loss); got {arr.shape}")
    if not np.isfinite(arr).all():
        raise DataError("points contain NaN or infinite values")
    if (arr <= 0).any():
        raise DataError("every N, D, C and loss must be positive")
    inferred = "chinchilla" if arr.shape[1] == 3 else "compute"
    if form is not None and form != inferred:
        hint = " (for the compute-only form of an (N, D, loss) sweep pass rows (6*N*D, loss))"
        hint = hint if form == "compute" else ""
        raise DataError(f"form {form!r} needs {3 if form == 'chinchilla' else 2} columns, got {arr.shape[1]}{hint}")
    return inferred, arr


def fit(
    points: Any,
    *,
    form: str | None = None,
    delta: float = 1e-3,
    grid: np.ndarray | None = None,
    n_starts: int | None = 32,
    n_bootstrap: int = 100,
    bootstrap: str = "cases",
    bootstrap_starts: int = 0,
    confidence: float = 0.95,
    seed: int | None = 0,
    fix_E: float | None = None,
    strict: bool = False,
    name: str = "fitted",
    compute_unit: str = "FLOPs",
    loss_unit: str = "nats/token",
    data: str = "",
) -> ScalingFit:
    """Fit ``L(N, D) = E + A/N**alpha + B/D**beta`` (or ``L(C) = E + A/C**alpha``) to a sweep.

    Chinchilla approach 3 (Hoffmann et al. 2022, arXiv 2203.15556, section 3.3): minimise
    ``sum_i Huber_delta(LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i)`` from a grid of
    initialisations, keep the best; then ``n_bootstrap`` refits for percentile intervals; then
    the diagnostics of the module docstring.

    Args:
        points: ``(n, 3)`` rows ``(N, D, loss)`` or ``(n, 2)`` rows ``(C, loss)``, or a dict with
            keys ``N, D, loss`` / ``C, loss``. N in parameters, D in tokens, loss in ``loss_unit``.
        form: ``"chinchilla"`` or ``"compute"``; inferred from the number of columns.
        delta: Huber threshold on log-loss residuals (the paper's 1e-3).
        grid: initialisations in the paper's parameterisation, columns ``(e, a, alpha, b, beta)``
            (or ``(e, a, alpha)``); default :func:`default_grid`. With ``fix_E`` the ``e``
            column is ignored.
        n_starts: refine only the grid points with the lowest initial objective; ``None``
            refines every grid point (as the paper did; slow).
        n_bootstrap: bootstrap refits (0: no intervals).
        bootstrap: ``"cases"`` (resample points) or ``"residuals"`` (resample log-residuals at
            fixed (N, D); for small designed grids).
        bootstrap_starts: grid starts per bootstrap refit besides the full-data optimum.
        confidence: coverage of the percentile intervals.
        seed: seeds the bootstrap resampling.
        fix_E: hold the irreducible loss at this value (>= 0; 0 drops the term), the
            constrained form for sweeps that cannot determine ``E``.
        strict: raise :class:`~wdecomp.errors.DataError` for a degenerate fit instead of
            returning it flagged.
        name: name of the returned law.
        compute_unit: unit of C for the compute form.
        loss_unit: unit of the losses, e.g. ``"nats/token"`` or ``"bits/byte"`` (see
            :func:`wdecomp.scaling.convert_loss`); carried by the law so equivalents never mix units.
        data: what the losses were measured on (dataset, tokenizer), carried by the law.

    Returns:
        A :class:`ScalingFit`; check :attr:`ScalingFit.degenerate` before using its law.

    Raises:
        DataError: empty, malformed, non-finite, non-positive or constant points, too few of
            them, a best fit with a non-positive amplitude or exponent, or (``strict``) a
            degenerate fit.
    """
    with _single_threaded_blas():
        return _fit(points, form, delta, grid, n_starts, n_bootstrap, bootstrap, bootstrap_starts, confidence,
                    seed, fix_E, strict, name, compute_unit, loss_unit, data)


def _fit(
    points: Any,
    form: str | None,
    delta: float,
    grid: np.ndarray | None,
    n_starts: int | None,
    n_bootstrap: int,
    bootstrap: str,
    bootstrap_starts: int,
    confidence: float,
    seed: int | None,
    fix_E: float | None,
    strict: bool,
    name: str,
    compute_unit: str,
    loss_unit: str,
    data: str,
) -> ScalingFit:
    form, arr = _parse_points(points, form)
    if not (0 < confidence < 1):
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not (delta > 0 and math.isfinite(delta)):
        raise ValueError(f"delta must be positive and finite, got {delta}")
    if bootstrap not in ("cases", "residuals"):
        raise ValueError(f"bootstrap must be 'cases' or 'residuals', got {bootstrap!r}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    loss = arr[:, -1]
    if fix_E is not None:
        fix_E = float(fix_E)
        if not (math.isfinite(fix_E) and 0 <= fix_E < loss.min()):
            raise DataError(f"fix_E must be in [0, smallest loss {loss.min():g}), got {fix_E!r}")
    n_params = (5 if form == "chinchilla" else 3) - (fix_E is not None)
    if arr.shape[0] <= n_params:
        raise DataError(
            f"{arr.shape[0]} points cannot determine the {n_params} free parameters of the "
            f"{form} form; give more than {n_params}"
        )
    if np.ptp(loss) == 0:
        raise DataError(
            f"every loss equals {loss[0]:g}: constant losses determine no power law; "
            "check the sweep (did the runs train?)"
        )
    x = np.log(arr[:, :-1])
    y = np.log(loss)
    mean = x.mean(axis=0)
    xc = x - mean
    k = x.shape[1]
    fixed_e = None if fix_E is None else (math.log(fix_E) if fix_E > 0 else -math.inf)
    prob = _Problem(xc, y, delta, fixed_e)

    grid = default_grid(form) if grid is None else np.asarray(grid, dtype=np.float64)
    if grid.ndim != 2 or grid.shape[1] != 1 + 2 * k:
        raise ValueError(f"grid must have {1 + 2 * k} columns for the {form} form")
    grid_c = grid.copy()
    for j in range(k):
        grid_c[:, 1 + 2 * j] -= grid_c[:, 2 + 2 * j] * mean[j]
    grid_free = prob.free(grid_c)
    if fixed_e is not None:
        grid_free = np.unique(grid_free, axis=0)

    starts = prob.top_starts(grid_free, n_starts)
    theta, f = prob.best(starts)
    theta2, f2 = prob.solve(theta)  # restart from the solution: does the objective still move?
    change = (f - f2) / (1.0 + abs(f))
    if f2 < f:
        theta, f = theta2, f2
    grad_norm = float(np.max(np.abs(prob.scaled_gradient(theta))))
    decrement = prob.decrement(theta)
    converged = bool(decrement <= 1e-8 * (1.0 + f) and change <= 1e-8)

    def to_log_params(free: np.ndarray) -> np.ndarray:
        """(log E, log A, [log B], alpha, [beta]) in the names' order below, from free theta."""
        full = prob.full(free[None, :])[0]
        a = [full[1 + 2 * j] + full[2 + 2 * j] * mean[j] for j in range(k)]
        if k == 2:
            return np.array([full[0], a[0], a[1], full[2], full[4]])
        return np.array([full[0], a[0], full[2]])

    names = ("E", "A", "B", "alpha", "beta") if k == 2 else ("E", "A", "alpha")
    n_log = 3 if k == 2 else 2  # leading columns held in log space
    est_log = to_log_params(theta)
    rng = np.random.default_rng(seed)
    n = arr.shape[0]
    log_samples = np.empty((n_bootstrap, len(names)))
    pred_hat = prob.residual(theta) + y
    resid = y - pred_hat
    for i in range(n_bootstrap):
        idx = rng.integers(0, n, size=n)
        if bootstrap == "cases":
            pb = _Problem(xc[idx], y[idx], delta, fixed_e)
        else:
            pb = _Problem(xc, pred_hat + resid[idx], delta, fixed_e)
        bstarts = theta[None, :]
        if bootstrap_starts > 0:
            bstarts = np.vstack([bstarts, pb.top_starts(grid_free, bootstrap_starts)])
        tb, _ = pb.best(bstarts)
        log_samples[i] = to_log_params(tb)

    with np.errstate(over="ignore"):
        est = np.concatenate([np.exp(est_log[:n_log]), est_log[n_log:]])
        samples = np.concatenate([np.exp(log_samples[:, :n_log]), log_samples[:, n_log:]], axis=1)
    if fix_E is not None:  # exactly the value asked for, not exp(log(value))
        est[0] = fix_E
        samples[:, 0] = fix_E
    estimates = {nm: float(v) for nm, v in zip(names, est)}
    cols = {nm: samples[:, j] for j, nm in enumerate(names)}
    if k == 2:
        estimates["a_opt"] = estimates["beta"] / (estimates["alpha"] + estimates["beta"])
        with np.errstate(invalid="ignore", divide="ignore"):
            cols["a_opt"] = samples[:, 4] / (samples[:, 3] + samples[:, 4])
    q = (100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2)
    ci: dict[str, tuple[float, float]] = {}
    for nm, col in cols.items():
        if n_bootstrap > 0 and not (nm == "E" and fix_E is not None):
            ci[nm] = _percentile_interval(col, q)
        else:
            ci[nm] = (math.nan, math.nan)

    bad = [nm for nm in names[n_log:] + names[1:n_log] if not (estimates[nm] > 0 and math.isfinite(estimates[nm]))]
    if bad:
        raise DataError(
            f"the best fit has non-positive or infinite {', '.join(bad)} ({estimates}); the points do not "
            "follow a decreasing power law in each variable"
        )

    diagnostics, suggestion = _diagnose(prob, theta, estimates, ci, loss, names, n_log, fix_E, form,
                                        bootstrap, n, k)
    if strict and diagnostics:
        raise DataError("degenerate scaling-law fit: " + "; ".join(diagnostics)
                        + (f"; try fit(points, {', '.join(f'{a}={v!r}' for a, v in suggestion.items())})"
                           if suggestion else ""))

    labels = {"loss_unit": loss_unit, "data": data}
    if k == 2:
        c = 6.0 * arr[:, 0] * arr[:, 1]
        rng_meta = FittedRange(
            n_min=float(arr[:, 0].min()), n_max=float(arr[:, 0].max()),
            d_min=float(arr[:, 1].min()), d_max=float(arr[:, 1].max()),
            c_min=float(c.min()), c_max=float(c.max()),
            loss_min=float(loss.min()), loss_max=float(loss.max()),
        )
        law: ScalingLaw = ChinchillaLaw(
            E=estimates["E"], A=estimates["A"], B=estimates["B"], alpha=estimates["alpha"], beta=estimates["beta"],
            name=name,
            source=f"wdecomp.scaling.fit on {n} (N, D, loss) points (Chinchilla approach 3)",
            fitted_range=rng_meta,
            **labels,
        )
    else:
        rng_meta = FittedRange(
            c_min=float(arr[:, 0].min()), c_max=float(arr[:, 0].max()),
            loss_min=float(loss.min()), loss_max=float(loss.max()),
        )
        law = ComputeLaw(
            E=estimates["E"], A=estimates["A"], alpha=estimates["alpha"],
            name=name,
            source=f"wdecomp.scaling.fit on {n} (C, loss) points",
            fitted_range=rng_meta,
            compute_unit=compute_unit,
            **labels,
        )
    return ScalingFit(
        law=law,
        estimates=estimates,
        ci=ci,
        confidence=confidence,
        objective=f * delta**2,
        delta=delta,
        n_points=n,
        n_starts=len(starts),
        n_bootstrap=n_bootstrap,
        seed=seed,
        converged=converged,
        samples=samples,
        grad_norm=grad_norm,
        fixed={} if fix_E is None else {"E": fix_E},
        bootstrap=bootstrap,
        diagnostics=tuple(diagnostics),
        suggestion=suggestion,
        points=arr,
    )


def _diagnose(
    prob: _Problem,
    theta: np.ndarray,
    estimates: dict[str, float],
    ci: dict[str, tuple[float, float]],
    loss: np.ndarray,
    names: tuple[str, ...],
    n_log: int,
    fix_E: float | None,
    form: str,
    bootstrap: str,
    n: int,
    k: int,
) -> tuple[list[str], dict[str, Any]]:
    """Why a fit is degenerate, and keyword arguments of a constrained refit."""
    diagnostics: list[str] = []
    e_at_bound = fix_E is None and estimates["E"] < E_AT_BOUND * float(loss.min())
    if e_at_bound:
        diagnostics.append(
            f"E = {estimates['E']:.3g} is at its lower bound 0: the sweep does not determine the "
            "irreducible loss (its losses show no flattening)"
        )
    jac = prob.jacobian(theta)
    if fix_E is None and e_at_bound:
        jac = jac[:, 1:]  # e at -inf has a zero column; that is the bound, already reported
    norms = np.linalg.norm(jac, axis=0)
    sv = np.linalg.svd(jac / np.where(norms > 0, norms, 1.0), compute_uv=False)
    if norms.min() == 0 or sv[-1] < MIN_SINGULAR_RATIO * sv[0]:
        diagnostics.append(
            f"non-identifiable for this sweep's shape: the Jacobian at the optimum has condition "
            f"{sv[0] / max(sv[-1], 1e-300):.2g} (parameters not separable from these points)"
        )
    for nm in names:
        lo, hi = ci.get(nm, (math.nan, math.nan))
        if math.isnan(lo) and math.isnan(hi):
            continue
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 or hi / lo > MAX_INTERVAL_RATIO:
            if nm == "E" and e_at_bound:
                continue
            diagnostics.append(f"the bootstrap interval of {nm} is [{lo:.3g}, {hi:.3g}], "
                               "more than two orders of magnitude")
    suggestion: dict[str, Any] = {}
    if diagnostics:
        if fix_E is None:
            suggestion["fix_E"] = 0.0 if e_at_bound else float(f"{estimates['E']:.4g}")
            why = ("hold E at 0 (pure power laws)" if e_at_bound
                   else f"hold E at {suggestion['fix_E']:g} (its point estimate; intervals then omit E's "
                        "uncertainty: better, fix it at a value you know, e.g. the data's entropy)")
        elif form == "chinchilla":
            why = ("fit the compute-only form L(C) = E + A/C^alpha to the sweep's lower envelope, "
                   "rows (6*N*D, loss)")
        else:
            why = "none that this sweep supports: add runs (more sizes and token counts)"
        if bootstrap == "cases" and k == 2 and n <= 16:
            suggestion["bootstrap"] = "residuals"
            why += "; resample residuals, which keeps every size in each bootstrap refit"
        diagnostics.append(f"suggested constrained form: {why}")
    return diagnostics, suggestion
