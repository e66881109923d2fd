"""Stochastic trace estimation: Hutchinson (1989) and Hutch++ (Meyer et al. 2021).

**Hutchinson** (Hutchinson 1989, "A stochastic estimator of the trace of the influence matrix
for Laplacian smoothing splines", Commun. Stat. 18(3)): for probes ``z_i`` with
``E[z z^T] = I``, ``tr(A) = E[z^T A z]``; the mean of ``n`` samples has standard error
``s / sqrt(n)`` (``s`` the sample standard deviation) and, for Rademacher probes, variance
``2 (||A||_F^2 - sum_i A_ii^2) / n``, so a relative error ``eps`` costs ``O(1/eps^2)``
products.

**Hutch++** (Meyer, Musco, Musco & Woodruff 2021, "Hutch++: optimal stochastic trace
estimation", SOSA, arXiv 2010.09649): spend ``m/3`` products on a sketch ``Q = orth(A S)``,
``m/3`` on the exact trace of the projection ``tr(Q^T A Q)``, and ``m/3`` on Hutchinson for
the deflated remainder:

    tr(A) ~= tr(Q^T A Q) + (3/m) sum_i g_i^T (I - QQ^T) A (I - QQ^T) g_i.

For positive semidefinite ``A``, ``||A - A_k||_F <= tr(A) / sqrt(k)``, so the remainder's
standard deviation is ``O(tr(A) / m)``: ``m = O(sqrt(log(1/delta)) / eps + log(1/delta))``
products reach relative error ``eps`` with probability ``1 - delta`` (their Theorem 1) —
``O(1/eps)`` instead of Hutchinson's ``O(1/eps^2)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from wdecomp.errors import ArgumentError, NonFiniteError
from wdecomp.linop import aslinop
from wdecomp.progress import progress_bar
from wdecomp.spectral._probes import probe_products, probes
from wdecomp.spectral._table import table

__all__ = ["TraceEstimate", "hutchinson_trace", "hutchpp_trace"]


@dataclass(frozen=True)
class TraceEstimate:
    """A stochastic trace estimate.

    Attributes:
        estimate: The trace estimate.
        std_error: Standard error of ``estimate`` (sample standard deviation of the
            stochastic part over ``sqrt`` of its sample count).
        matvecs: Operator-vector products used.
        method: ``"hutchinson"`` or ``"hutch++"``.
        exact_part: For Hutch++, ``tr(Q^T A Q)`` (the deterministic low-rank part).
        p: Operator size.
    """

    estimate: float
    std_error: float
    matvecs: int
    method: str
    exact_part: float = 0.0
    p: int = 0

    @property
    def relative_std_error(self) -> float:
        return self.std_error / abs(self.estimate) if self.estimate else math.inf

    def __str__(self) -> str:
        rows = [(self.method, self.estimate, self.std_error, self.matvecs, self.p)]
        return table(["method", "trace", "std. error", "matvecs", "p"], rows, "Trace estimate")

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimate": self.estimate,
            "std_error": self.std_error,
            "matvecs": self.matvecs,
            "method": self.method,
            "exact_part": self.exact_part,
            "p": self.p,
        }


def hutchinson_trace(
    op: Any,
    num_matvecs: int = 100,
    *,
    distribution: str = "rademacher",
    block_size: int = 32,
    seed: int = 0,
    progress: bool | None = None,
) -> TraceEstimate:
    """Hutchinson's estimator ``tr(A) ~= (1/n) sum_i z_i^T A z_i`` with a standard error.

    Args:
        op: Operator (see :func:`wdecomp.linop.aslinop`).
        num_matvecs: Number of probes ``n`` (one product each).
        distribution: ``"rademacher"`` (lower variance) or ``"gaussian"``.
        block_size: Probes per batched product.
        seed: Seed of the probes.
        progress: tqdm bar (default: only on a TTY).
    """
    _check_counts(num_matvecs, block_size, minimum=1)
    A = aslinop(op)
    mv0 = A.matvecs
    p = A.shape[0]
    samples = [ZAZ.sum(0).double().cpu() for _, ZAZ in
               probe_products(A, num_matvecs, distribution, block_size, seed, "hutchinson", progress)]
    x = _finite(torch.cat(samples), "hutchinson_trace")
    se = float(x.std() / math.sqrt(len(x))) if len(x) > 1 else math.inf
    return TraceEstimate(float(x.mean()), se, A.matvecs - mv0, "hutchinson", 0.0, p)


def hutchpp_trace(
    op: Any,
    num_matvecs: int = 300,
    *,
    distribution: str = "rademacher",
    block_size: int = 64,
    seed: int = 0,
    progress: bool | None = None,
) -> TraceEstimate:
    """Hutch++ (Meyer et al. 2021, arXiv 2010.09649): low-rank deflation plus Hutchinson.

    Uses ``k = num_matvecs // 3`` sketch vectors ``S``, ``Q = orth(A S)`` ``(p, k)``, the
    exact ``tr(Q^T A Q)`` (``k`` products) and Hutchinson with the remaining
    ``num_matvecs - 2k`` probes on ``(I - QQ^T) A (I - QQ^T)``. Holds ``Q`` (``k``
    parameter-sized vectors) in memory. The standard error is that of the Hutchinson part.

    Args:
        op: Operator (see :func:`wdecomp.linop.aslinop`).
        num_matvecs: Total products ``m`` (at least 3).
        distribution: Probe distribution for ``S`` and the Hutchinson part.
        block_size: Columns per batched product.
        seed: Seed of the probes.
        progress: tqdm bar (default: only on a TTY).
    """
    _check_counts(num_matvecs, block_size, minimum=3)
    A = aslinop(op)
    mv0 = A.matvecs
    p = A.shape[0]
    gen = torch.Generator().manual_seed(seed)
    k = min(num_matvecs // 3, p)
    nh = num_matvecs - 2 * k

    def blocked(X: torch.Tensor) -> torch.Tensor:
        return torch.cat([A.matmat(X[:, s : s + block_size]) for s in range(0, X.shape[1], block_size)], 1)

    with progress_bar(total=num_matvecs, desc="hutch++", enabled=progress) as bar:
        S = probes(p, k, distribution, gen, A.dtype, A.device)
        Q, _ = torch.linalg.qr(blocked(S))
        del S
        bar.update(k)
        exact = 0.0
        for s in range(0, k, block_size):
            Qs = Q[:, s : s + block_size]
            exact += float((Qs * A.matmat(Qs)).sum())
        bar.update(k)
        samples = []
        for s in range(0, nh, block_size):
            n = min(block_size, nh - s)
            G = probes(p, n, distribution, gen, A.dtype, A.device)
            G -= Q @ (Q.T @ G)
            AG = A.matmat(G)
            AG -= Q @ (Q.T @ AG)
            samples.append((G * AG).sum(0).double().cpu())
            bar.update(n)
    _finite(torch.tensor([exact], dtype=torch.float64), "hutchpp_trace")
    if samples:
        x = _finite(torch.cat(samples), "hutchpp_trace")
        rest = float(x.mean())
        se = float(x.std() / math.sqrt(len(x))) if len(x) > 1 else math.inf
    else:
        rest, se = 0.0, 0.0 if k == p else math.inf
    return TraceEstimate(exact + rest, se, A.matvecs - mv0, "hutch++", exact, p)


def _check_counts(num_matvecs: int, block_size: int, minimum: int) -> None:
    if num_matvecs < minimum or block_size < 1:
        raise ArgumentError(
            f"a trace estimate needs num_matvecs >= {minimum} and block_size >= 1 "
            f"(got num_matvecs={num_matvecs}, block_size={block_size})"
        )


def _finite(x: torch.Tensor, who: str) -> torch.Tensor:
    if not torch.isfinite(x).all():
        raise NonFiniteError(
            f"{who}: the operator's products are NaN or infinite; a trace of such an operator means "
            "nothing — check the loss and the weights (wd.Objective reports non-finite losses)"
        )
    return x
