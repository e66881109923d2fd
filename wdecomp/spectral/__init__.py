"""Spectra and degeneracy of symmetric (curvature) operators.

* :func:`eigh` — extreme eigenpairs by thick-restart block Lanczos (:mod:`.lanczos`).
* :func:`hutchinson_trace`, :func:`hutchpp_trace` — stochastic trace (:mod:`.trace`).
* :func:`hutchinson_diagonal` — stochastic diagonal (:mod:`.diagonal`).
* :func:`slq_density`, :func:`plot_density` — spectral density by stochastic Lanczos
  quadrature (:mod:`.density`).
* :func:`rank` — numerical rank and nullity, per parameter group (:mod:`.rank`).
* :func:`bootstrap` — error bars over data subsamples (:mod:`.bootstrap`).

Every function accepts what :func:`as_operator` accepts: a curvature operator, a symmetric
tensor, a scipy ``LinearOperator``, or anything with ``.shape`` and ``@``.
"""

from wdecomp.spectral.lanczos import EigenResult, eigh
from wdecomp.spectral.operator import OperatorCapabilityError, SpectralOperator, as_operator, to_dense

__all__ = [
    "EigenResult",
    "OperatorCapabilityError",
    "SpectralOperator",
    "as_operator",
    "eigh",
    "to_dense",
]
