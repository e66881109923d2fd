"""Bases for a network's activations and weights (neuron, PCA, LIB, curvature eigenbases)."""

from wdecomp.bases.base import Basis, LayerBasis, model_signature, neuron_basis
from wdecomp.bases.capture import GramResult, gram_matrices
from wdecomp.bases.curvature import CurvatureBasis, behavioural_objective, curvature_basis
from wdecomp.bases.interaction import interaction_basis, interaction_jacobians, interaction_matrix

__all__ = [
    "Basis",
    "CurvatureBasis",
    "GramResult",
    "LayerBasis",
    "behavioural_objective",
    "curvature_basis",
    "gram_matrices",
    "interaction_basis",
    "interaction_jacobians",
    "interaction_matrix",
    "model_signature",
    "neuron_basis",
]
