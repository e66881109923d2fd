"""Compute- and parameter-equivalents: a damaged model's loss, read off a scaling law.

"Loss recovered" puts an ablation's damage on a linear scale whose denominator is huge. The
compute-equivalent asks instead: how much training compute would a compute-optimally trained model
need to reach the degraded loss, as a fraction of the compute that reaches the original loss? On a
law's frontier ``L*(C)``, with ``C_eq(L)`` its inverse (:meth:`ScalingLaw.compute_for_loss`)::

    compute fraction   = C_eq(loss) / C_eq(reference_loss)
    parameter fraction = N_eq(loss, D) / N_eq(reference_loss, D)

where ``N_eq(L, D)`` solves ``L(N, D) = L`` at a fixed token count ``D``
(:meth:`TwoVariableLaw.params_for_loss`). A fraction of 1 means no damage; 0.1 means the ablated
model is as good as one trained with a tenth of the compute (or parameters). For the Chinchilla
form the compute fraction is ``((reference_loss - E) / (loss - E)) ** (1/gamma)``, gamma =
alpha beta / (alpha + beta), so it depends only on the reducible losses and not on the units of C.

Both functions return a frozen result that also carries the absolute equivalents, and,
optionally, the fraction of a stated training compute (or model size) — the equivalent of the
degraded model relative to what the original model actually used. ``training_fraction =
C_eq(loss) / training_compute`` is the quantity of Gao et al. 2024 (arXiv 2406.04093: the
fraction of the model's own pretraining compute); ``fraction`` is the frontier ratio, equal to it
only for a model on the law's frontier. For several laws, intervals and per-level robustness,
use :func:`wdecomp.scaling.equivalents_table`. They raise
:class:`~wdecomp.errors.ScalingLawRangeError` for losses that no finite compute reaches and warn
(:class:`~wdecomp.scaling.ExtrapolationWarning`) outside the law's fitted range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from wdecomp.errors import ScalingLawRangeError
from wdecomp.scaling.base import ScalingLaw, TwoVariableLaw

__all__ = ["ComputeEquivalent", "ParameterEquivalent", "compute_equivalent", "parameter_equivalent"]


def _tolist(x: Any) -> Any:
    if x is None:
        return None
    arr = np.asarray(x, dtype=float)
    return float(arr) if arr.ndim == 0 else arr.tolist()


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    arr = np.asarray(x, dtype=float)
    if arr.ndim == 0:
        return f"{float(arr):.6g}"
    return np.array2string(arr, precision=6, threshold=8)


def _ratio(log_num: Any, log_den: Any) -> float | np.ndarray:
    """``exp(log_num - log_den)``: exactly 1 when the logs are equal, no overflow before exp."""
    diff = np.asarray(log_num, dtype=float) - np.asarray(log_den, dtype=float)
    with np.errstate(over="ignore"):
        out = np.exp(diff)
    return float(out) if out.ndim == 0 else out


class _EquivalentResult:
    """What both equivalent results share: ``float()`` of a scalar fraction, and a JSON dict."""

    _what = "equivalents"

    def __float__(self) -> float:
        if np.ndim(self.fraction) != 0:
            raise TypeError(f"float() of an array of {self._what}; use .fraction")
        return float(self.fraction)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (arrays as lists), one key per field."""
        return {f.name: (getattr(self, f.name) if f.name == "law" else _tolist(getattr(self, f.name)))
                for f in fields(self)}


@dataclass(frozen=True)
class ComputeEquivalent(_EquivalentResult):
    """Result of :func:`compute_equivalent` (scalars or arrays, as the losses were given).

    Attributes:
        loss: the (degraded) loss.
        reference_loss: the original model's loss.
        fraction: ``C_eq(loss) / C_eq(reference_loss)``; 1.0 exactly when the losses are equal.
        compute: ``C_eq(loss)``, FLOPs on the law's frontier (a ComputeLaw: its own unit).
        reference_compute: ``C_eq(reference_loss)``.
        training_compute: the stated training compute of the original model, or None.
        training_fraction: ``C_eq(loss) / training_compute``, or None.
        law: name of the law used.
    """

    loss: float | np.ndarray
    reference_loss: float | np.ndarray
    fraction: float | np.ndarray
    compute: float | np.ndarray
    reference_compute: float | np.ndarray
    training_compute: float | None
    training_fraction: float | np.ndarray | None
    law: str

    _what = "compute-equivalents"

    def __str__(self) -> str:
        rows = [
            ("law", self.law),
            ("loss", _fmt(self.loss)),
            ("reference loss", _fmt(self.reference_loss)),
            ("compute fraction", _fmt(self.fraction)),
            ("C_eq(loss)", _fmt(self.compute)),
            ("C_eq(reference)", _fmt(self.reference_compute)),
            ("training compute", _fmt(self.training_compute)),
            ("C_eq(loss) / training", _fmt(self.training_fraction)),
        ]
        return "Compute-equivalent\n" + "\n".join(f"  {k:<22}{v}" for k, v in rows)


