"""Bases for a network's activations and weights (neuron, PCA, LIB, curvature eigenbases), and the
component model every decomposition shares (:mod:`wdecomp.bases.protocol`)."""

from wdecomp.bases.base import Basis, LayerBasis, model_signature, neuron_basis
from wdecomp.bases.capture import GramResult, gram_matrices
from wdecomp.bases.curvature import CurvatureBasis, behavioural_objective, curvature_basis
from wdecomp.bases.interaction import interaction_basis, interaction_jacobians, interaction_matrix
from wdecomp.bases.protocol import (
    ActivationGroup,
    ComponentGroup,
    ComponentModel,
    ComponentSet,
    WeightComponents,
    WeightGroup,
)

__all__ = [
    "ActivationGroup",
    "Basis",
    "ComponentGroup",
    "ComponentModel",
    "ComponentSet",
    "CurvatureBasis",
    "GramResult",
    "LayerBasis",
    "WeightComponents",
    "WeightGroup",
    "behavioural_objective",
    "curvature_basis",
    "gram_matrices",
    "interaction_basis",
    "interaction_jacobians",
    "interaction_matrix",
    "model_signature",
    "neuron_basis",
]
