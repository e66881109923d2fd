"""Fit a scaling law to one's own sweep: Chinchilla's approach 3, with bootstrap intervals.

Hoffmann et al. 2022 (arXiv 2203.15556, section 3.3 and Appendix D.2) fit
``L(N, D) = E + A/N**alpha + B/D**beta`` by minimising, over ``(a, b, e, alpha, beta)`` with
``A = exp(a), B = exp(b), E = exp(e)``::

    sum_i Huber_delta( LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i ),   delta = 1e-3

with L-BFGS from a grid of initialisations, keeping the best. :func:`fit` does exactly that (and
the one-term version ``LSE(a - alpha log C_i, e) - log L_i`` for ``L(C) = E + A/C**alpha``), with
two numerical choices that change where the optimiser stops but not the objective's minimiser:

* the log-features are centred internally (``a' = a - alpha * mean(log N)``), which removes the
  near-collinearity of ``a`` and ``alpha`` when ``log N`` is ~20;
* the objective handed to L-BFGS is divided by ``delta**2``. Besiroglu et al. 2024 (arXiv
  2404.10102, section 3) traced Hoffmann's under-converged fit to a loss too small for the
  optimiser's stopping rule; the rescaling avoids that. The reported ``objective`` is the
  unscaled sum.

Every L-BFGS start costs a few milliseconds, so by default the ``n_starts`` grid points with the
lowest initial objective are refined (``n_starts=None`` refines the whole grid, as the paper did).
Bootstrap intervals: resample the points with replacement, refit (from the full-data optimum,
optionally also from the best few grid points of the resample), and take percentiles.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize

from wdecomp.errors import DataError
from wdecomp.scaling.base import FittedRange, ScalingLaw, law_from_dict
from wdecomp.scaling.forms import ChinchillaLaw, ComputeLaw

__all__ = ["ScalingFit", "default_grid", "fit", "huber"]

_HOFFMANN_EXPONENTS = (0.0, 0.5, 1.0, 1.5, 2.0)
_HOFFMANN_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
_HOFFMANN_LOGA = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
_COMPUTE_EXPONENTS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


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
# prediction log L = LSE(e, a'_j - alpha_j x_j), x_j = log X_j - mean_j


def _predict(theta: np.ndarray, xc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log-loss predictions and the softmax weights of the LSE terms.

    Args:
        theta: ``(G, 1 + 2k)`` parameter batch.
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
    ex = np.exp(terms - top)
    tot = ex.sum(axis=2)
    pred = top[:, :, 0] + np.log(tot)
    return pred, ex / tot[:, :, None]


def _objective_batch(theta: np.ndarray, xc: np.ndarray, y: np.ndarray, delta: float) -> np.ndarray:
    pred, _ = _predict(theta, xc)
    return huber(pred - y[None, :], delta).sum(axis=1)


def _fun_grad(theta: np.ndarray, xc: np.ndarray, y: np.ndarray, delta: float) -> tuple[float, np.ndarray]:
    """Scaled objective ``sum Huber(r) / delta**2`` and its gradient."""
    pred, w = _predict(theta[None, :], xc)
    r = pred[0] - y
    f = float(huber(r, delta).sum()) / delta**2
    psi = np.clip(r, -delta, delta) / delta**2  # d Huber / d r, scaled
    w = w[0]
    grad = np.empty_like(theta)
    grad[0] = psi @ w[:, 0]
    for j in range(xc.shape[1]):
        grad[1 + 2 * j] = psi @ w[:, j + 1]
        grad[2 + 2 * j] = -(psi * xc[:, j]) @ w[:, j + 1]
    return f, grad


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Limit BLAS to one thread while fitting, if threadpoolctl is installed.

    The problem has 3 or 5 parameters; scipy's L-BFGS-B calls BLAS on tiny vectors, and a
    multi-threaded OpenBLAS on a busy machine made each call ~15x slower (measured here).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _lbfgs(theta0: np.ndarray, xc: np.ndarray, y: np.ndarray, delta: float) -> tuple[np.ndarray, float, bool]:
    res = minimize(
        _fun_grad,
        theta0,
        args=(xc, y, delta),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 5000, "maxfun": 20000, "ftol": 1e-15, "gtol": 1e-10, "maxcor": 30},
    )
    return res.x, float(res.fun), bool(res.success)


def _best_fit(starts: np.ndarray, xc: np.ndarray, y: np.ndarray, delta: float) -> tuple[np.ndarray, float, bool]:
    best: tuple[np.ndarray, float, bool] | None = None
    for t0 in starts:
        theta, f, ok = _lbfgs(t0, xc, y, delta)
        if np.isfinite(f) and (best is None or f < best[1]):
            best = (theta, f, ok)
    if best is None:
        raise DataError("every L-BFGS start diverged; check the points")
    return best


def _top_starts(grid_c: np.ndarray, xc: np.ndarray, y: np.ndarray, delta: float, k: int | None) -> np.ndarray:
    """The ``k`` grid points (centred coordinates) with the lowest initial objective."""
    if k is None or k >= len(grid_c):
        return grid_c
    vals = np.concatenate([_objective_batch(grid_c[i : i + 256], xc, y, delta) for i in range(0, len(grid_c), 256)])
    vals = np.where(np.isfinite(vals), vals, np.inf)
    return grid_c[np.argsort(vals, kind="stable")[:k]]


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
            ``n_bootstrap == 0``); a Chinchilla fit also has ``a_opt = beta/(alpha+beta)``, the
            exponent of ``N_opt ∝ C**a_opt``.
        confidence: the interval's coverage, e.g. 0.95.
        objective: ``sum_i Huber_delta(r_i)`` at the estimate (unscaled, as in the paper).
        delta: Huber threshold.
        n_points: number of points fitted.
        n_starts: L-BFGS starts used on the full data.
        n_bootstrap: bootstrap refits.
        seed: bootstrap seed.
        converged: L-BFGS reported success for the best start.
        samples: ``(n_bootstrap, n_params)`` bootstrap estimates, columns in ``estimates`` order.
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

    def __str__(self) -> str:
        pct = f"{100 * self.confidence:g}%"
        lines = [
            f"Scaling-law fit: {self.law.kind} form, {self.n_points} points, "
            f"Huber delta={self.delta:g}, objective={self.objective:.4g}, "
            f"{self.n_starts} starts, {self.n_bootstrap} bootstrap refits"
            + ("" if self.converged else " (L-BFGS did not report convergence)"),
            f"{'param':<8}{'estimate':>14}{pct + ' low':>14}{pct + ' high':>14}",
        ]
        for k, v in self.estimates.items():
            lo, hi = self.ci.get(k, (math.nan, math.nan))
            lines.append(f"{k:<8}{v:>14.6g}{lo:>14.6g}{hi:>14.6g}")
        return "\n".join(lines)

    def to_dict(self, include_samples: bool = False) -> dict[str, Any]:
        """JSON-ready dict (the law under ``"law"``); samples only if asked."""
        d: dict[str, Any] = {
            "law": self.law.to_dict(),
            "estimates": dict(self.estimates),
            "ci": {k: [float(lo), float(hi)] for k, (lo, hi) in self.ci.items()},
            "confidence": self.confidence,
            "objective": self.objective,
            "delta": self.delta,
            "n_points": self.n_points,
            "n_starts": self.n_starts,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
            "converged": self.converged,
        }
        if include_samples:
            d["samples"] = self.samples.tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScalingFit:
        """Inverse of :meth:`to_dict` (samples empty unless saved)."""
        samples = np.asarray(d.get("samples", np.empty((0, len(d["estimates"])))), dtype=float)
        return cls(
            law=law_from_dict(d["law"]),
            estimates={k: float(v) for k, v in d["estimates"].items()},
            ci={k: (float(v[0]), float(v[1])) for k, v in d["ci"].items()},
            confidence=float(d["confidence"]),
            objective=float(d["objective"]),
            delta=float(d["delta"]),
            n_points=int(d["n_points"]),
            n_starts=int(d["n_starts"]),
            n_bootstrap=int(d["n_bootstrap"]),
            seed=d["seed"],
            converged=bool(d["converged"]),
            samples=samples,
        )


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
        arr = np.column_stack([np.asarray(c, dtype=np.float64).ravel() for c in cols])
    else:
        try:
            arr = np.asarray(points, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise DataError(f"points must be numeric (N, D, loss) or (C, loss) rows: {exc}") from exc
    if arr.size == 0:
        raise DataError("no points to fit (empty sweep)")
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise DataError(f"points must have shape (n, 3) for (N, D, loss) or (n, 2) for (C, loss); got {arr.shape}")
    inferred = "chinchilla" if arr.shape[1] == 3 else "compute"
    if form is not None and form != inferred:
        raise DataError(f"form {form!r} needs {3 if form == 'chinchilla' else 2} columns, got {arr.shape[1]}")
    if not np.isfinite(arr).all():
        raise DataError("points contain NaN or infinite values")
    if (arr <= 0).any():
        raise DataError("every N, D, C and loss must be positive")
    n_params = 5 if inferred == "chinchilla" else 3
    if arr.shape[0] <= n_params:
        raise DataError(
            f"{arr.shape[0]} points cannot determine the {n_params} parameters of the "
            f"{inferred} form; give more than {n_params}"
        )
    return inferred, arr


def fit(
    points: Any,
    *,
    form: str | None = None,
    delta: float = 1e-3,
    grid: np.ndarray | None = None,
    n_starts: int | None = 32,
    n_bootstrap: int = 100,
    bootstrap_starts: int = 0,
    confidence: float = 0.95,
    seed: int | None = 0,
    name: str = "fitted",
    compute_unit: str = "FLOPs",
) -> ScalingFit:
    """Fit ``L(N, D) = E + A/N**alpha + B/D**beta`` (or ``L(C) = E + A/C**alpha``) to a sweep.

    Chinchilla approach 3 (Hoffmann et al. 2022, arXiv 2203.15556, section 3.3): minimise
    ``sum_i Huber_delta(LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i)`` by L-BFGS from a
    grid of initialisations, keep the best; then ``n_bootstrap`` refits on resampled points for
    percentile confidence intervals.

    Args:
        points: ``(n, 3)`` rows ``(N, D, loss)`` or ``(n, 2)`` rows ``(C, loss)``, or a dict with
            keys ``N, D, loss`` / ``C, loss``. N in parameters, D in tokens, loss in nats.
        form: ``"chinchilla"`` or ``"compute"``; inferred from the number of columns.
        delta: Huber threshold on log-loss residuals (the paper's 1e-3).
        grid: initialisations in the paper's parameterisation, columns ``(e, a, alpha, b, beta)``
            (or ``(e, a, alpha)``); default :func:`default_grid`.
        n_starts: refine only the grid points with the lowest initial objective; ``None``
            refines every grid point (slow: ~4500 starts).
        n_bootstrap: bootstrap refits (0: no intervals).
        bootstrap_starts: grid starts per bootstrap refit besides the full-data optimum, which
            is already close to each resample's optimum (0: only that start; each extra start
            costs one grid evaluation and one L-BFGS run per refit).
        confidence: coverage of the percentile intervals.
        seed: seeds the bootstrap resampling.
        name: name of the returned law.
        compute_unit: unit of C for the compute form.

    Returns:
        A :class:`ScalingFit`.

    Raises:
        DataError: empty, malformed, non-finite or non-positive points, or too few of them.
    """
    with _single_threaded_blas():
        return _fit(
            points,
            form,
            delta,
            grid,
            n_starts,
            n_bootstrap,
            bootstrap_starts,
            confidence,
            seed,
            name,
            compute_unit,
        )


def _fit(
    points: Any,
    form: str | None,
    delta: float,
    grid: np.ndarray | None,
    n_starts: int | None,
    n_bootstrap: int,
    bootstrap_starts: int,
    confidence: float,
    seed: int | None,
    name: str,
    compute_unit: str,
) -> ScalingFit:
    form, arr = _parse_points(points, form)
    if not (0 < confidence < 1):
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if delta <= 0:
        raise ValueError(f"delta must be positive, got {delta}")
    x = np.log(arr[:, :-1])
    y = np.log(arr[:, -1])
    mean = x.mean(axis=0)
    xc = x - mean
    k = x.shape[1]

    grid = default_grid(form) if grid is None else np.asarray(grid, dtype=np.float64)
    if grid.ndim != 2 or grid.shape[1] != 1 + 2 * k:
        raise ValueError(f"grid must have {1 + 2 * k} columns for the {form} form")

    def to_centred(g: np.ndarray) -> np.ndarray:
        g = g.copy()
        for j in range(k):
            g[:, 1 + 2 * j] -= g[:, 2 + 2 * j] * mean[j]
        return g

    def to_params(theta: np.ndarray) -> np.ndarray:
        """(E, A, B, alpha, beta) or (E, A, alpha) from centred theta."""
        e = theta[0]
        a = [theta[1 + 2 * j] + theta[2 + 2 * j] * mean[j] for j in range(k)]
        if k == 2:
            return np.array([math.exp(e), math.exp(a[0]), math.exp(a[1]), theta[2], theta[4]])
        return np.array([math.exp(e), math.exp(a[0]), theta[2]])

    grid_c = to_centred(grid)
    starts = _top_starts(grid_c, xc, y, delta, n_starts)
    theta, _, converged = _best_fit(starts, xc, y, delta)
    est = to_params(theta)
    pred, _ = _predict(theta[None, :], xc)
    objective = float(huber(pred[0] - y, delta).sum())

    names = ("E", "A", "B", "alpha", "beta") if k == 2 else ("E", "A", "alpha")
    rng = np.random.default_rng(seed)
    n = arr.shape[0]
    samples = np.empty((n_bootstrap, len(names)))
    for i in range(n_bootstrap):
        idx = rng.integers(0, n, size=n)
        xb, yb = xc[idx], y[idx]
        bstarts = theta[None, :]
        if bootstrap_starts > 0:
            extra = _top_starts(grid_c, xb, yb, delta, bootstrap_starts)
            bstarts = np.vstack([bstarts, extra])
        tb, _, _ = _best_fit(bstarts, xb, yb, delta)
        samples[i] = to_params(tb)

    estimates = {nm: float(v) for nm, v in zip(names, est)}
    cols = {nm: samples[:, j] for j, nm in enumerate(names)}
    if k == 2:
        estimates["a_opt"] = estimates["beta"] / (estimates["alpha"] + estimates["beta"])
        cols["a_opt"] = samples[:, 4] / (samples[:, 3] + samples[:, 4])
    q = (100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2)
    ci = {}
    for nm, col in cols.items():
        if n_bootstrap > 0:
            lo, hi = np.percentile(col, q)
            ci[nm] = (float(lo), float(hi))
        else:
            ci[nm] = (math.nan, math.nan)

    bad = [nm for nm in names if nm != "E" and not estimates[nm] > 0]
    if bad:
        raise DataError(
            f"the best fit has non-positive {', '.join(bad)} ({estimates}); the points do not "
            "follow a decreasing power law in each variable"
        )
    loss = arr[:, -1]
    if k == 2:
        c = 6.0 * arr[:, 0] * arr[:, 1]
        rng_meta = FittedRange(
            n_min=float(arr[:, 0].min()),
            n_max=float(arr[:, 0].max()),
            d_min=float(arr[:, 1].min()),
            d_max=float(arr[:, 1].max()),
            c_min=float(c.min()),
            c_max=float(c.max()),
            loss_min=float(loss.min()),
            loss_max=float(loss.max()),
        )
        law: ScalingLaw = ChinchillaLaw(
            E=estimates["E"],
            A=estimates["A"],
            B=estimates["B"],
            alpha=estimates["alpha"],
            beta=estimates["beta"],
            name=name,
            source=f"wdecomp.scaling.fit on {n} (N, D, loss) points (Chinchilla approach 3)",
            fitted_range=rng_meta,
        )
    else:
        rng_meta = FittedRange(
            c_min=float(arr[:, 0].min()),
            c_max=float(arr[:, 0].max()),
            loss_min=float(loss.min()),
            loss_max=float(loss.max()),
        )
        law = ComputeLaw(
            E=estimates["E"],
            A=estimates["A"],
            alpha=estimates["alpha"],
            name=name,
            source=f"wdecomp.scaling.fit on {n} (C, loss) points",
            fitted_range=rng_meta,
            compute_unit=compute_unit,
        )
    return ScalingFit(
        law=law,
        estimates=estimates,
        ci=ci,
        confidence=confidence,
        objective=objective,
        delta=delta,
        n_points=n,
        n_starts=len(starts),
        n_bootstrap=n_bootstrap,
        seed=seed,
        converged=converged,
        samples=samples,
    )
