"""The component model: what "a decomposition of some layers of a model into components" is.

Every decomposition wdecomp makes or consumes — an activation :class:`~wdecomp.bases.Basis` (LIB,
PCA, neuron), a :class:`~wdecomp.bases.CurvatureBasis`, :class:`~wdecomp.components.Components`,
a parameter decomposition (SPD's rank-one subcomponents), SAE latents — is a
:class:`ComponentModel`: an ordered tuple of **groups**, one per decomposed layer, each holding
``size`` components with an ``importance`` each. Components are numbered ``0..n-1`` group by group:
global index ``j`` is local index ``j - offsets[g]`` of group ``g``. The ablation engine, the
interaction graph and the components files consume only what is written here.

**A group** (:class:`ComponentGroup`) has

* ``label`` (``str``): its name in reports (a hook point, a module, a parameter group);
* ``hook`` (``str``): the hook point its components act at — for an activation group the hook
  point of the activation; for a weight group the output of the module that owns the weights
  (the whole-hook zero/mean baselines of an ablation study are taken there);
* ``size`` (``int``): ``k``, its number of components;
* ``importance``: ``(k,)`` float64 tensor, larger = more important (eigenvalues, mean causal
  importance, ...); ``ablation_sweep(order="least_important")`` removes the smallest first;
* ``parameters``: parameter name -> shape of every weight the group reads or edits (``{}`` for
  an activation group); :meth:`ComponentModel.check_model` checks the model has them.

and is one of two kinds.

**Activation group** (:class:`ActivationGroup`): the components live in the activation
``f`` (``(..., d)``, last axis = features) at ``hook``. It gives ``coordinates(f)``
(``(..., d) -> (..., k)``, any function, e.g. an SAE encoder) and ``write(c, idx)``: the
contribution to ``f`` of components ``idx`` with coordinates ``c`` (``(..., len(idx)) ->
(..., d)``, linear in ``c``, e.g. ``c @ D[idx]``). *Ablating components* ``S`` *of the group*
with a stand-in activation ``f~`` (zero, the data mean, another example's activation: the
ablation method) replaces the activation by

    f' = f - write(c_S(f) - c_S(f~), S),

so the part of ``f`` that ``S`` does not explain is kept. A *linear* group (a
:class:`~wdecomp.bases.LayerBasis`) also has ``transform`` ``C`` ``(k, d)``, ``inverse``
``C^+`` ``(d, k)`` and ``center`` ``mu`` ``(d,)`` or ``None``, with ``c = C (f - mu)`` and
``write(c, S) = C^+_S c``; the engine then forms the edit as one fused affine map.

**Weight group** (:class:`WeightGroup`): the components are pieces of the weights named in
``parameters``, all owned by the module ``module`` (``hook == module``). It gives
``remove(weights, idx)``: given ``{name: tensor}`` for every name in ``parameters``, the weights
with components ``idx`` taken out (same names and shapes). *Ablating components* ``S`` runs the
module with ``remove(W, S)``; for mean and resample ablation the removed components'
contribution on a stand-in input ``x~`` is put back: ``m'(x) = g(x; W_S) + g(x~; W) - g(x~; W_S)``.
Examples: orthonormal directions ``V`` of a parameter group (:class:`WeightComponents`,
curvature eigenvectors): ``remove(theta, S) = theta - V_S V_S^T (theta - theta_ref)``; SPD's
rank-one subcomponents of a ``Linear`` ``L`` with ``W ~ U V`` (``U`` ``(d_out, C)``, ``V``
``(C, d_in)``): ``module = "L"``, ``parameters = {"L.weight": (d_out, d_in)}``, ``size = C``,
``remove({"L.weight": W}, S) = {"L.weight": W - U[:, S] @ V[S, :]}`` (the part of ``W`` outside
``U V`` is kept).

**A decomposition** (:class:`ComponentModel`, an abstract base class) supplies ``groups`` and a
``signature`` (:func:`model_signature` of the model it was built for, or ``None``); it inherits the
global indexing (:attr:`~ComponentModel.size`, :attr:`~ComponentModel.offsets`,
:meth:`~ComponentModel.split`, :meth:`~ComponentModel.ranking`, :meth:`~ComponentModel.labels`)
and the one :meth:`~ComponentModel.check_model`. :class:`ComponentSet` is the plain one: a
tuple of groups (what ``ablate`` builds from a list).
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from wdecomp.errors import ModelMismatchError, SelectionError, ShapeError
from wdecomp.params import ParamSet

__all__ = [
    "ActivationGroup",
    "ComponentGroup",
    "ComponentModel",
    "ComponentSet",
    "WeightComponents",
    "WeightGroup",
    "model_signature",
]


def model_signature(model: nn.Module) -> dict[str, list[int]]:
    """Names and shapes of a model's parameters and buffers: what a decomposition must be used with."""
    sig = {n: list(p.shape) for n, p in model.named_parameters()}
    sig.update({n: list(b.shape) for n, b in model.named_buffers()})
    return sig


