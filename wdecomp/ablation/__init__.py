"""Ablations and splices, scored side by side: loss, loss recovered (against zero- and
mean-ablation baselines), KL, accuracy, compute- and parameter-equivalent, per-input degradation.

Main entry points: :func:`ablate`, :func:`ablation_sweep`, :func:`splice`, :func:`score_splice`.
Components are any :class:`~wdecomp.bases.protocol.ComponentModel` (a ``Basis``, a
``CurvatureBasis``, ``Components``, a parameter decomposition) or component groups
(:class:`ActivationComponents`: directions of an activation basis at a hook;
:class:`WeightComponents`: orthonormal weight-space directions of a parameter group), normalised
by :func:`as_component_set`. Ablation methods (``"zero"``, ``"mean"``, ``"resample"``) live in one
registry, :data:`METHODS`; a new method is one function registered with :func:`register_method`.

Modules: ``ablate`` (the two public studies) -> ``engine`` (passes, plans, scoring) -> ``edits``
(a group's removal as a hooks edit) -> ``methods`` (the registry); ``splice`` (splices);
``primitives`` (what counts as components); ``metrics`` and ``report`` (numbers and tables).
"""

from wdecomp.ablation.ablate import ablate, ablation_sweep
from wdecomp.ablation.edges import EdgeAblationResult, edge_ablation
from wdecomp.ablation.methods import METHODS, AblationMethod
from wdecomp.ablation.methods import register as register_method
from wdecomp.ablation.metrics import Degradation, equivalents, loss_recovered
from wdecomp.ablation.primitives import ActivationComponents, ComponentSet, WeightComponents, as_component_set
from wdecomp.ablation.report import AblationResult, LevelMetrics
from wdecomp.ablation.splice import Splice, score_splice, splice

__all__ = [
    "METHODS",
    "AblationMethod",
    "AblationResult",
    "ActivationComponents",
    "ComponentSet",
    "Degradation",
    "EdgeAblationResult",
    "LevelMetrics",
    "Splice",
    "WeightComponents",
    "ablate",
    "ablation_sweep",
    "edge_ablation",
    "as_component_set",
    "equivalents",
    "loss_recovered",
    "register_method",
    "score_splice",
    "splice",
]
