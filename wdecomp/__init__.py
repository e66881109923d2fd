"""wdecomp: take a trained PyTorch network apart in weight space.

The common path is flat at ``wdecomp.*``; submodules hold the rest:
``params`` -> ``objective`` -> ``curvature`` -> ``spectral`` -> ``bases`` -> ``components``
-> ``graph`` / ``ablation`` -> ``scaling``. Lower layers never import higher ones.
"""

from wdecomp.curvature import (
    CurvatureOperator,
    fisher,
    ggn,
    hessian,
    per_sample_gradients,
)
from wdecomp.errors import (
    DataError,
    DenseTooLargeError,
    ModelMismatchError,
    ModelStateError,
    NonFiniteError,
    ScalingLawRangeError,
    SelectionError,
    ShapeError,
    WdecompError,
)
from wdecomp.objective import BatchLoss, Objective
from wdecomp.params import ParamSet, select_parameters

__version__ = "0.1.0"

__all__ = [
    "BatchLoss",
    "CurvatureOperator",
    "DataError",
    "DenseTooLargeError",
    "ModelMismatchError",
    "ModelStateError",
    "NonFiniteError",
    "Objective",
    "ParamSet",
    "ScalingLawRangeError",
    "SelectionError",
    "ShapeError",
    "WdecompError",
    "fisher",
    "ggn",
    "hessian",
    "per_sample_gradients",
    "select_parameters",
]