@runtime_checkable
class ComponentGroup(Protocol):
    """One decomposed layer: ``size`` components with an importance each (module docstring)."""

    @property
    def label(self) -> str: ...

    @property
    def hook(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def importance(self) -> Tensor: ...

    @property
    def parameters(self) -> Mapping[str, tuple[int, ...]]: ...


@runtime_checkable
class ActivationGroup(ComponentGroup, Protocol):
    """Components in the activation at ``hook``: ``f' = f - write(c_S(f) - c_S(f~), S)``."""

    def coordinates(self, f: Tensor) -> Tensor:
        """``(..., d) -> (..., k)``."""
        ...

    def write(self, c: Tensor, idx: Tensor) -> Tensor:
        """Contribution of components ``idx`` with coordinates ``c``: ``(..., len(idx)) -> (..., d)``."""
        ...


@runtime_checkable
class WeightGroup(ComponentGroup, Protocol):
    """Components that are pieces of the weights of ``module``: ``W -> remove(W, S)``."""

    @property
    def module(self) -> str: ...

    def remove(self, weights: Mapping[str, Tensor], idx: Tensor) -> dict[str, Tensor]:
        """The weights (every name in ``parameters``) with components ``idx`` taken out."""
        ...


def _mismatch(signature: Mapping[str, Any], sig: Mapping[str, list[int]], what: str) -> ModelMismatchError | None:
    if dict(sig) == {k: list(v) for k, v in signature.items()}:
        return None
    missing = sorted(set(signature) - set(sig))[:5]
    extra = sorted(set(sig) - set(signature))[:5]
    changed = sorted(n for n in set(sig) & set(signature) if list(sig[n]) != list(signature[n]))[:5]
    return ModelMismatchError(
        f"{what} was built for a different model (missing {missing}, extra {extra}, reshaped {changed}); "
        "use it with the model it was built for"
    )


class ComponentModel(ABC):
    """A decomposition of some layers of one model into components (module docstring).

    Subclasses supply ``groups`` (the groups, one per decomposed layer, in order) and
    ``signature`` (a :func:`model_signature`, or ``None`` when unknown), as attributes or
    properties; everything else is derived here, once.
    """

    groups: tuple[ComponentGroup, ...]
    """The groups, one per decomposed layer, in order (an attribute or a property)."""
    signature: Mapping[str, list[int]] | None

    def describe(self) -> str:
        """How error messages name this decomposition."""
        return f"this {type(self).__name__}"

    @property
    def size(self) -> int:
        """Total number of components ``n``."""
        return sum(int(g.size) for g in self.groups)

    @property
    def offsets(self) -> list[int]:
        """Global index of each group's first component."""
        out, start = [], 0
        for g in self.groups:
            out.append(start)
            start += int(g.size)
        return out

    @property
    def importance(self) -> Tensor:
        """``(n,)`` importances, concatenated group by group (float64)."""
        return torch.cat([torch.as_tensor(g.importance).detach().to(torch.float64).cpu().reshape(-1)
                          for g in self.groups])

    @property
    def hooks(self) -> tuple[str, ...]:
        """Distinct hook points the components act at, in group order."""
        return tuple(dict.fromkeys(g.hook for g in self.groups))

    def labels(self) -> list[str]:
        """``"<group label>[i]"`` for each global index."""
        return [f"{g.label}[{i}]" for g in self.groups for i in range(int(g.size))]

    def split(self, which: Sequence[int] | Tensor) -> list[Tensor]:
        """Per-group sorted local index tensors of the global indices ``which``.

        Raises:
            SelectionError: an index is out of range or repeated.
        """
        idx = torch.as_tensor(which, dtype=torch.long).reshape(-1) if len(which) else torch.zeros(0, dtype=torch.long)
        n = self.size
        bad = idx[(idx < 0) | (idx >= n)]
        if bad.numel():
            raise SelectionError(f"component indices {bad[:5].tolist()} out of range 0..{n - 1}")
        if torch.unique(idx).numel() != idx.numel():
            raise SelectionError("component indices repeat")
        return [torch.sort(idx[(idx >= off) & (idx < off + g.size)] - off).values
                for g, off in zip(self.groups, self.offsets)]

    def ranking(self, order: str) -> list[int]:
        """Global indices by importance: ``"least_important"`` (ascending) or ``"most_important"``
        (descending); ties keep index order."""
        imp = self.importance
        if order == "least_important":
            return torch.sort(imp, stable=True).indices.tolist()
        if order == "most_important":
            return torch.sort(-imp, stable=True).indices.tolist()
        raise ValueError(f"order must be 'least_important' or 'most_important', not '{order}'")

    def check_model(self, model: nn.Module) -> None:
        """Raise :class:`ModelMismatchError` unless ``model`` is the model this was built for: the
        same parameter and buffer names and shapes as ``signature`` (and as any group's own
        ``signature``), and every parameter a group names, with its shape."""
        sig = model_signature(model)
        signatures = [(self.signature, self.describe())]
        signatures += [(getattr(g, "signature", None), f"the components at '{g.label}'") for g in self.groups]
        for signature, what in signatures:
            if signature is not None and (err := _mismatch(signature, sig, what)) is not None:
                raise err
        for g in self.groups:
            for name, shape in g.parameters.items():
                if name not in sig or tuple(sig[name]) != tuple(shape):
                    got = tuple(sig[name]) if name in sig else "absent"
                    raise ModelMismatchError(
                        f"the components of '{g.label}' need parameter '{name}' of shape {tuple(shape)}; "
                        f"the model has {got}"
                    )

    def as_basis(self) -> Any:
        """The activation :class:`~wdecomp.bases.Basis` behind these components (what an
        interaction graph joins), or :class:`TypeError` when they are not an activation basis."""
        raise TypeError(
            "interaction graphs join activation components of consecutive layers; these components come "
            f"from a {type(self).__name__}, not an activation Basis"
        )


@dataclass(frozen=True, eq=False)
class ComponentSet(ComponentModel):
    """Several component groups under one global index ``0..n-1`` (group by group).

    Attributes:
        groups: The groups, in order (any :class:`ComponentGroup`).
        signature: The model's :func:`model_signature`, or ``None``.
    """

    groups: tuple[ComponentGroup, ...]
    signature: Mapping[str, list[int]] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple(self.groups))
        if not self.groups:
            raise SelectionError("no components given")
        for g in self.groups:
            if not isinstance(g, ComponentGroup) or not isinstance(g, (ActivationGroup, WeightGroup)):
                raise TypeError(f"a {type(g).__name__} is not a component group (see wdecomp.bases.protocol)")
            if torch.as_tensor(g.importance).shape != (g.size,):
                raise ShapeError(f"'{g.label}': importance has shape {tuple(g.importance.shape)}, expected ({g.size},)")

    def __len__(self) -> int:
        return self.size

    def describe(self) -> str:
        return "these components"


