"""Scaling-law objects and the published fits.

Every law answers the same questions (the :class:`ScalingLaw` protocol), so the equivalents in
:mod:`wdecomp.scaling.equivalents` work on any of them:

* ``optimal_loss(C)``: the loss on the law's compute-optimal frontier at training compute ``C``;
* ``compute_for_loss(L)`` / ``log_compute_for_loss(L)``: its inverse, the compute on that frontier
  that reaches loss ``L``;
* ``irreducible_loss``: the loss no finite compute reaches (``E``; 0 for Kaplan's law);
* ``fitted_range``: where the law was fitted, used to warn about extrapolation;
* ``to_dict()`` / :func:`law_from_dict`: a JSON round trip.

Laws of model size ``N`` and training tokens ``D`` (:class:`TwoVariableLaw`) add ``loss(N, D)``,
``optimal_allocation(C)`` and ``params_for_loss(L, D)``.

Compute is in FLOPs throughout the API (Kaplan's PF-days are converted: 1 PF-day =
1e15 * 86400 = 8.64e19 FLOPs), except for a :class:`ComputeLaw`, whose compute is in whatever unit
its points were given in (``compute_unit``). Losses are in nats per token.

All functions take scalars or numpy arrays and return a ``float`` for scalar input, an array
otherwise.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from wdecomp.errors import ScalingLawRangeError

__all__ = [
    "CHINCHILLA",
    "CHINCHILLA_TEX",
    "EPOCH",
    "FLOPS_PER_PF_DAY",
    "KAPLAN",
    "ChinchillaLaw",
    "ComputeLaw",
    "ExtrapolationWarning",
    "FittedRange",
    "KaplanLaw",
    "ScalingLaw",
    "TwoVariableLaw",
    "law_from_dict",
]

FLOPS_PER_PF_DAY = 1e15 * 86400.0
"""One petaflop/s-day in floating-point operations (Kaplan et al. 2020, section 1.3): 8.64e19."""


class ExtrapolationWarning(UserWarning):
    """A query lies outside the range of (N, D, C, loss) a scaling law was fitted on."""


# --------------------------------------------------------------------------------------------
# helpers


def _as_array(x: Any, what: str) -> tuple[np.ndarray, bool]:
    """``x`` as a float64 array, and whether it was a scalar."""
    arr = np.asarray(x, dtype=np.float64)
    return arr, arr.ndim == 0


def _out(x: np.ndarray, scalar: bool) -> float | np.ndarray:
    return float(x) if scalar else x


def _check_positive(x: np.ndarray, what: str, law: ScalingLaw) -> None:
    """Raise ScalingLawRangeError unless every entry of ``x`` is finite and > 0."""
    bad = ~np.isfinite(x)
    if bad.any():
        raise ScalingLawRangeError(
            f"{what} must be finite, got {float(x[bad].ravel()[0])!r} (law {law.name!r}, "
            f"irreducible loss E={law.irreducible_loss:g})"
        )
    if (x <= 0).any():
        raise ScalingLawRangeError(
            f"{what} must be positive, got {float(x[x <= 0].ravel()[0])!r} (law {law.name!r}, "
            f"irreducible loss E={law.irreducible_loss:g})"
        )


def _check_loss(loss: np.ndarray, floor: np.ndarray | float, law: ScalingLaw, where: str) -> None:
    """Raise ScalingLawRangeError for a NaN, infinite, negative or unreachable loss.

    ``where`` names the floor, e.g. ``"the irreducible loss E"``.
    """
    _check_positive(loss, "loss", law)
    below = loss <= floor
    if np.any(below):
        shape = np.broadcast_shapes(np.shape(loss), np.shape(floor))
        first = tuple(np.argwhere(np.broadcast_to(below, shape))[0])
        lval = float(np.broadcast_to(loss, shape)[first])
        fval = float(np.broadcast_to(np.asarray(floor, dtype=float), shape)[first])
        raise ScalingLawRangeError(
            f"loss {lval:.6g} is at or below {where} = {fval:.6g} of law {law.name!r} "
            f"(irreducible loss E={law.irreducible_loss:g}); no finite resource reaches it"
        )


def _stacklevel() -> int:
    """Stack level of the first frame outside wdecomp.scaling, so warnings point at user code."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame = sys._getframe(1)
    level = 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == here:
        frame = frame.f_back
        level += 1
    return level


