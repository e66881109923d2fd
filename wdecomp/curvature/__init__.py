"""Curvature operators: Hessian, GGN, Fisher, per-sample gradients, on any parameter subset."""

from wdecomp.curvature.base import CheckResult, CurvatureOperator, FactoredOperator
from wdecomp.curvature.fisher import EmpiricalFisherOperator, fisher
from wdecomp.curvature.ggn import OutputSpaceOperator, ggn
from wdecomp.curvature.hessian import HessianOperator, hessian
from wdecomp.curvature.per_sample import PerSampleGradients, per_sample_gradients

__all__ = [
    "CheckResult",
    "CurvatureOperator",
    "EmpiricalFisherOperator",
    "FactoredOperator",
    "HessianOperator",
    "OutputSpaceOperator",
    "PerSampleGradients",
    "fisher",
    "ggn",
    "hessian",
    "per_sample_gradients",
]