def _owner(names: Sequence[str]) -> str:
    """The longest common module prefix of parameter names."""
    parts = [n.split(".")[:-1] for n in names]
    common: list[str] = []
    for level in zip(*parts):
        if all(p == level[0] for p in level):
            common.append(level[0])
        else:
            break
    return ".".join(common)


@dataclass(frozen=True, eq=False)
class WeightComponents:
    """Orthonormal weight-space directions of a parameter group: a :class:`WeightGroup`.

    Removing a set ``S`` projects the directions out of the flat group vector ``theta``:
    ``theta_S = theta - V_S V_S^T (theta - theta_ref)``.

    Attributes:
        names: Parameter names of the group, in flattening order.
        shapes: Their shapes; the flat vector has ``p = sum(prod(shape))`` entries.
        directions: ``V``, shape ``(p, k)``, orthonormal columns (checked to 1e-6).
        importance: ``(k,)`` importance per direction (e.g. curvature eigenvalues); ones if
            ``None``.
        reference: ``theta_ref``, shape ``(p,)``, or ``None`` for zero.
        signature: Parameter names and shapes of the model, or ``None`` (only the group's own
            names and shapes are then checked).
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
        V64 = V.detach().to(torch.float64)
        eye = torch.eye(V.shape[1], dtype=torch.float64, device=V.device)
        err = float((V64.T @ V64 - eye).abs().max()) if V.shape[1] else 0.0
        if not err <= 1e-6:
            raise ShapeError(f"directions are not orthonormal (max |V^T V - I| = {err:.2e})")
        imp = torch.ones(V.shape[1], dtype=torch.float64) if self.importance is None else torch.as_tensor(
            self.importance)
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

    @property
    def parameters(self) -> dict[str, tuple[int, ...]]:
        return dict(zip(self.names, self.shapes))

    def ablated(self, theta: Tensor, idx: Tensor) -> Tensor:
        """``theta - V_S V_S^T (theta - theta_ref)`` for the flat group vector ``theta`` (``(p,)``)."""
        if idx.numel() == 0:
            return theta
        Vs = self.directions[:, idx].to(theta.dtype).to(theta.device)
        diff = theta if self.reference is None else theta - self.reference.to(theta)
        return theta - Vs @ (Vs.T @ diff)

    def remove(self, weights: Mapping[str, Tensor], idx: Tensor) -> dict[str, Tensor]:
        """:meth:`ablated` on the named weights (flattened in ``names`` order, then reshaped)."""
        theta = torch.cat([weights[n].reshape(-1) for n in self.names])
        cut = self.ablated(theta, idx.to(theta.device))
        out, start = {}, 0
        for n, shape in zip(self.names, self.shapes):
            size = int(torch.Size(shape).numel())
            out[n] = cut[start:start + size].reshape(shape)
            start += size
        return out
