"""Ablations and splices, scored side by side: loss, loss recovered (against zero- and
mean-ablation baselines), KL, accuracy, compute- and parameter-equivalent, per-input degradation.

Main entry points: :func:`ablate`, :func:`ablation_sweep`, :func:`splice`, :func:`score_splice`;
components are :class:`ActivationComponents` (directions of an activation basis at a hook) and
:class:`WeightComponents` (orthonormal weight-space directions of a parameter group), or a
``Basis`` / ``Components`` converted by :func:`as_component_set`.
"""

from wdecomp.ablation.ablate import Splice, ablate, ablation_sweep, score_splice, splice
from wdecomp.ablation.metrics import Degradation, equivalents, loss_recovered
from wdecomp.ablation.primitives import ActivationComponents, ComponentSet, WeightComponents, as_component_set
from wdecomp.ablation.report import AblationResult, LevelMetrics

__all__ = [
    "AblationResult",
    "ActivationComponents",
    "ComponentSet",
    "Degradation",
    "LevelMetrics",
    "Splice",
    "WeightComponents",
    "ablate",
    "ablation_sweep",
    "as_component_set",
    "equivalents",
    "loss_recovered",
    "score_splice",
    "splice",
]
