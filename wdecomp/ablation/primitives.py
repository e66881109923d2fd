"""What ``ablate`` accepts as components, normalised to one
:class:`~wdecomp.bases.protocol.ComponentModel`.

The component model itself (groups, global indices, ``check_model``) lives in
:mod:`wdecomp.bases.protocol`; the ablation formulas in :mod:`wdecomp.ablation.methods`. Here:

* :class:`ActivationComponents`: a :class:`~wdecomp.bases.base.LayerBasis` as an activation group
  with its own importance, report label and model signature;
* :class:`~wdecomp.bases.protocol.WeightComponents`: orthonormal weight-space directions of a
  parameter group (re-exported);
* :func:`as_component_set`: a decomposition, a group, or a list of either -> one
  :class:`~wdecomp.bases.protocol.ComponentModel`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from wdecomp.bases.base import LayerBasis
from wdecomp.bases.protocol import (
    ActivationGroup,
    ComponentModel,
    ComponentSet,
    WeightComponents,
    WeightGroup,
)
from wdecomp.errors import ModelMismatchError, ShapeError

__all__ = ["ActivationComponents", "ComponentSet", "WeightComponents", "as_component_set", "declared_axes"]


@dataclass(frozen=True)
class ActivationComponents:
    """The ``k`` directions of one hook point's basis, as an activation group.

    Attributes:
        basis: The :class:`LayerBasis` (its ``point`` is the hook).
        importance: ``(k,)`` importance per direction; defaults to ``basis.eigenvalues``.
        signature: Parameter names and shapes of the model the basis belongs to, or ``None``
            (unchecked).
        label: Name shown in reports (defaults to the hook point).
        feature_axis: The activation's axis the basis is over (batch axis counted; 1 for the channels
            of a conv output), or ``None`` for the default of
            :func:`~wdecomp.bases.section.feature_axis`; every other axis is a position.
    """

    basis: LayerBasis
    importance: Tensor | None = None
    signature: Mapping[str, list[int]] | None = None
    label: str = ""
    feature_axis: int | None = None

    def __post_init__(self) -> None:
        imp = self.basis.eigenvalues if self.importance is None else torch.as_tensor(self.importance)
        if imp.shape != (self.basis.size,):
            raise ShapeError(f"importance has shape {tuple(imp.shape)}, expected ({self.basis.size},)")
        object.__setattr__(self, "importance", imp.detach().to(torch.float64).cpu())
        if not self.label:
            object.__setattr__(self, "label", self.basis.point)

    @property
    def size(self) -> int:
        """``k``, the number of components."""
        return self.basis.size

    @property
    def hook(self) -> str:
        """The hook point whose activation is edited."""
        return self.basis.hook

    @property
    def parameters(self) -> dict[str, tuple[int, ...]]:
        return {}

    @property
    def transform(self) -> Tensor:
        return self.basis.transform

    @property
    def inverse(self) -> Tensor:
        return self.basis.inverse

    @property
    def center(self) -> Tensor | None:
        return self.basis.center

    def coordinates(self, f: Tensor) -> Tensor:
        return self.basis.coordinates(f)

    def write(self, c: Tensor, idx: Tensor) -> Tensor:
        return self.basis.write(c, idx)


def declared_axes(components: ComponentModel) -> dict[str, int]:
    """Hook point -> the feature axis the components declare there: a basis's own
    (``info["feature_axes"]``, as :func:`~wdecomp.bases.interaction_basis` records it) or an
    :class:`ActivationComponents`' ``feature_axis``. Hook points not listed use the default rule.

    Raises:
        ShapeError: two groups at one hook point declare different axes.
    """
    out: dict[str, int] = {}

    def put(hook: str, axis: Any) -> None:
        if not isinstance(axis, int) or isinstance(axis, bool):
            return
        if out.setdefault(hook, axis) != axis:
            raise ShapeError(f"components at '{hook}' declare feature axes {out[hook]} and {axis}; ablate them apart")

    try:
        basis = components.as_basis()
    except TypeError:
        basis = None
    info = getattr(basis, "info", None)
    axes = info.get("feature_axes") if isinstance(info, Mapping) else None
    if isinstance(axes, Mapping):
        for point, axis in axes.items():
            if point in basis.bases:
                put(basis[point].hook, axis)
    for g in components.groups:
        put(getattr(g, "hook", ""), getattr(g, "feature_axis", None))
    return out


def as_component_set(components: Any) -> ComponentModel:
    """Normalise what users pass as ``components`` to one :class:`ComponentModel`.

    Accepts any :class:`ComponentModel` (a ``Basis``, a ``CurvatureBasis``, ``Components``, a
    :class:`ComponentSet`, a parameter decomposition), one component group (an activation or weight
    group: :class:`ActivationComponents`, :class:`WeightComponents`, a ``LayerBasis``), or a list of
    these (their groups in order; the decompositions must share one model signature).

    Raises:
        TypeError: something that is none of these.
        ModelMismatchError: a list of decompositions built for different models.
    """
    if isinstance(components, ComponentModel):
        return components
    if isinstance(components, (ActivationGroup, WeightGroup)):
        return ComponentSet((components,))
    if isinstance(components, (list, tuple)):
        parts = [as_component_set(c) for c in components]
        signatures = [dict(p.signature) for p in parts if getattr(p, "signature", None) is not None]
        if any(s != signatures[0] for s in signatures[1:]):
            raise ModelMismatchError("these components were built for different models; ablate them separately")
        groups = []
        for p in parts:  # a basis's declared feature axes travel with its groups
            axes = declared_axes(p)
            groups += [ActivationComponents(g, feature_axis=axes[g.hook]) if isinstance(g, LayerBasis)
                       and g.hook in axes else g for g in p.groups]
        return ComponentSet(tuple(groups), signatures[0] if signatures else None)
    raise TypeError(
        f"cannot ablate a {type(components).__name__}; pass a decomposition (Basis, CurvatureBasis, Components, "
        "...), a component group (ActivationComponents, WeightComponents, LayerBasis), or a list of these"
    )
