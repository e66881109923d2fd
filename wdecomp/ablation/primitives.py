"""The two kinds of component the ablation engine removes, and how to ablate each.

**Activation-space components** (:class:`ActivationComponents`): the directions of a
:class:`~wdecomp.bases.base.LayerBasis` at a hook point. With coordinates ``c = C (f - mu)``
(``C``: ``(k, d)``, ``C^+``: ``(d, k)``) and an ablation mask ``a in {0, 1}^k`` (``a_i = 1``:
component ``i`` is ablated), the activation is replaced by

    f' = C^+ ((1 - a) * c + a * r) + mu + (f - C^+ C (f - mu) - mu)
       = f - C^+ (a * (c - r)),

so the part of ``f`` outside the span of the basis is kept as it is. The replacement ``r``:

* ``"zero"``: ``r = C (0 - mu)``, the coordinates of a zero activation (``r = 0`` for an
  uncentred basis). Zero-ablating every direction of a complete basis (``k = d``) sets the
  activation to zero, the whole-hook zero baseline.
* ``"mean"``: ``r = E[c] = C (E[f] - mu)``, the data mean over every example and position
  (computed once, in float64).
* ``"resample"``: ``r = c(x')`` for another example ``x'`` of the same batch, drawn by a seeded
  permutation without fixed points (the same permutation for every ablation level, so a sweep
  compares like with like). Positions of a sequence stay aligned. With a distributed objective
  the other example comes from the same batch on the same rank (rank-local resampling).

**Weight-space components** (:class:`WeightComponents`): orthonormal directions
``V = [v_1 .. v_k]`` (``(p, k)``) in the flat space of a parameter group ``theta`` (a
:class:`~wdecomp.params.ParamSet`, e.g. curvature eigenvectors). Ablating a set ``S`` projects
them out,

    theta_S = theta - V_S V_S^T (theta - theta_ref),

with ``theta_ref = 0`` unless given (``reference``). Mean and resample ablation have no weight
distribution to draw from, so they act on the *contribution* of the removed directions to the
output of the module ``m`` that owns the group (the longest common module prefix of its
names). With ``g(x; theta) = m(x)`` the module's output on its input ``x``,

    m'(x) = g(x; theta_S) + [g(x~; theta) - g(x~; theta_S)],

with ``x~ = E[x]`` (``"mean"``: the data mean of the module's input over every example and
position) or ``x~ = x'`` (``"resample"``: the input of another example, as above). For a
module affine in its input (``nn.Linear``, the usual case) the bracket is exactly the data mean
of the removed contribution ``E_x[g(x; theta) - g(x; theta_S)]``; for other modules it is that
contribution at the mean input, an approximation stated here. ``"zero"`` is ``m'(x) = g(x;
theta_S)`` (no bracket).

Both kinds carry the :func:`~wdecomp.bases.base.model_signature` of the model they were built
for (when known); using them with another model raises :class:`ModelMismatchError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from wdecomp.activations import HookPoint
from wdecomp.bases.base import Basis, LayerBasis, model_signature
from wdecomp.errors import ModelMismatchError, SelectionError, ShapeError
from wdecomp.params import ParamSet

METHODS = ("zero", "mean", "resample")


def _check_signature(signature: Mapping[str, Any] | None, model: nn.Module, what: str) -> None:
    if signature is None:
        return
    sig = model_signature(model)
    if dict(sig) != {k: list(v) for k, v in signature.items()}:
        missing = sorted(set(signature) - set(sig))[:5]
        extra = sorted(set(sig) - set(signature))[:5]
        changed = sorted(n for n in set(sig) & set(signature) if list(sig[n]) != list(signature[n]))[:5]
        raise ModelMismatchError(
            f"{what} was built for a different model (missing {missing}, extra {extra}, reshaped {changed})"
        )


@dataclass(frozen=True)
class ActivationComponents:
    """The ``k`` directions of one hook point's basis, as ablatable components.

    Attributes:
        basis: The :class:`LayerBasis` (its ``point`` is the hook).
        importance: ``(k,)`` importance per direction; defaults to ``basis.eigenvalues``.
        signature: Parameter names and shapes of the model the basis belongs to, or ``None``
            (unchecked).
        label: Name shown in reports (defaults to the hook point).
    """

    basis: LayerBasis
    importance: Tensor | None = None
    signature: Mapping[str, list[int]] | None = None
    label: str = ""

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
        return str(HookPoint.parse(self.basis.point))

    def check_model(self, model: nn.Module) -> None:
        """Raise :class:`ModelMismatchError` if built for another model."""
        _check_signature(self.signature, model, f"the components at '{self.label}'")


def _owner(names: Sequence[str]) -> str:
    parts = [n.split(".")[:-1] for n in names]
    common: list[str] = []
    for level in zip(*parts):
        if all(p == level[0] for p in level):
            common.append(level[0])
        else:
            break
    return ".".join(common)


@dataclass(frozen=True)
class WeightComponents:
    """Orthonormal weight-space directions of a parameter group, as ablatable components.

    Attributes:
        names: Parameter names of the group, in flattening order.
        shapes: Their shapes; the flat vector has ``p = sum(prod(shape))`` entries.
        directions: ``V``, shape ``(p, k)``, orthonormal columns (checked to 1e-6).
        importance: ``(k,)`` importance per direction (e.g. curvature eigenvalues); ones if
            ``None``.
        reference: ``theta_ref``, shape ``(p,)``, or ``None`` for zero.
        signature: Parameter names and shapes of the model, or ``None`` (only names/shapes of
            the group are then checked).
        label: Name shown in reports (defaults to the owning module).
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    directions: Tensor
    importance: Tensor | None = None
    reference: Tensor | None = None
    signature: Mapping[str, list[int]] | None = None
    label: str = ""
    module: str = field(default="", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "shapes", tuple(tuple(int(s) for s in sh) for sh in self.shapes))
        if len(self.names) != len(self.shapes) or not self.names:
            raise ShapeError(f"{len(self.names)} names for {len(self.shapes)} shapes")
        p = sum(int(torch.Size(s).numel()) for s in self.shapes)
        V = self.directions
        if V.dim() != 2 or V.shape[0] != p:
            raise ShapeError(f"directions have shape {tuple(V.shape)}, expected ({p}, k) for this parameter group")
        gram = V.detach().to(torch.float64).T @ V.detach().to(torch.float64)
        err = (gram - torch.eye(V.shape[1], dtype=torch.float64, device=gram.device)).abs().max().item() if V.shape[
            1
        ] else 0.0
        if err > 1e-6:
            raise ShapeError(f"directions are not orthonormal (max |V^T V - I| = {err:.2e})")
        imp = torch.ones(V.shape[1], dtype=torch.float64) if self.importance is None else torch.as_tensor(
            self.importance
        )
        if imp.shape != (V.shape[1],):
            raise ShapeError(f"importance has shape {tuple(imp.shape)}, expected ({V.shape[1]},)")
        object.__setattr__(self, "importance", imp.detach().to(torch.float64).cpu())
        if self.reference is not None and tuple(self.reference.shape) != (p,):
            raise ShapeError(f"reference has shape {tuple(self.reference.shape)}, expected ({p},)")
        object.__setattr__(self, "module", _owner(self.names))
        if not self.label:
            object.__setattr__(self, "label", self.module or "<root>")

    @classmethod
    def from_params(
        cls,
        params: ParamSet,
        directions: Tensor,
        importance: Tensor | None = None,
        *,
        model: nn.Module | None = None,
        reference: Tensor | None = None,
        label: str = "",
    ) -> WeightComponents:
        """Build from a :class:`ParamSet` (and the model, to record its signature)."""
        return cls(
            names=params.names,
            shapes=tuple(tuple(s) for s in params.shapes),
            directions=directions,
            importance=importance,
            reference=reference,
            signature=model_signature(model) if model is not None else None,
            label=label,
        )

    @property
    def size(self) -> int:
        """``k``, the number of components."""
        return int(self.directions.shape[1])

    @property
    def hook(self) -> str:
        """The owning module's output: the hook of the whole-hook baselines."""
        return self.module

    def check_model(self, model: nn.Module) -> None:
        """Raise :class:`ModelMismatchError` unless ``model`` has these parameters (and signature)."""
        _check_signature(self.signature, model, f"the weight components of '{self.label}'")
        own = dict(model.named_parameters())
        for name, shape in zip(self.names, self.shapes):
            if name not in own or tuple(own[name].shape) != shape:
                got = tuple(own[name].shape) if name in own else "absent"
                raise ModelMismatchError(
                    f"the weight components of '{self.label}' need parameter '{name}' of shape {shape}; "
                    f"the model has {got}"
                )

    def ablated(self, theta: Tensor, idx: Tensor) -> Tensor:
        """``theta - V_S V_S^T (theta - theta_ref)`` for the flat group vector ``theta`` (``(p,)``)."""
        if idx.numel() == 0:
            return theta
        Vs = self.directions[:, idx].to(theta.dtype).to(theta.device)
        diff = theta if self.reference is None else theta - self.reference.to(theta)
        return theta - Vs @ (Vs.T @ diff)