@dataclass(frozen=True)
class ParameterEquivalent(_EquivalentResult):
    """Result of :func:`parameter_equivalent` (scalars or arrays, as the losses were given).

    Attributes:
        loss: the (degraded) loss.
        reference_loss: the original model's loss.
        tokens: ``D``, training tokens held fixed.
        fraction: ``N_eq(loss, D) / N_eq(reference_loss, D)``; 1.0 exactly for equal losses.
        params: ``N_eq(loss, D)``.
        reference_params: ``N_eq(reference_loss, D)``.
        model_params: the original model's stated parameter count, or None.
        model_fraction: ``N_eq(loss, D) / model_params``, or None.
        law: name of the law used.
    """

    loss: float | np.ndarray
    reference_loss: float | np.ndarray
    tokens: float | np.ndarray
    fraction: float | np.ndarray
    params: float | np.ndarray
    reference_params: float | np.ndarray
    model_params: float | None
    model_fraction: float | np.ndarray | None
    law: str

    _what = "parameter-equivalents"

    def __str__(self) -> str:
        rows = [
            ("law", self.law),
            ("loss", _fmt(self.loss)),
            ("reference loss", _fmt(self.reference_loss)),
            ("tokens D", _fmt(self.tokens)),
            ("parameter fraction", _fmt(self.fraction)),
            ("N_eq(loss, D)", _fmt(self.params)),
            ("N_eq(reference, D)", _fmt(self.reference_params)),
            ("model parameters", _fmt(self.model_params)),
            ("N_eq(loss) / model", _fmt(self.model_fraction)),
        ]
        return "Parameter-equivalent\n" + "\n".join(f"  {k:<22}{v}" for k, v in rows)


def _positive_scalar(x: float | None, what: str) -> float | None:
    if x is None:
        return None
    v = float(x)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{what} must be finite and positive, got {x!r}")
    return v


def _as_out(x: Any) -> float | np.ndarray:
    arr = np.asarray(x, dtype=float)
    return float(arr) if arr.ndim == 0 else arr


def compute_equivalent(
    loss: Any,
    reference_loss: Any,
    law: ScalingLaw,
    *,
    training_compute: float | None = None,
) -> ComputeEquivalent:
    """Compute-equivalent of a degraded loss relative to a reference loss, on ``law``'s frontier.

    ``fraction = C_eq(loss) / C_eq(reference_loss)`` with ``C_eq`` = ``law.compute_for_loss``
    (the compute-optimal frontier; see :mod:`wdecomp.scaling.base`). Strictly decreasing in
    ``loss``; exactly 1.0 where ``loss == reference_loss``. Computed as ``exp`` of a difference of
    logs, so ratios below 1e-300 underflow to 0 rather than producing ``inf / inf``.

    Args:
        loss: degraded loss(es), nats/token; scalar or array.
        reference_loss: the original model's loss, broadcastable with ``loss``.
        law: any :class:`ScalingLaw` (CHINCHILLA, EPOCH, KAPLAN, a fitted law...).
        training_compute: optional compute the original model was trained with (FLOPs, or the
            ComputeLaw's unit); then ``training_fraction = C_eq(loss) / training_compute``.

    Returns:
        :class:`ComputeEquivalent`; ``float(result)`` is the fraction for scalar input.

    Raises:
        ScalingLawRangeError: a loss is NaN, infinite, negative, or at or below the law's
            irreducible loss ``E``.

    Warns:
        ExtrapolationWarning: a loss or its ``C_eq`` lies outside the law's fitted range.

    Example:
        >>> from wdecomp.scaling import CHINCHILLA, compute_equivalent
        >>> r = compute_equivalent(2.0, 1.9, CHINCHILLA)  # ((1.9-1.69)/(2.0-1.69))**(1/gamma)
        >>> round(r.fraction, 4)
        0.0791
    """
    if not isinstance(law, ScalingLaw):
        raise TypeError(f"law must be a ScalingLaw, got {type(law).__name__}")
    tc = _positive_scalar(training_compute, "training_compute")
    lv = np.asarray(loss, dtype=float)
    rv = np.asarray(reference_loss, dtype=float)
    log_c = law.log_compute_for_loss(lv)
    log_cr = law.log_compute_for_loss(rv)
    fraction = _ratio(log_c, log_cr)
    with np.errstate(over="ignore"):
        c = np.exp(np.asarray(log_c, dtype=float))
        cr = np.exp(np.asarray(log_cr, dtype=float))
    tf = None if tc is None else _ratio(log_c, math.log(tc))
    return ComputeEquivalent(
        loss=_as_out(lv),
        reference_loss=_as_out(rv),
        fraction=fraction,
        compute=_as_out(c),
        reference_compute=_as_out(cr),
        training_compute=tc,
        training_fraction=tf,
        law=law.name,
    )


