"""Spectra and degeneracy of symmetric (curvature) operators.

* :func:`eigh` — extreme eigenpairs by thick-restart block Lanczos (:mod:`.lanczos`).
* :func:`hutchinson_trace`, :func:`hutchpp_trace` — stochastic trace (:mod:`.trace`).
* :func:`hutchinson_diagonal` — stochastic diagonal (:mod:`.diagonal`).
* :func:`slq_density`, :func:`plot_density` — spectral density by stochastic Lanczos
  quadrature (:mod:`.density`).
* :func:`rank` — numerical rank and nullity, per parameter group (:mod:`.rank`).
* :func:`bootstrap` — error bars over data subsamples (:mod:`.bootstrap`).

Every function accepts what :func:`wdecomp.linop.aslinop` accepts: a curvature operator (any
:class:`wdecomp.linop.LinOp`), a symmetric tensor or array, a scipy ``LinearOperator``, or anything
with ``.shape`` and ``@``; :class:`OperatorCapabilityError` is re-exported from :mod:`wdecomp.linop`.
"""

from wdecomp.linop import OperatorCapabilityError
from wdecomp.spectral.bootstrap import (
    BootstrapResult,
    bootstrap,
    bootstrap_eigenvalues,
    bootstrap_rank,
    bootstrap_trace,
)
from wdecomp.spectral.density import SpectralDensity, lanczos_quadrature, plot_density, slq_density
from wdecomp.spectral.diagonal import DiagonalEstimate, hutchinson_diagonal
from wdecomp.spectral.lanczos import EigenResult, eigh
from wdecomp.spectral.rank import RankResult, rank
from wdecomp.spectral.trace import TraceEstimate, hutchinson_trace, hutchpp_trace

__all__ = [
    "BootstrapResult",
    "DiagonalEstimate",
    "EigenResult",
    "RankResult",
    "SpectralDensity",
    "TraceEstimate",
    "bootstrap",
    "bootstrap_eigenvalues",
    "bootstrap_rank",
    "bootstrap_trace",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "hutchpp_trace",
    "lanczos_quadrature",
    "plot_density",
    "rank",
    "slq_density",
    "OperatorCapabilityError",
    "eigh",
]
