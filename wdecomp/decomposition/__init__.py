"""Parameter decomposition: weights as sums of rank-one subcomponents with learned causal importances.

:func:`spd` runs Stochastic Parameter Decomposition (Bushnaq, Braun & Sharkey 2025, arXiv 2506.20790)
on chosen linear layers and returns an :class:`SPDResult`. The formulas live in
:mod:`wdecomp.decomposition.spd`, the metrics (MMCS, ML2R, alive counts, CI-L0, the Hungarian
identity test) in :mod:`wdecomp.decomposition.metrics`, the plots in :mod:`wdecomp.decomposition.plot`.
"""

from wdecomp.decomposition.api import MASK_MODES, MaskingReport, SPDResult, load_spd, spd
from wdecomp.decomposition.metrics import GroundTruth, HungarianResult, hungarian_identity, mmcs_ml2r
from wdecomp.decomposition.spd import PAPER_SETTINGS, SPDConfig, SPDModel

__all__ = [
    "MASK_MODES",
    "PAPER_SETTINGS",
    "GroundTruth",
    "HungarianResult",
    "MaskingReport",
    "SPDConfig",
    "SPDModel",
    "SPDResult",
    "hungarian_identity",
    "load_spd",
    "mmcs_ml2r",
    "spd",
]