def parameter_equivalent(
    loss: Any,
    reference_loss: Any,
    law: ScalingLaw,
    D: Any,
    *,
    model_params: float | None = None,
) -> ParameterEquivalent:
    """Parameter-equivalent of a degraded loss at a fixed number of training tokens ``D``.

    ``fraction = N_eq(loss, D) / N_eq(reference_loss, D)`` with ``N_eq`` =
    ``law.params_for_loss`` (for Chinchilla: ``(A / (L - E - B / D**beta)) ** (1/alpha)``).
    Strictly decreasing in ``loss``; exactly 1.0 where ``loss == reference_loss``.

    Args:
        loss: degraded loss(es), nats/token; scalar or array.
        reference_loss: the original model's loss, broadcastable with ``loss``.
        law: a law of ``N`` and ``D`` (:class:`TwoVariableLaw`: CHINCHILLA, EPOCH, KAPLAN or a
            fitted Chinchilla-form law); a :class:`ComputeLaw` has no ``N``.
        D: training tokens of the original model (broadcastable).
        model_params: optional parameter count of the original model; then
            ``model_fraction = N_eq(loss, D) / model_params``.

    Returns:
        :class:`ParameterEquivalent`; ``float(result)`` is the fraction for scalar input.

    Raises:
        TypeError: ``law`` is not a law of ``N`` and ``D``.
        ScalingLawRangeError: a loss is NaN, infinite, negative, or at or below the loss floor
            at ``D`` (``E + B / D**beta`` for Chinchilla: no model size reaches it).

    Warns:
        ExtrapolationWarning: ``D``, a loss or its ``N_eq`` lies outside the fitted range.
    """
    if not isinstance(law, TwoVariableLaw):
        raise TypeError(
            f"parameter_equivalent needs a law of N and D (e.g. CHINCHILLA); {law.name!r} is a {type(law).__name__}"
        )
    mp = _positive_scalar(model_params, "model_params")
    lv = np.asarray(loss, dtype=float)
    rv = np.asarray(reference_loss, dtype=float)
    d = np.asarray(D, dtype=float)
    try:
        log_n = law.log_params_for_loss(lv, d)
        log_nr = law.log_params_for_loss(rv, d)
    except ScalingLawRangeError as exc:
        raise ScalingLawRangeError(f"{exc} (tokens D={_fmt(d)})") from exc
    fraction = _ratio(log_n, log_nr)
    with np.errstate(over="ignore"):
        n = np.exp(np.asarray(log_n, dtype=float))
        nr = np.exp(np.asarray(log_nr, dtype=float))
    mf = None if mp is None else _ratio(log_n, math.log(mp))
    return ParameterEquivalent(
        loss=_as_out(lv),
        reference_loss=_as_out(rv),
        tokens=_as_out(d),
        fraction=fraction,
        params=_as_out(n),
        reference_params=_as_out(nr),
        model_params=mp,
        model_fraction=mf,
        law=law.name,
    )