def _check_constants(law: Any, positive: tuple[str, ...], nonnegative: tuple[str, ...]) -> None:
    """Raise ``ValueError`` unless the named constants are finite and positive (or >= 0)."""
    for k in positive:
        v = getattr(law, k)
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{k} must be finite and positive, got {v!r}")
    for k in nonnegative:
        v = getattr(law, k)
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{k} must be finite and >= 0, got {v!r}")


@dataclass(frozen=True)
class FittedRange:
    """Where a law was fitted; any bound may be ``None`` (unknown).

    Attributes:
        n_min, n_max: model sizes (parameters) of the fitted runs.
        d_min, d_max: training tokens of the fitted runs.
        c_min, c_max: training compute of the fitted runs, in the law's compute unit.
        loss_min, loss_max: losses of the fitted runs.
    """

    n_min: float | None = None
    n_max: float | None = None
    d_min: float | None = None
    d_max: float | None = None
    c_min: float | None = None
    c_max: float | None = None
    loss_min: float | None = None
    loss_max: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> FittedRange:
        if not d:
            return cls()
        return cls(**{k: (None if v is None else float(v)) for k, v in d.items()})

    def check(self, law_name: str, **values: Any) -> None:
        """Warn (ExtrapolationWarning) for each quantity outside its fitted interval.

        Args:
            law_name: named in the message.
            **values: ``n=..., d=..., c=..., loss=...`` scalars or arrays.
        """
        labels = {"n": "N (parameters)", "d": "D (tokens)", "c": "compute", "loss": "loss"}
        for key, val in values.items():
            if val is None:
                continue
            lo, hi = getattr(self, f"{key}_min"), getattr(self, f"{key}_max")
            arr = np.asarray(val, dtype=float)
            if arr.size == 0:
                continue
            vmin, vmax = float(np.nanmin(arr)), float(np.nanmax(arr))
            # Tolerate round-off at the edges (e.g. a loss recomputed from a fitted point).
            if lo is not None and vmin < lo * (1 - 1e-9):
                warnings.warn(
                    f"{labels[key]} {vmin:.4g} is below the range law {law_name!r} was fitted "
                    f"on ([{lo:.4g}, {hi if hi is not None else float('nan'):.4g}]); "
                    "the number is an extrapolation",
                    ExtrapolationWarning,
                    stacklevel=_stacklevel(),
                )
            if hi is not None and vmax > hi * (1 + 1e-9):
                warnings.warn(
                    f"{labels[key]} {vmax:.4g} is above the range law {law_name!r} was fitted "
                    f"on ([{lo if lo is not None else float('nan'):.4g}, {hi:.4g}]); "
                    "the number is an extrapolation",
                    ExtrapolationWarning,
                    stacklevel=_stacklevel(),
                )


# --------------------------------------------------------------------------------------------
# protocol


