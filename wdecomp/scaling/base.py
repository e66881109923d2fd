"""The scaling-law protocol: what every law answers, its fitted range, and the shared checks.

Every law answers the same questions (the :class:`ScalingLaw` protocol), so the equivalents in
:mod:`wdecomp.scaling.equivalents` and :mod:`wdecomp.scaling.table` work on any of them:

* ``optimal_loss(C)``: the loss on the law's compute-optimal frontier at training compute ``C``;
* ``compute_for_loss(L)`` / ``log_compute_for_loss(L)``: its inverse, the compute on that frontier
  that reaches loss ``L``;
* ``irreducible_loss``: the loss no finite compute reaches (``E``; 0 for Kaplan's law);
* ``fitted_range``: where the law was fitted, used to warn about extrapolation;
* ``to_dict()`` / :func:`~wdecomp.scaling.law_from_dict`: a JSON round trip.

Laws of model size ``N`` and training tokens ``D`` (:class:`TwoVariableLaw`) add ``loss(N, D)``,
``optimal_allocation(C)`` and ``params_for_loss(L, D)``.

Compute is in FLOPs throughout the API (Kaplan's PF-days are converted: 1 PF-day =
1e15 * 86400 = 8.64e19 FLOPs), except for a :class:`~wdecomp.scaling.ComputeLaw`, whose compute is
in whatever unit its points were given in (``compute_unit``). Losses are in the law's
``loss_unit`` (nats per token for the published laws).

All functions take scalars or numpy arrays and return a ``float`` for scalar input, an array
otherwise.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from wdecomp.errors import ScalingLawRangeError

__all__ = [
    "FLOPS_PER_PF_DAY",
    "ExtrapolationWarning",
    "FittedRange",
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
    loss_unit: str
    data: str
    kind: str = "abstract"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if isinstance(kind, str) and kind != "abstract":
            _KINDS[kind] = cls

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
            "loss_unit": self.loss_unit,
            "data": self.data,
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


_KINDS: dict[str, type[ScalingLaw]] = {}
"""Law classes by ``kind``, filled as each form is defined (:mod:`wdecomp.scaling.forms`)."""


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
    extra = {k: str(d[k]) for k in ("compute_unit", "loss_unit", "data") if k in d}
    return _KINDS[kind](
        **{k: float(v) for k, v in d["params"].items()},
        name=d.get("name", kind),
        source=d.get("source", ""),
        fitted_range=FittedRange.from_dict(d.get("fitted_range")),
        **extra,
    )


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