Primitive = ActivationComponents | WeightComponents


@dataclass(frozen=True)
class ComponentSet:
    """Several component groups under one global index ``0..n-1`` (group by group).

    Attributes:
        groups: The groups, in order; global index ``j`` is local index ``j - offsets[g]`` of
            group ``g``.
    """

    groups: tuple[Primitive, ...]

    def __post_init__(self) -> None:
        if not self.groups:
            raise SelectionError("no components given")

    @property
    def size(self) -> int:
        """Total number of components ``n``."""
        return sum(g.size for g in self.groups)

    def __len__(self) -> int:
        return self.size

    @property
    def offsets(self) -> list[int]:
        out, start = [], 0
        for g in self.groups:
            out.append(start)
            start += g.size
        return out

    @property
    def importance(self) -> Tensor:
        """``(n,)`` importances, concatenated group by group."""
        return torch.cat([g.importance for g in self.groups])

    @property
    def hooks(self) -> tuple[str, ...]:
        """Distinct hooks the components live at (activation points, owning modules)."""
        seen: dict[str, None] = {}
        for g in self.groups:
            seen.setdefault(g.hook, None)
        return tuple(seen)

    def labels(self) -> list[str]:
        """``"<group label>[i]"`` for each global index."""
        return [f"{g.label}[{i}]" for g in self.groups for i in range(g.size)]

    def check_model(self, model: nn.Module) -> None:
        for g in self.groups:
            g.check_model(model)

    def split(self, which: Sequence[int] | Tensor) -> list[Tensor]:
        """Per-group local index tensors of the global indices ``which`` (checked in range)."""
        idx = torch.as_tensor(which, dtype=torch.long).reshape(-1) if len(which) else torch.zeros(0, dtype=torch.long)
        n = self.size
        bad = idx[(idx < 0) | (idx >= n)]
        if bad.numel():
            raise SelectionError(f"component indices {bad[:5].tolist()} out of range 0..{n - 1}")
        if torch.unique(idx).numel() != idx.numel():
            raise SelectionError("component indices repeat")
        out = []
        for g, off in zip(self.groups, self.offsets):
            sel = idx[(idx >= off) & (idx < off + g.size)] - off
            out.append(torch.sort(sel).values)
        return out

    def ranking(self, order: str) -> list[int]:
        """Global indices sorted by importance: ``"least_important"`` (ascending) or
        ``"most_important"`` (descending); ties keep index order."""
        imp = self.importance
        if order == "least_important":
            perm = torch.sort(imp, stable=True).indices
        elif order == "most_important":
            perm = torch.sort(-imp, stable=True).indices
        else:
            raise ValueError(f"order must be 'least_important' or 'most_important', not '{order}'")
        return perm.tolist()


