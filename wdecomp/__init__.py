"""wdecomp: take a trained PyTorch network apart in weight space.

The common path is flat at ``wdecomp.*`` (``wd.hessian``, ``wd.eigh``, ``wd.interaction_basis``,
...); submodules hold the rest. ``import wdecomp`` is light: each public name is imported from
its submodule the first time it is used (PEP 562 module ``__getattr__``), so the command line
starts fast and matplotlib, networkx and scipy load only where they are used. The layer order
(which module may import which) is drawn in ``docs/architecture.md`` and enforced by
import-linter (``pyproject.toml``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the submodule that defines it. To export a new name, add one line here.
_EXPORTS: dict[str, str] = {
    # errors
    "WdecompError": "wdecomp.errors",
    "ArgumentError": "wdecomp.errors",
    "DataError": "wdecomp.errors",
    "DenseTooLargeError": "wdecomp.errors",
    "DtypeError": "wdecomp.errors",
    "FileFormatError": "wdecomp.errors",
    "NotSymmetricError": "wdecomp.errors",
    "ModelMismatchError": "wdecomp.errors",
    "ModelStateError": "wdecomp.errors",
    "NonFiniteError": "wdecomp.errors",
    "OutputPathError": "wdecomp.errors",
    "ScalingLawRangeError": "wdecomp.errors",
    "SelectionError": "wdecomp.errors",
    "ShapeError": "wdecomp.errors",
    # parameters, objective, curvature
    "ParamSet": "wdecomp.params",
    "select_parameters": "wdecomp.params",
    "BatchLoss": "wdecomp.objective",
    "Objective": "wdecomp.objective",
    "CurvatureOperator": "wdecomp.curvature",
    "fisher": "wdecomp.curvature",
    "ggn": "wdecomp.curvature",
    "hessian": "wdecomp.curvature",
    "per_sample_gradients": "wdecomp.curvature",
    # spectral
    "eigh": "wdecomp.spectral",
    "hutchinson_trace": "wdecomp.spectral",
    "hutchpp_trace": "wdecomp.spectral",
    "rank": "wdecomp.spectral",
    "slq_density": "wdecomp.spectral",
    # bases and components
    "Basis": "wdecomp.bases",
    "CurvatureBasis": "wdecomp.bases",
    "LayerBasis": "wdecomp.bases",
    "curvature_basis": "wdecomp.bases",
    "gram_matrices": "wdecomp.bases",
    "interaction_basis": "wdecomp.bases",
    "neuron_basis": "wdecomp.bases",
    "Component": "wdecomp.components",
    "Components": "wdecomp.components",
    "decompose": "wdecomp.components",
    "load_components": "wdecomp.components",
    # graph and ablation
    "InteractionGraph": "wdecomp.graph",
    "interaction_graph": "wdecomp.graph",
    "find_modules": "wdecomp.graph",
    "load_graph": "wdecomp.graph",
    "save_graph": "wdecomp.graph",
    "AblationResult": "wdecomp.ablation",
    "ablate": "wdecomp.ablation",
    "ablation_sweep": "wdecomp.ablation",
    "edge_ablation": "wdecomp.ablation",
    "score_splice": "wdecomp.ablation",
    "splice": "wdecomp.ablation",
    # scaling
    "compute_equivalent": "wdecomp.scaling",
    "parameter_equivalent": "wdecomp.scaling",
}

# subpackages reachable as attributes (``wd.scaling.fit``, ``wd.models.load``) without an import
_SUBMODULES = ("scaling", "models", "spectral", "curvature", "bases", "graph", "ablation", "components",
               "interop", "distributed", "fourier", "io", "progress", "errors", "params", "objective",
               "activations", "batch", "hooks", "linop", "sae", "decomposition", "degrade", "compare", "threads")

__all__ = sorted([*_EXPORTS, "scaling"])


def __getattr__(name: str) -> Any:
    """Import a public name (or a subpackage) on first use and keep it in the module namespace."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"wdecomp.{name}")
    else:
        raise AttributeError(f"module 'wdecomp' has no attribute '{name}'")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES})

