"""Scaling laws, a fitter for one's own sweep, and compute/parameter equivalents with intervals.

The yardstick of wdecomp's ablations: a degraded loss read off a scaling law as the compute (or
parameters) that reaches it, relative to the original model's (see
:mod:`wdecomp.scaling.table`).

* Laws: :class:`ChinchillaLaw` ``E + A/N**alpha + B/D**beta``, :class:`KaplanLaw` (explicit
  critical-batch factor), :class:`ComputeLaw` ``E + A/C**alpha``, all following
  :class:`ScalingLaw` (:mod:`~wdecomp.scaling.base`, :mod:`~wdecomp.scaling.forms`).
* Published fits (:mod:`~wdecomp.scaling.published`): :data:`CHINCHILLA` (Hoffmann et al. 2022,
  arXiv 2203.15556, as printed), :data:`CHINCHILLA_TEX` (unrounded exponents), :data:`EPOCH`
  (Besiroglu et al. 2024, arXiv 2404.10102, with its standard errors), :data:`KAPLAN` (Kaplan et
  al. 2020, arXiv 2001.08361).
* :func:`fit`: Chinchilla approach 3 with bootstrap intervals and degenerate-fit diagnostics;
  :func:`guided_fit`, :func:`write_fit_report`, :func:`plot_fit` for one's own model family.
* :func:`equivalents_table`: per level and per law, the frontier fraction, the training fraction
  (the fraction of the model's own training compute, Gao et al. 2024) and the parameter
  fraction, each with an interval; :func:`check_reference` before a sweep.
* :func:`compute_equivalent`, :func:`parameter_equivalent` (one law, point values),
  :func:`plot_frontier`, :func:`convert_loss`.

Example:
    >>> from wdecomp.scaling import CHINCHILLA, compute_equivalent
    >>> round(CHINCHILLA.loss(70e9, 1.4e12), 2)
    1.94
    >>> compute_equivalent(2.0, 2.0, CHINCHILLA).fraction
    1.0
"""

from wdecomp.scaling.base import (
    FLOPS_PER_PF_DAY,
    ExtrapolationWarning,
    FittedRange,
    ScalingLaw,
    TwoVariableLaw,
    law_from_dict,
)
from wdecomp.scaling.equivalents import (
    ComputeEquivalent,
    ParameterEquivalent,
    compute_equivalent,
    parameter_equivalent,
)
from wdecomp.scaling.fit import ScalingFit, default_grid, fit, huber
from wdecomp.scaling.forms import ChinchillaLaw, ComputeLaw, KaplanLaw
from wdecomp.scaling.own import (
    GuidedFit,
    checkpoint_points,
    envelope_points,
    guided_fit,
    load_points,
    write_fit_report,
)
from wdecomp.scaling.plot import plot_fit, plot_frontier
from wdecomp.scaling.published import (
    CHINCHILLA,
    CHINCHILLA_TEX,
    EPOCH,
    KAPLAN,
    PUBLISHED,
    PUBLISHED_ERRORS,
)
from wdecomp.scaling.table import (
    ComparabilityWarning,
    EquivalentsTable,
    LevelEquivalent,
    check_reference,
    equivalents_table,
)
from wdecomp.scaling.uncertainty import LawSamples, law_samples
from wdecomp.scaling.units import LOSS_UNITS, convert_loss

__all__ = [
    "GuidedFit",
    "checkpoint_points",
    "envelope_points",
    "guided_fit",
    "load_points",
    "plot_fit",
    "write_fit_report",
    "LOSS_UNITS",
    "ComparabilityWarning",
    "EquivalentsTable",
    "LawSamples",
    "LevelEquivalent",
    "check_reference",
    "convert_loss",
    "equivalents_table",
    "law_samples",
    "CHINCHILLA",
    "CHINCHILLA_TEX",
    "EPOCH",
    "FLOPS_PER_PF_DAY",
    "KAPLAN",
    "PUBLISHED",
    "PUBLISHED_ERRORS",
    "ChinchillaLaw",
    "ComputeEquivalent",
    "ComputeLaw",
    "ExtrapolationWarning",
    "FittedRange",
    "KaplanLaw",
    "ParameterEquivalent",
    "ScalingFit",
    "ScalingLaw",
    "TwoVariableLaw",
    "compute_equivalent",
    "default_grid",
    "fit",
    "huber",
    "law_from_dict",
    "parameter_equivalent",
    "plot_frontier",
]