class ScalingLaw(ABC):
    """Common protocol of every scaling law (see the module docstring).

    Subclasses are frozen dataclasses with at least ``name``, ``source`` and ``fitted_range``.
    """

    name: str
    source: str
    fitted_range: FittedRange
    kind: str = "abstract"

    @property
    @abstractmethod
    def irreducible_loss(self) -> float:
        """The infimum of the loss over all finite compute (``E``)."""

    @abstractmethod
    def _log_compute(self, loss: np.ndarray) -> np.ndarray:
        """``log C`` on the frontier for valid losses (no checks)."""

    @abstractmethod
    def _optimal_loss(self, compute: np.ndarray) -> np.ndarray:
        """Loss on the frontier at compute ``C`` (no checks)."""

    @abstractmethod
    def params(self) -> dict[str, float]:
        """The law's constants by name."""

    # public API ---------------------------------------------------------------------------

    def optimal_loss(self, compute: Any) -> float | np.ndarray:
        """Loss on the compute-optimal frontier at training compute ``C``.

        Args:
            compute: training compute, scalar or array (FLOPs; a ComputeLaw's own unit).

        Returns:
            ``L*(C)``, same shape as ``compute``.
        """
        c, scalar = _as_array(compute, "compute")
        _check_positive(c, "compute", self)
        self.fitted_range.check(self.name, c=c)
        return _out(self._optimal_loss(c), scalar)

    def log_compute_for_loss(self, loss: Any) -> float | np.ndarray:
        """Natural log of :meth:`compute_for_loss`; never overflows.

        Raises:
            ScalingLawRangeError: a loss is NaN, infinite, negative, or at or below ``E``.
        """
        lv, scalar = _as_array(loss, "loss")
        _check_loss(lv, self.irreducible_loss, self, "the irreducible loss E")
        logc = self._log_compute(lv)
        self.fitted_range.check(self.name, loss=lv, c=np.exp(np.clip(logc, -700, 700)))
        return _out(logc, scalar)

    def compute_for_loss(self, loss: Any) -> float | np.ndarray:
        """Training compute on the compute-optimal frontier that reaches ``loss``.

        The inverse of :meth:`optimal_loss`: ``optimal_loss(compute_for_loss(L)) == L``.

        Args:
            loss: target loss(es), nats per token.

        Returns:
            ``C_eq(L)`` in FLOPs (a ComputeLaw: its own unit); ``inf`` if it overflows float64.

        Raises:
            ScalingLawRangeError: a loss is NaN, infinite, negative, or at or below ``E``.
        """
        logc = np.asarray(self.log_compute_for_loss(loss), dtype=float)
        with np.errstate(over="ignore"):
            c = np.exp(logc)
        return _out(c, logc.ndim == 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; :func:`law_from_dict` inverts it."""
        return {
            "kind": self.kind,
            "name": self.name,
            "source": self.source,
            "params": self.params(),
            "fitted_range": self.fitted_range.to_dict(),
            **self._extra_dict(),
        }

    def _extra_dict(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScalingLaw:
        """Rebuild a law from :meth:`to_dict` output."""
        law = law_from_dict(d)
        if not isinstance(law, cls):
            raise TypeError(f"dict describes a {type(law).__name__}, not a {cls.__name__}")
        return law


class TwoVariableLaw(ScalingLaw):
    """A law of model size ``N`` (parameters) and training tokens ``D``, with ``C = 6 N D``."""

    _floor_formula: str = "the infimum over N"

    @abstractmethod
    def _loss(self, n: np.ndarray, d: np.ndarray) -> np.ndarray:
        """``L(N, D)`` without checks."""

    @abstractmethod
    def loss_floor(self, tokens: Any) -> float | np.ndarray:
        """The infimum of ``L(N, D)`` over ``N`` at fixed ``D`` (loss of an infinite model)."""

    @abstractmethod
    def _log_params(self, loss: np.ndarray, d: np.ndarray) -> np.ndarray:
        """``log N`` with ``L(N, D) = loss`` (no checks)."""

    @abstractmethod
    def _allocation(self, compute: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(N_opt, D_opt)`` at compute ``C`` (no checks)."""

    def loss(self, N: Any, D: Any) -> float | np.ndarray:
        """Predicted loss of a model with ``N`` parameters trained on ``D`` tokens.

        Args:
            N: parameters, scalar or array.
            D: training tokens, broadcastable with ``N``.

        Returns:
            ``L(N, D)`` (broadcast shape).
        """
        n, sn = _as_array(N, "N")
        d, sd = _as_array(D, "D")
        _check_positive(n, "N (parameters)", self)
        _check_positive(d, "D (tokens)", self)
        self.fitted_range.check(self.name, n=n, d=d)
        return _out(self._loss(n, d), sn and sd)

    def optimal_allocation(self, compute: Any) -> tuple[float | np.ndarray, float | np.ndarray]:
        """Compute-optimal model size and token count at training compute ``C = 6 N D``.

        Args:
            compute: FLOPs, scalar or array.

        Returns:
            ``(N_opt, D_opt)`` with ``6 * N_opt * D_opt == C``.
        """
        c, scalar = _as_array(compute, "compute")
        _check_positive(c, "compute", self)
        self.fitted_range.check(self.name, c=c)
        n, d = self._allocation(c)
        return _out(n, scalar), _out(d, scalar)

    def log_params_for_loss(self, loss: Any, D: Any) -> float | np.ndarray:
        """Natural log of :meth:`params_for_loss`; never overflows."""
        lv, sl = _as_array(loss, "loss")
        d, sd = _as_array(D, "D")
        _check_positive(d, "D (tokens)", self)
        floor = np.asarray(self.loss_floor(d), dtype=float)
        _check_loss(lv, floor, self, f"the loss floor at this D ({self._floor_formula})")
        logn = self._log_params(lv, d)
        self.fitted_range.check(self.name, d=d, n=np.exp(np.clip(logn, -700, 700)), loss=lv)
        return _out(logn, sl and sd)

    def params_for_loss(self, loss: Any, D: Any) -> float | np.ndarray:
        """Parameters ``N`` that reach ``loss`` when trained on ``D`` tokens.

        The inverse of :meth:`loss` in ``N``: ``loss(params_for_loss(L, D), D) == L``.

        Raises:
            ScalingLawRangeError: a loss is NaN, infinite, negative, or at or below
                :meth:`loss_floor` of ``D`` (for Chinchilla, ``E + B / D**beta``).
        """
        logn = np.asarray(self.log_params_for_loss(loss, D), dtype=float)
        with np.errstate(over="ignore"):
            n = np.exp(logn)
        return _out(n, logn.ndim == 0)


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

    and the compute-efficient model size (Table 6 / Figure 14): ``N_opt = N_e C_min ** p_N``.

    Here compute is in FLOPs like every other law (``C_min = C / 8.64e19``); ``D_opt`` is defined
    as ``C / (6 N_opt)`` so that ``C = 6 N D`` holds (it scales as ``C**(1 - p_N) = C**0.27``, as
    in the paper). Note the paper's frontier is its own fit, not the minimum of ``L(N, D)`` under
    ``C = 6 N D`` (``L(N, D)`` describes early-stopped training on a dataset of ``D`` tokens), so
    ``loss(*optimal_allocation(C))`` differs from ``optimal_loss(C)``; the equivalents use
    ``optimal_loss`` / ``compute_for_loss``. ``N`` counts non-embedding parameters only.

    Inverses (closed form)::

        C(L) = C_c L ** (-1 / alpha_C)                                (PF-days)
        N(L, D) = N_c / (L ** (1/alpha_D) - D_c / D) ** (alpha_D / alpha_N)

    Attributes:
        alpha_N, N_c: model-size law, ``N_c`` in non-embedding parameters.
        alpha_D, D_c: data law, ``D_c`` in tokens.
        alpha_C, C_c: compute law, ``C_c`` in PF-days.
        N_e, p_N: compute-efficient model size ``N_opt = N_e C_min**p_N`` (C_min in PF-days).
    """

    alpha_N: float
    N_c: float
    alpha_D: float
    D_c: float
    alpha_C: float
    C_c: float
    N_e: float = 1.3e9
    p_N: float = 0.73
    name: str = "kaplan-form"
    source: str = ""
    fitted_range: FittedRange = field(default_factory=FittedRange)
    kind = "kaplan"
    _floor_formula = "(D_c/D)^alpha_D, an infinitely large model"

    def __post_init__(self) -> None:
        _check_constants(self, positive=("alpha_N", "N_c", "alpha_D", "D_c", "alpha_C", "C_c", "N_e", "p_N"),
                         nonnegative=())

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
        }

    def _loss(self, n: np.ndarray, d: np.ndarray) -> np.ndarray:
        r = self.alpha_N / self.alpha_D
        return ((self.N_c / n) ** r + self.D_c / d) ** self.alpha_D

    def loss_floor(self, tokens: Any) -> float | np.ndarray:
        """``(D_c / D) ** alpha_D``: the loss of an infinitely large model on ``D`` tokens."""
        d, scalar = _as_array(tokens, "D")
        return _out((self.D_c / d) ** self.alpha_D, scalar)

    def _allocation(self, compute: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = self.N_e * (compute / FLOPS_PER_PF_DAY) ** self.p_N
        return n, compute / (6.0 * n)

    def _optimal_loss(self, compute: np.ndarray) -> np.ndarray:
        return (self.C_c * FLOPS_PER_PF_DAY / compute) ** self.alpha_C

    def _log_compute(self, loss: np.ndarray) -> np.ndarray:
        return math.log(self.C_c * FLOPS_PER_PF_DAY) - np.log(loss) / self.alpha_C

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


_KINDS: dict[str, type[ScalingLaw]] = {
    "chinchilla": ChinchillaLaw,
    "kaplan": KaplanLaw,
    "compute": ComputeLaw,
}


def law_from_dict(d: dict[str, Any]) -> ScalingLaw:
    """Rebuild any law from its :meth:`ScalingLaw.to_dict` output (or a ``ScalingFit.to_dict()``).

    Raises:
        ValueError: unknown ``kind``.
    """
    if "kind" not in d and isinstance(d.get("law"), dict):  # a ScalingFit.to_dict()
        d = d["law"]
    kind = d.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"unknown scaling-law kind {kind!r}; expected one of {sorted(_KINDS)}")
    extra = {"compute_unit": d["compute_unit"]} if "compute_unit" in d else {}
    return _KINDS[kind](
        **{k: float(v) for k, v in d["params"].items()},
        name=d.get("name", kind),
        source=d.get("source", ""),
        fitted_range=FittedRange.from_dict(d.get("fitted_range")),
        **extra,
    )


# --------------------------------------------------------------------------------------------
# published fits

# Hoffmann et al. 2022: "over 400 language models ranging from 70 million to over 16 billion
# parameters on 5 to 500 billion tokens" (abstract). The compute bounds are 6ND at the corners of
# that box, an over-estimate of the runs' actual span (IsoFLOP budgets 6e18 to 3e21, section 3.2).
_HOFFMANN_RANGE = FittedRange(
    n_min=7e7, n_max=1.6e10, d_min=5e9, d_max=5e11, c_min=6 * 7e7 * 5e9, c_max=6 * 1.6e10 * 5e11
)

CHINCHILLA = ChinchillaLaw(
    E=1.69,
    A=406.4,
    B=410.7,
    alpha=0.34,
    beta=0.28,
    name="chinchilla",
    source=(
        "Hoffmann et al. 2022, 'Training Compute-Optimal Large Language Models', "
        "arXiv 2203.15556, approach 3, eq. 10 (constants as printed in the paper body)"
    ),
    fitted_range=_HOFFMANN_RANGE,
)
"""Chinchilla approach 3 as printed: ``L = 1.69 + 406.4/N**0.34 + 410.7/D**0.28``.

Hoffmann et al. 2022 (arXiv 2203.15556), eq. 10. N counts all parameters, D training tokens, loss
in nats/token on MassiveText. What these rounded constants reproduce (tests/scaling/test_scaling_laws.py):

* ``L(70e9, 1.4e12) = 1.9366``, the widely quoted "1.94" for Chinchilla itself (a number derived
  from eq. 10, not a row of the paper's tables).
* They do NOT reproduce the paper's approach-3 allocation: the exponent ``a = beta/(alpha+beta)``
  is 0.4516 (the paper prints 0.46, Table 2) and ``N_opt`` at Gopher's budget 5.76e23 FLOPs is
  32.2B (the paper reports about 40B). The rounding of alpha and beta to two digits causes this
  (Besiroglu et al. 2024, arXiv 2404.10102, section 3); :data:`CHINCHILLA_TEX` holds the
  unrounded exponents and reproduces 0.46 and 40B.
"""

CHINCHILLA_TEX = ChinchillaLaw(
    E=1.6934,
    A=406.4,
    B=410.7,
    alpha=0.3392,
    beta=0.2849,
    name="chinchilla-tex",
    source=(
        "Hoffmann et al. 2022, arXiv 2203.15556, approach 3, unrounded estimates from the paper's "
        "TeX source as reported by Besiroglu et al. 2024, arXiv 2404.10102"
    ),
    fitted_range=_HOFFMANN_RANGE,
)
"""Chinchilla approach 3 with the unrounded estimates of the paper's TeX source.

``E=1.6934, A=406.4, B=410.7, alpha=0.3392, beta=0.2849`` (as quoted by Besiroglu et al. 2024,
arXiv 2404.10102). Reproduces the paper's approach-3 numbers: ``a = 0.4565`` (printed 0.46,
Hoffmann et al. Table 2) and ``N_opt(5.76e23 FLOPs) = 40.3B`` (printed "40B", section 3.3/Fig. 1).
"""

EPOCH = ChinchillaLaw(
    E=1.8172,
    A=482.01,
    B=2085.43,
    alpha=0.3478,
    beta=0.3658,
    name="epoch",
    source=(
        "Besiroglu, Erdil, Barnett, You 2024, 'Chinchilla Scaling: A replication attempt', "
        "arXiv 2404.10102, Table 1 (refit of approach 3 on data extracted from Hoffmann et al. "
        "Figure 4; standard errors E 0.03, A 124.58, B 1293.23, alpha 0.02, beta 0.02)"
    ),
    fitted_range=_HOFFMANN_RANGE,
)
"""Epoch AI's refit of Chinchilla approach 3 (Besiroglu et al. 2024, arXiv 2404.10102).

``L = 1.8172 + 482.01/N**0.3478 + 2085.43/D**0.3658``, fitted with Huber(1e-3) on log-loss
residuals to ~240 points digitised from Hoffmann et al.'s Figure 4 (same ranges as Chinchilla).
Its compute-optimal exponent ``a = beta/(alpha+beta) = 0.5126`` matches the paper's printed 0.5126
and Hoffmann's approaches 1 and 2 (about 0.5); at Gopher's budget it allocates ~72B parameters and
~18 tokens per parameter, close to Chinchilla's own 70B / 20.
"""

KAPLAN = KaplanLaw(
    alpha_N=0.076,
    N_c=8.8e13,
    alpha_D=0.095,
    D_c=5.4e13,
    alpha_C=0.050,
    C_c=3.1e8,
    N_e=1.3e9,
    p_N=0.73,
    name="kaplan",
    source=(
        "Kaplan et al. 2020, 'Scaling Laws for Neural Language Models', arXiv 2001.08361, "
        "eqs. 1.1-1.5 and Table 6 (N_opt = 1.3e9 C_min**0.73)"
    ),
    # Section 2: models of 768 to 1.5e9 non-embedding parameters, datasets of 22e6 to 23e9
    # tokens. The compute bounds are where N_opt = 1.3e9 C**0.73 spans those model sizes
    # (3e-9 to 1.2 PF-days), a derived, not printed, range.
    fitted_range=FittedRange(
        n_min=768.0,
        n_max=1.5e9,
        d_min=2.2e7,
        d_max=2.3e10,
        c_min=(768.0 / 1.3e9) ** (1 / 0.73) * FLOPS_PER_PF_DAY,
        c_max=(1.5e9 / 1.3e9) ** (1 / 0.73) * FLOPS_PER_PF_DAY,
    ),
)
"""Kaplan et al. 2020 (arXiv 2001.08361), WebText2, loss in nats/token.

Units: ``N`` non-embedding parameters, ``D`` tokens, ``C_c`` in PF-days (1 PF-day = 8.64e19
FLOPs; the API takes FLOPs and converts). Constants: ``alpha_N=0.076, N_c=8.8e13``;
``alpha_D=0.095, D_c=5.4e13``; ``alpha_C^min=0.050, C_c^min=3.1e8`` PF-days; ``N_opt =
1.3e9 C_min**0.73``. The paper's own check-point (section 6.3, eq. 6.8): the frontier reaches
``L* ~ 1.7`` nats at ``C* ~ 1e4`` PF-days; the rounded constants give 7.6e3 PF-days, which agrees
at the paper's stated precision ("highly uncertain, varying by an order of magnitude").
"""
