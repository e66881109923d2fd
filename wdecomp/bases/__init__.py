"""Bases for a network's activations and weights (neuron, PCA, LIB, curvature eigenbases)."""

from wdecomp.bases.base import Basis, LayerBasis, model_signature, neuron_basis

__all__ = ["Basis", "LayerBasis", "model_signature", "neuron_basis"]
