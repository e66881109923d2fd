"""Error bars over data: re-estimate a spectral quantity on bootstrap resamples of batches.

Users of existing tools see the top Hessian eigenvalue swing by 10x between runs and cannot
tell noise from signal. The nonparametric bootstrap (Efron 1979, "Bootstrap methods: another
look at the jackknife", Ann. Statist. 7(1)) answers it: draw ``B`` batch indices with
replacement, rebuild the operator on that multiset (``op.resample(indices)``: each batch
weighted by its multiplicity and size, so the objective stays an exact mean), recompute the
statistic, and repeat. The spread of the replicates is the sampling error of the statistic
over the data; the percentile interval ``[q_{a/2}, q_{1-a/2}]`` is reported with the
standard deviation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from wdecomp.linop import aslinop
from wdecomp.progress import progress_bar
from wdecomp.spectral._table import table, to_jsonable
from wdecomp.spectral.lanczos import eigh
from wdecomp.spectral.rank import rank
from wdecomp.spectral.trace import hutchpp_trace

__all__ = ["BootstrapResult", "bootstrap", "bootstrap_eigenvalues", "bootstrap_rank", "bootstrap_trace"]


@dataclass(frozen=True, eq=False)
class BootstrapResult:
    """A statistic on the full data with bootstrap error bars.

    Attributes:
        estimate: ``(d,)`` the statistic on all batches.
        mean: ``(d,)`` mean over replicates.
        std: ``(d,)`` standard deviation over replicates (the bootstrap standard error).
        low, high: ``(d,)`` percentile interval at ``confidence``.
        samples: ``(n_resamples, d)`` replicates.
        confidence: Coverage of ``[low, high]``.
        num_batches: Batches resampled.
        label: Name of the statistic.
    """

    estimate: Tensor
    mean: Tensor
    std: Tensor
    low: Tensor
    high: Tensor
    samples: Tensor
    confidence: float
    num_batches: int
    label: str = "statistic"

    def __str__(self) -> str:
        rows = [
            (i, float(e), float(m), float(s), f"[{float(lo):.6g}, {float(hi):.6g}]")
            for i, (e, m, s, lo, hi) in enumerate(zip(self.estimate, self.mean, self.std, self.low, self.high))
        ]
        head = (
            f"Bootstrap of {self.label}: {self.samples.shape[0]} resamples of {self.num_batches} batches, "
            f"{100 * self.confidence:.0f}% percentile intervals"
        )
        return table(["#", "full data", "mean", "std", "interval"], rows, head)

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(
            {
                "label": self.label,
                "estimate": self.estimate,
                "mean": self.mean,
                "std": self.std,
                "low": self.low,
                "high": self.high,
                "samples": self.samples,
                "confidence": self.confidence,
                "num_batches": self.num_batches,
            }
        )


def _as_vec(x: Any) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().double().cpu().reshape(-1)
    if hasattr(x, "rank") and hasattr(x, "threshold"):
        return torch.tensor([float(x.rank)], dtype=torch.float64)
    if hasattr(x, "eigenvalues"):
        return x.eigenvalues.detach().double().cpu().reshape(-1)
    if hasattr(x, "estimate") and not isinstance(x.estimate, Tensor):
        return torch.tensor([float(x.estimate)], dtype=torch.float64)
    return torch.as_tensor(x, dtype=torch.float64).reshape(-1)


def bootstrap(
    op: Any,
    statistic: Callable[[Any], Any],
    n_resamples: int = 20,
    *,
    confidence: float = 0.9,
    seed: int = 0,
    label: str = "statistic",
    progress: bool | None = None,
) -> BootstrapResult:
    """Bootstrap a statistic of an operator over the objective's batches.

    Args:
        op: A curvature operator with ``resample`` and ``num_batches``.
        statistic: ``f(op) -> float | Tensor | EigenResult | TraceEstimate | RankResult``
            (results are reduced to eigenvalues, estimate or rank).
        n_resamples: Bootstrap replicates.
        confidence: Coverage of the percentile interval.
        seed: Seed of the resampling.
        label: Name shown in the table.
        progress: tqdm bar (default: only on a TTY).

    Raises:
        OperatorCapabilityError: the operator cannot be resampled (a plain matrix).
    """
    A = aslinop(op)
    nb = A.num_batches
    gen = torch.Generator().manual_seed(seed)
    full = _as_vec(statistic(A))
    reps = []
    with progress_bar(total=n_resamples, desc="bootstrap", enabled=progress) as bar:
        for _ in range(n_resamples):
            ix = torch.randint(0, nb, (nb,), generator=gen).tolist()
            reps.append(_as_vec(statistic(A.resample(ix))))
            bar.update(1)
    S = torch.stack(reps)
    a = (1 - confidence) / 2
    q = torch.quantile(S, torch.tensor([a, 1 - a], dtype=torch.float64), dim=0)
    return BootstrapResult(full, S.mean(0), S.std(0), q[0], q[1], S, confidence, nb, label)


def bootstrap_eigenvalues(
    op: Any, k: int = 1, n_resamples: int = 20, *, seed: int = 0, **eigh_kw: Any
) -> BootstrapResult:
    """Bootstrap the top-``k`` eigenvalues (keyword arguments go to :func:`eigh`)."""
    return bootstrap(op, lambda o: eigh(o, k, **eigh_kw), n_resamples, seed=seed, label=f"top-{k} eigenvalues")


def bootstrap_trace(op: Any, n_resamples: int = 20, *, seed: int = 0, **trace_kw: Any) -> BootstrapResult:
    """Bootstrap the Hutch++ trace (keyword arguments go to :func:`hutchpp_trace`)."""
    return bootstrap(op, lambda o: hutchpp_trace(o, **trace_kw), n_resamples, seed=seed, label="trace")


def bootstrap_rank(op: Any, n_resamples: int = 20, *, seed: int = 0, **rank_kw: Any) -> BootstrapResult:
    """Bootstrap the numerical rank (keyword arguments go to :func:`rank`)."""
    return bootstrap(op, lambda o: rank(o, **rank_kw), n_resamples, seed=seed, label="rank")
