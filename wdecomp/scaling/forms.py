"""The three law forms: Chinchilla's ``E + A/N**alpha + B/D**beta``, Kaplan's, and ``E + A/C**alpha``.

Each is a frozen dataclass implementing :class:`~wdecomp.scaling.base.ScalingLaw` with closed-form
inverses; :func:`~wdecomp.scaling.base.law_from_dict` rebuilds any of them from JSON
(each registers its ``kind`` when defined).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wdecomp.scaling.base import (
    FLOPS_PER_PF_DAY,
    FittedRange,
    ScalingLaw,
    TwoVariableLaw,
    _as_array,
    _check_constants,
    _out,
)

__all__ = ["ChinchillaLaw", "ComputeLaw", "KaplanLaw"]


# --------------------------------------------------------------------------------------------
# Chinchilla form


@dataclass(frozen=True)
class ChinchillaLaw(TwoVariableLaw):
    r"""``L(N, D) = E + A / N**alpha + B / D**beta`` (Hoffmann et al. 2022, arXiv 2203.15556, eq. 2).

    Under ``C = 6 N D`` the loss is minimised in closed form (Hoffmann et al., eq. 4; Appendix D)::

        G = (alpha A / (beta B)) ** (1 / (alpha + beta))
        N_opt(C) = G (C/6) ** a,   D_opt(C) = (C/6) ** b / G,   a = beta/(alpha+beta), b = 1 - a

    and on that frontier the reducible loss is a single power law of compute::

        L*(C) = E + K (C/6) ** -gamma,   gamma = alpha beta / (alpha + beta),
        K = A G**-alpha + B G**beta,

    so both inverses are closed form: ``C(L) = 6 (K / (L - E)) ** (1/gamma)`` and
    ``N(L, D) = (A / (L - E - B / D**beta)) ** (1/alpha)``.

    Attributes:
        E: irreducible loss (nats/token).
        A, alpha: model-size term.
        B, beta: data term.
        name, source: labels for messages and JSON.
        fitted_range: where the law was fitted (for extrapolation warnings).
    """

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    name: str = "chinchilla-form"
    source: str = ""
    fitted_range: FittedRange = field(default_factory=FittedRange)
    loss_unit: str = "nats/token"
    data: str = ""
    kind = "chinchilla"
    _floor_formula = "E + B/D^beta, an infinitely large model"

    def __post_init__(self) -> None:
        _check_constants(self, positive=("A", "B", "alpha", "beta"), nonnegative=("E",))

    @property
    def irreducible_loss(self) -> float:
        return float(self.E)

    def params(self) -> dict[str, float]:
        return {"E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta}

    # frontier constants
    @property
    def G(self) -> float:
        """``(alpha A / (beta B)) ** (1/(alpha+beta))``: sets ``N_opt / (C/6)**a``."""
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    @property
    def exponent_a(self) -> float:
        """``a = beta / (alpha + beta)`` in ``N_opt ∝ C**a`` (Hoffmann et al. Table 2)."""
        return self.beta / (self.alpha + self.beta)

    @property
    def exponent_b(self) -> float:
        """``b = alpha / (alpha + beta)`` in ``D_opt ∝ C**b``."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def gamma(self) -> float:
        """Frontier exponent ``alpha beta / (alpha + beta)`` in ``L*(C) - E ∝ C**-gamma``."""
        return self.alpha * self.beta / (self.alpha + self.beta)

    @property
    def K(self) -> float:
        """Frontier prefactor: ``L*(C) = E + K (C/6)**-gamma``."""
        g = self.G
        return self.A * g ** (-self.alpha) + self.B * g**self.beta

    def _loss(self, n: np.ndarray, d: np.ndarray) -> np.ndarray:
        return self.E + self.A * n ** (-self.alpha) + self.B * d ** (-self.beta)

    def loss_floor(self, tokens: Any) -> float | np.ndarray:
        """``E + B / D**beta``: the loss of an infinitely large model trained on ``D`` tokens."""
        d, scalar = _as_array(tokens, "D")
        return _out(self.E + self.B * d ** (-self.beta), scalar)

    def _allocation(self, compute: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c6 = compute / 6.0
        n = self.G * c6**self.exponent_a
        return n, c6 / n

    def _optimal_loss(self, compute: np.ndarray) -> np.ndarray:
        return self.E + self.K * (compute / 6.0) ** (-self.gamma)

    def _log_compute(self, loss: np.ndarray) -> np.ndarray:
        return math.log(6.0) + (math.log(self.K) - np.log(loss - self.E)) / self.gamma

    def _log_params(self, loss: np.ndarray, d: np.ndarray) -> np.ndarray:
        gap = loss - self.E - self.B * d ** (-self.beta)
        return (math.log(self.A) - np.log(gap)) / self.alpha


# --------------------------------------------------------------------------------------------
# Kaplan form


@dataclass(frozen=True)
class KaplanLaw(TwoVariableLaw):
    r"""Kaplan et al. 2020 (arXiv 2001.08361): no irreducible term; its own compute frontier.

    Loss of ``N`` non-embedding parameters trained (with early stopping) on ``D`` tokens (eq. 1.5)::

        L(N, D) = [ (N_c / N) ** (alpha_N / alpha_D) + D_c / D ] ** alpha_D

    Compute frontier (eq. 1.3), ``C_min`` in PF-days of non-embedding compute::

        L(C_min) = (C_c / C_min) ** alpha_C

    and the compute-efficient allocation of Table 6: ``N_opt = N_e C_min ** p_N`` (1.3e9, 0.73)
    and ``D_opt = D_e C_min ** p_D`` (2e10 tokens, 0.27).

    **Critical-batch factor.** Kaplan's ``C_min`` is the compute of training at a batch much
    smaller than the critical batch; training at the critical batch ``B = B_crit`` takes
    ``C = (1 + B/B_crit) C_min = 2 C_min`` (Kaplan eq. 5.5). Hoffmann et al. 2022 (arXiv
    2203.15556, appendix D.4) compare with Kaplan that way, so the default here is
    ``batch_factor = 2``: actual compute ``C = batch_factor * C_min``, in FLOPs
    (``C_min = C / (batch_factor * 8.64e19)`` PF-days). ``batch_factor = 1`` reads ``C_min`` as
    actual compute. With the default, the Kaplan-optimal size at 1e21 FLOPs is 4.68e9 parameters
    (checked in the tests), the number in Hoffmann's comparison.

    The Table-6 allocation does not satisfy ``C = 6 N D`` exactly: ``6 N_e D_e C_min = 1.56e20 C_min``
    FLOPs, 0.90 of ``2 C_min`` at the default factor. The equivalents use only the frontier
    (``optimal_loss`` / ``compute_for_loss``), which is Kaplan's own fit and not the minimum of
    ``L(N, D)`` under ``C = 6 N D``. ``N`` counts non-embedding parameters only.

    Inverses (closed form)::

        C(L) = batch_factor * C_c * L ** (-1 / alpha_C)               (PF-days)
        N(L, D) = N_c / (L ** (1/alpha_D) - D_c / D) ** (alpha_D / alpha_N)

    Attributes:
        alpha_N, N_c: model-size law, ``N_c`` in non-embedding parameters.
        alpha_D, D_c: data law, ``D_c`` in tokens.
        alpha_C, C_c: compute law, ``C_c`` in PF-days of ``C_min``.
        N_e, p_N: compute-efficient model size ``N_opt = N_e C_min**p_N`` (Table 6).
        D_e, p_D: compute-efficient data ``D_opt = D_e C_min**p_D`` (Table 6).
        batch_factor: actual compute per unit of ``C_min`` (2: Hoffmann's comparison; 1: none).
    """

    alpha_N: float
    N_c: float
    alpha_D: float
    D_c: float
    alpha_C: float
    C_c: float
    N_e: float = 1.3e9
    p_N: float = 0.73
    D_e: float = 2e10
    p_D: float = 0.27
    batch_factor: float = 2.0
    name: str = "kaplan-form"
    source: str = ""
    fitted_range: FittedRange = field(default_factory=FittedRange)
    loss_unit: str = "nats/token"
    data: str = ""
    kind = "kaplan"
    _floor_formula = "(D_c/D)^alpha_D, an infinitely large model"

    def __post_init__(self) -> None:
        _check_constants(
            self,
            positive=("alpha_N", "N_c", "alpha_D", "D_c", "alpha_C", "C_c", "N_e", "p_N", "D_e", "p_D"),
            nonnegative=(),
        )
        if not (math.isfinite(self.batch_factor) and self.batch_factor >= 1.0):
            raise ValueError(f"batch_factor must be >= 1 (C = batch_factor * C_min), got {self.batch_factor!r}")

    @property
    def irreducible_loss(self) -> float:
        return 0.0

    def params(self) -> dict[str, float]:
        return {
            "alpha_N": self.alpha_N,
            "N_c": self.N_c,
            "alpha_D": self.alpha_D,
            "D_c": self.D_c,
            "alpha_C": self.alpha_C,
            "C_c": self.C_c,
            "N_e": self.N_e,
            "p_N": self.p_N,
            "D_e": self.D_e,
            "p_D": self.p_D,
            "batch_factor": self.batch_factor,
        }

    def c_min(self, compute: Any) -> float | np.ndarray:
        """Kaplan's ``C_min`` in PF-days for actual compute ``C`` in FLOPs: ``C / (batch_factor * 8.64e19)``."""
        c, scalar = _as_array(compute, "compute")
        return _out(c / (self.batch_factor * FLOPS_PER_PF_DAY), scalar)

    def _loss(self, n: np.ndarray, d: np.ndarray) -> np.ndarray:
        r = self.alpha_N / self.alpha_D
        return ((self.N_c / n) ** r + self.D_c / d) ** self.alpha_D

    def loss_floor(self, tokens: Any) -> float | np.ndarray:
        """``(D_c / D) ** alpha_D``: the loss of an infinitely large model on ``D`` tokens."""
        d, scalar = _as_array(tokens, "D")
        return _out((self.D_c / d) ** self.alpha_D, scalar)

    def _allocation(self, compute: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cmin = compute / (self.batch_factor * FLOPS_PER_PF_DAY)
        return self.N_e * cmin**self.p_N, self.D_e * cmin**self.p_D

    def _optimal_loss(self, compute: np.ndarray) -> np.ndarray:
        return (self.C_c * self.batch_factor * FLOPS_PER_PF_DAY / compute) ** self.alpha_C

    def _log_compute(self, loss: np.ndarray) -> np.ndarray:
        return math.log(self.C_c * self.batch_factor * FLOPS_PER_PF_DAY) - np.log(loss) / self.alpha_C

    def _log_params(self, loss: np.ndarray, d: np.ndarray) -> np.ndarray:
        gap = loss ** (1.0 / self.alpha_D) - self.D_c / d
        return math.log(self.N_c) - (self.alpha_D / self.alpha_N) * np.log(gap)


# --------------------------------------------------------------------------------------------
# one-variable compute law


@dataclass(frozen=True)
class ComputeLaw(ScalingLaw):
    r"""``L(C) = E + A / C**alpha``: for sweeps that record only (compute, loss).

    The curve is taken to be the compute-optimal frontier itself (fit it to the lower envelope
    of a sweep), so ``optimal_loss(C) == loss(C)`` and ``compute_for_loss(L) =
    (A / (L - E)) ** (1/alpha)``. It is the Chinchilla frontier's form (``E + K (C/6)**-gamma``)
    without committing to ``N`` and ``D``; :func:`~wdecomp.scaling.parameter_equivalent` needs a
    law of ``N`` and ``D`` and refuses this one.

    Attributes:
        E, A, alpha: the constants.
        compute_unit: unit of ``C`` (whatever the fitted points used; FLOPs recommended).
    """

    E: float
    A: float
    alpha: float
    name: str = "compute-law"
    source: str = ""
    fitted_range: FittedRange = field(default_factory=FittedRange)
    compute_unit: str = "FLOPs"
    loss_unit: str = "nats/token"
    data: str = ""
    kind = "compute"

    def __post_init__(self) -> None:
        _check_constants(self, positive=("A", "alpha"), nonnegative=("E",))

    @property
    def irreducible_loss(self) -> float:
        return float(self.E)

    def params(self) -> dict[str, float]:
        return {"E": self.E, "A": self.A, "alpha": self.alpha}

    def _extra_dict(self) -> dict[str, Any]:
        return {"compute_unit": self.compute_unit}

    def loss(self, compute: Any) -> float | np.ndarray:
        """``L(C)``; the same as :meth:`optimal_loss`."""
        return self.optimal_loss(compute)

    def _optimal_loss(self, compute: np.ndarray) -> np.ndarray:
        return self.E + self.A * compute ** (-self.alpha)

    def _log_compute(self, loss: np.ndarray) -> np.ndarray:
        return (math.log(self.A) - np.log(loss - self.E)) / self.alpha
