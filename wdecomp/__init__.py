"""wdecomp: take a trained PyTorch network apart in weight space.

The common path is flat at ``wdecomp.*``; submodules hold the rest:
``params`` -> ``objective`` -> ``curvature`` -> ``spectral`` -> ``bases`` -> ``components``
-> ``graph`` / ``ablation`` -> ``scaling``. Lower layers never import higher ones.
"""

from wdecomp import scaling  # noqa: E402  (wd.scaling.CHINCHILLA, wd.scaling.fit)
from wdecomp.ablation import AblationResult, ablate, ablation_sweep, score_splice, splice
from wdecomp.bases import (
    Basis,
    CurvatureBasis,
    LayerBasis,
    curvature_basis,
    gram_matrices,
    interaction_basis,
    neuron_basis,
)
from wdecomp.components import Component, Components, decompose, load_components
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
from wdecomp.graph import InteractionGraph, interaction_graph, load_graph, save_graph
from wdecomp.objective import BatchLoss, Objective
from wdecomp.params import ParamSet, select_parameters
from wdecomp.scaling import compute_equivalent, parameter_equivalent
from wdecomp.spectral import eigh, hutchinson_trace, hutchpp_trace, rank, slq_density

__version__ = "0.1.0"

__all__ = [
    "Basis",
    "Component",
    "Components",
    "CurvatureBasis",
    "LayerBasis",
    "curvature_basis",
    "decompose",
    "gram_matrices",
    "interaction_basis",
    "load_components",
    "neuron_basis",
    "AblationResult",
    "InteractionGraph",
    "ablate",
    "ablation_sweep",
    "compute_equivalent",
    "eigh",
    "hutchinson_trace",
    "hutchpp_trace",
    "interaction_graph",
    "load_graph",
    "parameter_equivalent",
    "rank",
    "save_graph",
    "scaling",
    "score_splice",
    "slq_density",
    "splice",
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