def as_component_set(components: Any) -> ComponentSet:
    """Normalise what users pass as ``components``.

    Accepts a :class:`ComponentSet`, an :class:`ActivationComponents` or
    :class:`WeightComponents`, a :class:`LayerBasis` (unchecked signature), a :class:`Basis`
    (one group per layer, with the basis's model signature), ``wdecomp.components.Components``
    (see :func:`from_components`), or a list of any of these.
    """
    if isinstance(components, ComponentSet):
        return components
    if isinstance(components, (ActivationComponents, WeightComponents)):
        return ComponentSet((components,))
    if isinstance(components, LayerBasis):
        return ComponentSet((ActivationComponents(components),))
    if isinstance(components, Basis):
        return ComponentSet(
            tuple(ActivationComponents(components[p], signature=components.signature) for p in components.layers)
        )
    if isinstance(components, (list, tuple)):
        groups: list[Primitive] = []
        for c in components:
            groups.extend(as_component_set(c).groups)
        return ComponentSet(tuple(groups))
    adapted = from_components(components)
    if adapted is not None:
        return adapted
    raise TypeError(
        f"cannot ablate a {type(components).__name__}; pass ActivationComponents, WeightComponents, a "
        "LayerBasis, a Basis, Components, or a list of these"
    )


def from_components(components: Any) -> ComponentSet | None:
    """Adapter for :class:`wdecomp.components.Components` (duck-typed: this lower layer does not
    import it). Returns ``None`` if ``components`` is not such an object.

    * An activation decomposition (``components.basis`` a :class:`Basis`) becomes one
      :class:`ActivationComponents` group per layer, in ``components.layers`` order, with each
      component's ``importance``; global index ``j`` is ``components[j]`` when the components are
      listed layer by layer in basis order (checked).
    * A curvature decomposition (``basis`` with ``names``, ``shapes``, ``eigenvectors``) becomes
      one :class:`WeightComponents` group (the eigenvectors as ``V``, eigenvalues as importance).

    Ablating activation components edits the activation at the hook (``c_i -> r_i``); this is the
    same model as subtracting the components' weight pieces from the producing layer
    (``Components.project``) when a linear layer produces the activation and ``method="zero"``
    on an uncentred basis.
    """
    basis = getattr(components, "basis", None)
    items = getattr(components, "components", None)
    signature = getattr(components, "signature", None) or None
    if basis is None or items is None:
        return None
    if isinstance(basis, Basis):
        groups: list[Primitive] = []
        position = 0
        for layer in getattr(components, "layers", basis.layers):
            lb = basis[layer]
            comps = [c for c in items if c.layer == layer]
            if [c.index for c in comps] != list(range(lb.size)) or any(
                items[position + i] is not c for i, c in enumerate(comps)
            ):
                raise SelectionError(
                    f"components at '{layer}' are not the basis's {lb.size} directions in order; cannot index them"
                )
            position += len(comps)
            importance = torch.tensor([float(c.importance) for c in comps], dtype=torch.float64)
            groups.append(ActivationComponents(lb, importance, signature))
        return ComponentSet(tuple(groups))
    if all(hasattr(basis, a) for a in ("names", "shapes", "eigenvectors", "eigenvalues")):
        return ComponentSet(
            (
                WeightComponents(
                    tuple(basis.names), tuple(tuple(s) for s in basis.shapes), basis.eigenvectors,
                    basis.eigenvalues, signature=signature or getattr(basis, "signature", None),
                    label=str(getattr(basis, "kind", "weights")),
                ),
            )
        )
    return None
