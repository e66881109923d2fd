"""Stochastic diagonal estimation (Bekas, Kokiopoulou & Saad 2007).

For probes ``z_i`` with independent entries, ``E[z_i ⊙ A z_i] = diag(A) ⊙ E[z ⊙ z]``, so

    diag(A) ~= (sum_i z_i ⊙ A z_i) / (sum_i z_i ⊙ z_i)

(Bekas, Kokiopoulou & Saad 2007, "An estimator for the diagonal of a matrix", Appl. Numer.
Math. 57(11-12):1214-1229). With Rademacher probes ``z ⊙ z = 1`` and entry ``j`` has variance
``sum_{l != j} A_jl^2 / n``: exact for diagonal matrices, noisy when rows carry much
off-diagonal mass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from wdecomp.linop import aslinop
from wdecomp.spectral._probes import probe_products
from wdecomp.spectral._table import table, to_jsonable

__all__ = ["DiagonalEstimate", "hutchinson_diagonal"]


@dataclass(frozen=True, eq=False)
class DiagonalEstimate:
    """Estimated diagonal ``(p,)`` with per-entry standard errors ``(p,)``."""

    estimate: Tensor
    std_error: Tensor
    matvecs: int
    params: Any = None

    def named(self) -> dict[str, Tensor]:
        """The diagonal as named parameter tensors (needs an operator with ``params``)."""
        if self.params is None:
            raise ValueError("this operator has no parameter set")
        return self.params.unflatten(self.estimate)

    def __str__(self) -> str:
        if self.params is not None:
            rows = [
                (n, float(self.estimate[s].sum()), float(self.std_error[s].pow(2).sum().sqrt()))
                for n, s in self.params.slices.items()
            ]
        else:
            rows = [("all", float(self.estimate.sum()), float(self.std_error.pow(2).sum().sqrt()))]
        return table(
            ["group", "sum of diagonal", "std. error"], rows, f"Hutchinson diagonal ({self.matvecs} matvecs)"
        )

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(
            {"estimate": self.estimate, "std_error": self.std_error, "matvecs": self.matvecs}
        )


def hutchinson_diagonal(
    op: Any,
    num_matvecs: int = 100,
    *,
    distribution: str = "rademacher",
    block_size: int = 32,
    seed: int = 0,
    progress: bool | None = None,
) -> DiagonalEstimate:
    """Estimate ``diag(A)`` from ``num_matvecs`` probes (Bekas et al. 2007).

    Args:
        op: Operator (see :func:`wdecomp.linop.aslinop`).
        num_matvecs: Number of probes.
        distribution: ``"rademacher"`` or ``"gaussian"``.
        block_size: Probes per batched product.
        seed: Seed of the probes.
        progress: tqdm bar (default: only on a TTY).

    Returns:
        A :class:`DiagonalEstimate`; ``std_error`` is the per-entry sample standard deviation
        of ``z ⊙ A z`` over ``sqrt(n)`` (Rademacher probes).
    """
    A = aslinop(op)
    mv0 = A.matvecs
    p = A.shape[0]
    acc = torch.zeros(p, dtype=torch.float64, device=A.device)
    acc2 = torch.zeros_like(acc)
    norm = torch.zeros_like(acc)
    for Z, ZAZ in probe_products(A, num_matvecs, distribution, block_size, seed, "diagonal", progress):
        X = ZAZ.double()
        acc += X.sum(1)
        acc2 += X.pow(2).sum(1)
        norm += Z.double().pow(2).sum(1)
    est = acc / norm
    mean = acc / num_matvecs
    var = (acc2 / num_matvecs - mean.pow(2)).clamp_min(0) * num_matvecs / max(num_matvecs - 1, 1)
    se = var.sqrt() / math.sqrt(num_matvecs)
    return DiagonalEstimate(est.to(A.dtype), se.to(A.dtype), A.matvecs - mv0, A.params)
