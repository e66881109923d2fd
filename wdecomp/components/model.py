"""Components: a model's weights rewritten in a basis (:class:`Components`, :func:`decompose`);
the math is in the package docstring (:mod:`wdecomp.components`)."""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from wdecomp.bases.base import Basis, LayerBasis, model_signature
from wdecomp.bases.curvature import CurvatureBasis
from wdecomp.bases.protocol import ComponentModel
from wdecomp.bases.section import feature_axis
from wdecomp.batch import as_batches, split
from wdecomp.components.files import _CONV, read_checked, weights_fingerprint, write_basis
from wdecomp.errors import SelectionError, ShapeError
from wdecomp.hooks import HookPoint, ModuleHook, call, edit, resolve_module

__all__ = ["Component", "Components", "decompose", "load_components"]


@dataclass(frozen=True, eq=False)
class Component:
    """One component.

    Attributes:
        layer: Hook point (activation bases) or ``"weights"`` (curvature eigenbases).
        index: Index within its layer (descending importance).
        importance: Eigenvalue of the method (``Lambda``, ``D``, or the curvature eigenvalue).
        direction: ``(d,)`` row ``C_i`` that reads the coordinate from the activations, or ``None``.
        inverse: ``(d,)`` column ``C^+_{:,i}`` that writes it back, or ``None``.
        weights: Parameter name -> the component's weights in the basis: the producing layer's row
            ``(C W)_i`` / bias entry, the consuming layer's column ``(W' C^+)_{:,i}``, or the
            eigenvector in the parameter's shape.
    """

    layer: str
    index: int
    importance: float
    direction: Tensor | None
    inverse: Tensor | None
    weights: Mapping[str, Tensor]

    def __str__(self) -> str:
        shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in self.weights.items())
        return f"{self.layer}[{self.index}] importance {self.importance:.4g}; weights: {shapes or 'none adjacent'}"

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "index": self.index, "importance": self.importance,
                "weights": {n: list(t.shape) for n, t in self.weights.items()}}


def _is_conv(m: nn.Module) -> bool:
    """A plain convolution (``Conv1d/2d/3d``, one group): it mixes channels (axis 1) like a ``Linear``."""
    return isinstance(m, _CONV) and m.groups == 1


def _producer_kind(m: nn.Module) -> bool:
    return isinstance(m, (nn.Linear, nn.Embedding)) or _is_conv(m)


def _adjacency(model: nn.Module, points: Sequence[str], inputs: Any) -> dict[str, dict[str, Any]]:
    """For each hook point, the ``Linear``/``Embedding``/conv module whose output *is* its activation
    (producer) and the ``Linear``/conv modules whose input *is* it, or is its ``nn.Flatten`` (consumers),
    by tensor identity. Every tensor seen is kept alive during the pass so identities are not reused."""
    seen_in: dict[str, Tensor] = {}
    seen_out: dict[str, Tensor] = {}
    tensors: dict[str, Tensor] = {}
    parsed = {p: HookPoint.parse(p) for p in points}

    def watcher(name: str) -> ModuleHook:
        def hook(_m: nn.Module, args: tuple, _kwargs: dict, out: Any) -> None:
            if args and isinstance(args[0], Tensor):
                seen_in.setdefault(name, args[0])
            if isinstance(out, Tensor):
                seen_out.setdefault(name, out)
            for p, hp in parsed.items():
                if hp.module == name and p not in tensors:
                    t = out if hp.side == "output" else (args[0] if args else None)
                    if isinstance(t, Tensor):
                        tensors[p] = t

        return hook

    with edit(model, modules=[(name, watcher(name)) for name, _ in model.named_modules()]), torch.no_grad():
        call(model, inputs)
    modules = dict(model.named_modules())
    adj: dict[str, dict[str, Any]] = {}
    for p in points:
        t = tensors.get(p)
        producer = None
        consumers: list[str] = []
        if t is not None:
            for name, o in seen_out.items():
                if o is t and _producer_kind(modules[name]):
                    producer = name
            flat = [seen_out[n] for n, i in seen_in.items()
                    if i is t and isinstance(modules[n], nn.Flatten) and n in seen_out]
            consumers = [n for n, i in seen_in.items()
                         if (i is t and (isinstance(modules[n], nn.Linear) or _is_conv(modules[n])))
                         or (isinstance(modules[n], nn.Linear) and any(i is f for f in flat))]
        adj[p] = {"producer": producer, "consumers": consumers, "ndim": None if t is None else t.dim(),
                  "shape": None if t is None else tuple(t.shape)}
    return adj


def _feature_axes(model: nn.Module, basis: Basis, adjacency: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Hook point -> its feature axis where it is not the last: the basis's own
    (``info["feature_axes"]``), else the default of :func:`~wdecomp.bases.section.feature_axis` when the
    activation's number of axes is known (from data)."""
    declared = basis.info.get("feature_axes") if isinstance(basis.info, Mapping) else None
    declared = declared if isinstance(declared, Mapping) else {}
    out = {}
    for point in basis.layers:
        ndim = adjacency.get(point, {}).get("ndim")
        axis = declared.get(point)
        if not isinstance(axis, int) or isinstance(axis, bool):
            axis = feature_axis(model, point, ndim) if isinstance(ndim, int) else None
        if axis is not None and isinstance(ndim, int) and ndim > 0:
            axis %= ndim
            if axis == ndim - 1:
                axis = None
        elif axis is not None and axis != 1:  # without data: only the channels axis is told apart from the last
            axis = None
        if axis is not None:
            out[point] = int(axis)
    return out


def _check_layout(model: nn.Module, basis: Basis, adjacency: Mapping[str, Mapping[str, Any]],
                  axes: Mapping[str, int]) -> None:
    """Refuse what the folds below cannot rewrite: a feature axis that is neither the last (``Linear``,
    ``Embedding``) nor the channels (axis 1, convolutions), or adjacent weights that act on another axis."""
    for point in basis.layers:
        adj = adjacency.get(point, {})
        ndim, axis = adj.get("ndim"), axes.get(point)
        names = [n for n in [adj.get("producer"), *adj.get("consumers", [])] if n is not None]
        if axis is not None and axis != 1:
            raise ShapeError(
                f"the basis at '{point}' is over axis {axis} of a {ndim}-axis activation, neither its channels "
                "(axis 1) nor its last axis; components fold the basis into Linear/Embedding weights (last axis) "
                "and convolutions (channels) only. Graph or ablate the basis directly (wd.interaction_graph, "
                "wd.ablate and wd.edge_ablation read the axis), or build it with feature_dim=1 or -1")
        channels = axis == 1 and isinstance(ndim, int) and ndim > 2
        d, shape = basis[point].dim, adj.get("shape")
        for name in names:
            m = resolve_module(model, name)
            if _is_conv(m) and not channels and isinstance(ndim, int):
                raise ShapeError(f"'{name}' ({type(m).__name__}) mixes the channels (axis 1) of '{point}', but the "
                                 "basis there is over its last axis; build the basis with feature_dim=1")
            flat = isinstance(m, nn.Linear) and name in adj.get("consumers", []) and (
                m.in_features != d or (shape is not None and math.prod(shape[1:]) == d and len(shape) > 2))
            if channels and (isinstance(m, nn.Embedding) or (isinstance(m, nn.Linear) and not flat)):
                raise ShapeError(f"'{name}' ({type(m).__name__}) acts on the last axis of '{point}', but the basis "
                                 "there is over its channels (axis 1); build the basis with feature_dim=-1")
            if flat and shape is not None and m.in_features != math.prod(shape[1:]):
                raise ShapeError(f"'{name}' reads {m.in_features} features, not the {math.prod(shape[1:])} of "
                                 f"'{point}' flattened")


def _static_adjacency(model: nn.Module, points: Sequence[str]) -> dict[str, dict[str, Any]]:
    adj = {}
    for p in points:
        hp = HookPoint.parse(p)
        m = resolve_module(model, hp.module)
        producer = hp.module if hp.side == "output" and _producer_kind(m) else None
        consumers = [hp.module] if hp.side == "input" and (isinstance(m, nn.Linear) or _is_conv(m)) else []
        adj[p] = {"producer": producer, "consumers": consumers}
    return adj


def _consumer_view(m: nn.Module, W: Tensor, d: int, axis: int | None) -> Tensor:
    """A consumer's weights as ``(out, d, R)``: ``R`` = 1 (a ``Linear`` on the last axis), the positions
    (a ``Linear`` after ``nn.Flatten``; feature axis 1 or last) or the kernel (a convolution)."""
    if isinstance(m, nn.Linear):
        if W.shape[1] == d:
            return W.reshape(W.shape[0], d, 1)
        if axis is None:  # features last: flattened index p * d + c
            return W.reshape(W.shape[0], -1, d).transpose(1, 2)
        return W.reshape(W.shape[0], d, -1)  # channels first: c * P + p
    return W.reshape(W.shape[0], d, -1)


def _consumer_back(m: nn.Module, V: Tensor, like: Tensor, axis: int | None) -> Tensor:
    """Inverse of :func:`_consumer_view` (``(out, d, R)`` -> the parameter's shape)."""
    if isinstance(m, nn.Linear) and V.shape[2] > 1 and axis is None:
        return V.transpose(1, 2).reshape(like.shape)
    return V.reshape(like.shape)


def _mean_through_padding(m: nn.Module) -> bool:
    """Whether a convolution pads with zeros: the mean's contribution then differs at the border."""
    if m.padding_mode != "zeros":
        return False
    return m.padding != "valid" if isinstance(m.padding, str) else any(p != 0 for p in m.padding)


@dataclass(frozen=True, eq=False)
class Components(ComponentModel, Sequence[Component]):
    """The components of one model in one basis (see the module docstring): a
    :class:`~wdecomp.bases.protocol.ComponentModel` whose groups are the basis's (one
    :class:`~wdecomp.bases.base.LayerBasis` per hook point, or one weight group of eigenvectors),
    so ``ablate``, ``ablation_sweep`` and ``interaction_graph`` take it as it is.

    Attributes:
        basis: The :class:`Basis` or :class:`CurvatureBasis` they come from.
        components: All components, layer by layer in forward order, each layer by importance.
        adjacency: For activation bases, hook point -> ``{"producer": name | None, "consumers": [...]}``.
        signature: :func:`model_signature` of the model.
        fingerprint: :func:`weights_fingerprint` of the model's weights when decomposed (saved with
            the components; loading with other weights is refused or warned about).
        axes: Hook point -> its feature axis where that is not the last (1: the channels of a conv
            activation, folded into the adjacent convolutions).
    """

    basis: Basis | CurvatureBasis
    components: tuple[Component, ...]
    adjacency: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    signature: Mapping[str, list[int]] = field(default_factory=dict)
    fingerprint: str | None = None
    axes: Mapping[str, int] = field(default_factory=dict)

    # ------------------------------------------------------------------ container
    def __len__(self) -> int:
        return len(self.components)

    def __getitem__(self, i: Any) -> Any:
        return self.components[i]

    def __iter__(self) -> Iterator[Component]:
        return iter(self.components)

    @property
    def kind(self) -> str:
        """``"activation"`` or ``"curvature"``."""
        return "curvature" if isinstance(self.basis, CurvatureBasis) else "activation"

    @property
    def layers(self) -> tuple[str, ...]:
        return ("weights",) if self.kind == "curvature" else tuple(self.basis.layers)

    def by_layer(self, layer: str) -> list[Component]:
        return [c for c in self.components if c.layer == layer]

    @property
    def importances(self) -> Tensor:
        return torch.tensor([c.importance for c in self.components], dtype=torch.float64)

    @property
    def groups(self) -> tuple[Any, ...]:
        """The basis's groups (global index ``j`` is ``self[j]``)."""
        return self.basis.groups

    def describe(self) -> str:
        return "these components"

    def as_basis(self) -> Basis:
        """The activation basis (for interaction graphs)."""
        return self.basis.as_basis()

    def indices(self, keep: Iterable[Any] | Callable[[Component], bool] | None) -> list[int]:
        """Global indices of ``keep``: ``None`` (all), a predicate on :class:`Component`, global
        indices, or ``(layer, index)`` pairs."""
        if keep is None:
            return list(range(len(self)))
        if callable(keep):
            return [i for i, c in enumerate(self.components) if keep(c)]
        lookup = {(c.layer, c.index): i for i, c in enumerate(self.components)}
        out = []
        for item in keep:
            if isinstance(item, tuple):
                if item not in lookup:
                    raise SelectionError(f"no component {item}; layers are {list(self.layers)}")
                out.append(lookup[item])
            else:
                i = int(item)
                if not 0 <= i < len(self):
                    raise SelectionError(f"component index {i} out of range 0..{len(self) - 1}")
                out.append(i)
        return out

    # ------------------------------------------------------------------ weight space
    def piece(self, model: nn.Module, i: int) -> dict[str, Tensor]:
        """What removing component ``i`` takes out of the weights (parameter shapes, float64)."""
        comp = self.components[i]
        params = dict(model.named_parameters())
        if self.kind == "curvature":
            b: CurvatureBasis = self.basis  # type: ignore[assignment]
            theta = b.flatten({n: params[n].detach().to(torch.float64) for n in b.names})
            v = b.eigenvectors[:, comp.index].to(torch.float64)
            return b.unflatten(v * (v @ theta))
        lb: LayerBasis = self.basis[comp.layer]  # type: ignore[index]
        C_i = lb.transform[comp.index].to(torch.float64)
        P_i = lb.inverse[:, comp.index].to(torch.float64)
        o_i = _offsets(lb)[comp.index]  # c_i = C_i f + o_i
        adj = self.adjacency.get(comp.layer, {})
        axis = self.axes.get(comp.layer)
        out: dict[str, Tensor] = {}
        producer = adj.get("producer")
        if producer is not None:
            m = resolve_module(model, producer)
            W = m.weight.detach().to(torch.float64)
            if isinstance(m, nn.Embedding):
                out[f"{producer}.weight"] = torch.outer(W @ C_i + o_i, P_i)
            else:  # Linear (d, in) or convolution (d, in, *kernel): rows are output channels
                out[f"{producer}.weight"] = torch.outer(P_i, C_i @ W.reshape(W.shape[0], -1)).reshape(W.shape)
                if m.bias is not None:
                    out[f"{producer}.bias"] = P_i * (C_i @ m.bias.detach().to(torch.float64) + o_i)
            return out
        for name in adj.get("consumers", []):
            m = resolve_module(model, name)
            Wp = m.weight.detach().to(torch.float64)
            col = torch.einsum("odr,d->or", _consumer_view(m, Wp, lb.dim, axis), P_i)
            out[f"{name}.weight"] = _consumer_back(m, torch.einsum("or,c->ocr", col, C_i), Wp, axis)
            shift = -float(o_i)
            if _is_conv(m) and shift != 0.0 and _mean_through_padding(m):
                what = "centre's" if lb.const_column is None else "folded constant's (variant='rib-uncentred')"
                raise ShapeError(
                    f"component {comp.layer}[{comp.index}] is read by '{name}', which pads with zeros: the basis "
                    f"{what} contribution differs at the border and cannot be folded into its bias. Use a "
                    "basis without a centre or constant (center=False, constant=False), padding_mode other than "
                    "'zeros', or ablate the activations instead (wd.ablate)")
            if m.bias is not None:
                out[f"{name}.bias"] = -col.sum(1) * shift
        return out

    def project(self, model: nn.Module, keep: Any = None) -> dict[str, Tensor]:
        """Weights with only the components in ``keep``: ``W - sum_{i not kept} piece_i``.

        Returns:
            Parameter name -> new value (model dtype) for every parameter any component touches.
        """
        self.check_model(model)
        kept = set(self.indices(keep))
        params = dict(model.named_parameters())
        touched: dict[str, Tensor] = {}
        for i in range(len(self)):
            for name, piece in self.piece(model, i).items():
                if name not in touched:
                    touched[name] = params[name].detach().to(torch.float64).clone()
                if i not in kept:
                    touched[name] -= piece
        if not touched and self.kind == "activation":
            raise SelectionError(
                "no Linear or Embedding weights are adjacent to these hook points (or decompose() got no "
                "data to find the consuming layers); ablate the activations instead"
            )
        return {n: t.to(params[n].dtype) for n, t in touched.items()}

    def projected_model(self, model: nn.Module, keep: Any = None) -> nn.Module:
        """A deep copy of ``model`` whose weights are :meth:`project` ``(model, keep)``."""
        new = self.project(model, keep)
        clone = copy.deepcopy(model)
        with torch.no_grad():
            for name, p in clone.named_parameters():
                if name in new:
                    p.copy_(new[name])
        return clone

    def coefficients(self, model: nn.Module) -> Tensor:
        """Curvature bases: the weights' coordinates ``V^T theta`` ``(k,)``."""
        if self.kind != "curvature":
            raise TypeError("coefficients() is for curvature eigenbases; activation bases rewrite the model")
        b: CurvatureBasis = self.basis  # type: ignore[assignment]
        params = dict(model.named_parameters())
        theta = b.flatten({n: params[n].detach().to(torch.float64) for n in b.names})
        return b.eigenvectors.to(torch.float64).T @ theta

    # ------------------------------------------------------------------ rewriting
    def rewrite(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` that computes in the basis (same function on the fitted data).

        Activation bases: see the module docstring (``<point>.coords`` holds the coordinates).
        Curvature eigenbases: the weights rebuilt as ``V a`` plus their part outside ``span(V)``.
        """
        self.check_model(model)
        if self.kind == "curvature":
            return self.projected_model(model, None)
        clone = copy.deepcopy(model)
        dtype = next(model.parameters()).dtype
        for point in sorted(self.basis.layers, key=lambda p: -HookPoint.parse(p).module.count(".")):
            lb: LayerBasis = self.basis[point]  # type: ignore[index]
            hp = HookPoint.parse(point)
            if not hp.module:
                raise SelectionError("cannot rewrite a hook point on the model itself; name a submodule")
            inner = resolve_module(clone, hp.module)
            producer = self.adjacency.get(point, {}).get("producer")
            axis = self.axes.get(point)
            back = _along(_inverse_linear(lb, dtype), axis)
            if hp.side == "output":
                folded = _fold_producer(inner, lb, dtype) if producer == hp.module else None
                to = None if folded is not None else _along(_linear(lb.transform, _offset(lb), dtype), axis)
                new: nn.Module = _InBasis(folded if folded is not None else inner, to, back)
            else:
                new = _InBasisInput(inner, _along(_linear(lb.transform, _offset(lb), dtype), axis), back)
            parent_name, _, child = hp.module.rpartition(".")
            setattr(resolve_module(clone, parent_name), child, new)
        return clone.eval()

    def verify(self, model: nn.Module, data: Iterable[Any]) -> float:
        """Largest absolute difference between :meth:`rewrite` ``(model)`` and ``model`` on ``data``."""
        rewritten = self.rewrite(model)
        worst = 0.0
        with torch.no_grad():
            for batch in as_batches(data, keep=False, what="Components.verify"):
                x = split(batch)[0]
                worst = max(worst, float((call(rewritten, x) - call(model, x)).abs().max()))
        return worst

    # ------------------------------------------------------------------ reporting
    def __str__(self) -> str:
        lines = [f"Components ({self.kind}, {self.basis.method}): {len(self)} components"]
        for layer in self.layers:
            comps = self.by_layer(layer)
            imp = ", ".join(f"{c.importance:.3g}" for c in comps[:6]) + (", ..." if len(comps) > 6 else "")
            adj = self.adjacency.get(layer, {})
            where = ""
            if adj:
                where = f"  producer={adj.get('producer')} consumers={list(adj.get('consumers', []))}"
            lines.append(f"  {layer:<24} {len(comps):>5}  importance [{imp}]{where}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "method": self.basis.method, "count": len(self),
                "adjacency": {k: dict(v) for k, v in self.adjacency.items()},
                "components": [c.to_dict() for c in self.components]}

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the basis, adjacency and the model's weights fingerprint to ``path`` (safetensors
        + JSON header), atomically."""
        return write_basis(self.basis, path, self.adjacency, self.fingerprint)

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module, *, weights: str = "refuse") -> Components:
        """Read components saved by :meth:`save` for ``model`` (validated; see :func:`load_components`)."""
        return load_components(path, model, weights=weights)


def _offset(lb: LayerBasis) -> Tensor | None:
    """``o`` in ``c = C f + o`` at ``s = 1``: ``-C mu`` (a centred basis; a constant node's coordinate
    is written as 0, it writes nothing back), the constant's column ``b`` (the general folded form,
    rib's ``center: false``), or ``None``."""
    if lb.const_column is not None:
        return lb.const_column.to(torch.float64)
    return None if lb.center is None else -(lb.transform.to(torch.float64) @ lb.center.to(torch.float64))


def _offsets(lb: LayerBasis) -> Tensor:
    """:func:`_offset`, zeros where there is none: ``c = C f + o`` in every form of basis."""
    o = _offset(lb)
    return torch.zeros(lb.size, dtype=torch.float64) if o is None else o


def _linear(weight: Tensor, bias: Tensor | None, dtype: torch.dtype) -> nn.Linear:
    out_f, in_f = weight.shape
    lin = nn.Linear(in_f, out_f, bias=bias is not None).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def _inverse_linear(lb: LayerBasis, dtype: torch.dtype) -> nn.Linear:
    return _linear(lb.inverse, lb.center, dtype)


def _fold_producer(m: nn.Module, lb: LayerBasis, dtype: torch.dtype) -> nn.Module | None:
    """``m`` with ``C`` folded into its outputs: ``C (W a + b) + o`` (``o`` = :func:`_offset`: ``-C mu``
    for a centred basis, the constant's column in the general folded form)."""
    C = lb.transform.to(torch.float64)
    o = _offset(lb)
    W = m.weight.detach().to(torch.float64) if isinstance(m, nn.Linear) or _is_conv(m) else None
    bias = None  # C b + o: the folded module's bias, None when neither part exists
    if W is not None and (m.bias is not None or o is not None):
        b = torch.zeros(W.shape[0], dtype=torch.float64) if m.bias is None else m.bias.detach().to(torch.float64)
        bias = C @ b + (0.0 if o is None else o)
    if isinstance(m, nn.Linear):
        assert W is not None
        return _linear(C @ W, bias, dtype)
    if _is_conv(m):  # output channel i of the folded convolution is row i of (C W, C b + o)
        assert W is not None
        conv = copy.deepcopy(m).to(dtype)
        conv.out_channels = C.shape[0]
        conv.weight = nn.Parameter((C @ W.reshape(W.shape[0], -1)).reshape(C.shape[0], *W.shape[1:]).to(dtype))
        if bias is not None:
            conv.bias = nn.Parameter(bias.to(dtype))
        return conv
    if isinstance(m, nn.Embedding) and m.padding_idx is None and m.max_norm is None:
        E = m.weight.detach().to(torch.float64)
        emb = nn.Embedding(E.shape[0], C.shape[0]).to(dtype)
        with torch.no_grad():
            emb.weight.copy_(E @ C.T + (0.0 if o is None else o))
        return emb
    return None


class _AlongAxis(nn.Module):
    """``linear`` applied along ``axis`` of its input (the channels of a conv activation)."""

    def __init__(self, linear: nn.Linear, axis: int) -> None:
        super().__init__()
        self.linear = linear
        self.axis = axis

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.movedim(self.axis, -1)).movedim(-1, self.axis)


def _along(linear: nn.Linear, axis: int | None) -> nn.Module:
    return linear if axis is None else _AlongAxis(linear, axis)


class _InBasis(nn.Module):
    """``inner`` (with ``C`` folded in, or followed by ``to_coords``), then ``coords`` (identity
    hook point on the basis coordinates), then ``from_coords`` (``C^+``, bias ``mu``)."""

    def __init__(self, inner: nn.Module, to_coords: nn.Module | None, from_coords: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.to_coords = to_coords if to_coords is not None else nn.Identity()
        self.coords = nn.Identity()
        self.from_coords = from_coords

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        out = self.inner(*args, **kwargs)
        if not isinstance(out, Tensor):
            raise ShapeError("rewrite() supports hook points whose module returns one tensor")
        return self.from_coords(self.coords(self.to_coords(out)))


class _InBasisInput(nn.Module):
    """The module ``inner`` reading its first input through the basis: ``inner(C^+ C x, ...)``."""

    def __init__(self, inner: nn.Module, to_coords: nn.Module, from_coords: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.to_coords = to_coords
        self.coords = nn.Identity()
        self.from_coords = from_coords

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        return self.inner(self.from_coords(self.coords(self.to_coords(x))), *args, **kwargs)


def decompose(
    model: nn.Module,
    basis: Basis | CurvatureBasis,
    data: Any = None,
    *,
    adjacency: Mapping[str, Mapping[str, Any]] | None = None,
) -> Components:
    """Rewrite ``model``'s weights in ``basis``: one :class:`Component` per basis direction.

    Args:
        model: The model the basis was fit on (checked: :class:`ModelMismatchError` otherwise).
        basis: An activation :class:`Basis` (from :func:`~wdecomp.bases.interaction_basis`) or a
            :class:`CurvatureBasis` (from :func:`~wdecomp.bases.curvature_basis`).
        data: Optional batches (or inputs); the first batch is run once to find the ``Linear`` and
            convolution layers that consume each hook point's activation (directly or through
            ``nn.Flatten``, by tensor identity) and its number of axes. Without it only a hook
            point's own ``Linear``/``Embedding``/convolution is found.
        adjacency: Precomputed adjacency (as stored by :meth:`Components.save`).

    Returns:
        :class:`Components`.

    Raises:
        ShapeError: The basis is over an axis the adjacent weights do not act on (module docstring).
        SelectionError: A layer is a layer-norm variance point (``"ln:variance"``): its activation
            ``[v; f]`` is computed by no weight, so there is nothing to rewrite there.
    """
    basis.check_model(model)
    variance = [p for p in getattr(basis, "layers", ()) if HookPoint.parse(p).side == "variance"]
    if variance:
        raise SelectionError(f"components: {variance} are layer-norm variance points; their activation [v; f] "
                             "(variance and LayerNorm input) is produced by no weight, so weights cannot be rewritten "
                             "in a basis there; build the basis at other hook points, or graph/ablate this basis "
                             "directly (wd.interaction_graph, wd.ablate)")
    params = dict(model.named_parameters())
    comps: list[Component] = []
    if isinstance(basis, CurvatureBasis):
        for i in range(basis.size):
            comps.append(Component("weights", i, float(basis.eigenvalues[i]), None, None, basis.direction(i)))
        return Components(basis, tuple(comps), {}, dict(model_signature(model)), weights_fingerprint(model))
    if adjacency is None:
        if data is not None:
            first = next(iter(data)) if not isinstance(data, Tensor) else data
            inputs = first[0] if isinstance(first, (tuple, list)) and len(first) == 2 else first
            adjacency = _adjacency(model, list(basis.layers), inputs)
        else:
            adjacency = _static_adjacency(model, list(basis.layers))
    axes = _feature_axes(model, basis, adjacency)
    _check_layout(model, basis, adjacency, axes)
    adjacency = {k: {"producer": v.get("producer"), "consumers": list(v.get("consumers", []))}
                 for k, v in adjacency.items()}
    for point in basis.layers:
        lb = basis[point]
        C = lb.transform.to(torch.float64)
        Cinv = lb.inverse.to(torch.float64)
        o = _offsets(lb)  # c = C f + o
        adj = adjacency.get(point, {})
        rows: dict[str, Tensor] = {}
        producer = adj.get("producer")
        if producer is not None:
            m = resolve_module(model, producer)
            W = params[f"{producer}.weight"].detach().to(torch.float64)
            if isinstance(m, nn.Embedding):  # (k, V): column i of E C^T + o
                rows[f"{producer}.weight"] = (W @ C.T + o).T
            else:  # (k, in) or (k, in, *kernel): output channel i of C W
                rows[f"{producer}.weight"] = (C @ W.reshape(W.shape[0], -1)).reshape(C.shape[0], *W.shape[1:])
                if getattr(m, "bias", None) is not None:
                    rows[f"{producer}.bias"] = C @ m.bias.detach().to(torch.float64) + o
        for name in adj.get("consumers", []):
            m = resolve_module(model, name)
            Wp = params[f"{name}.weight"].detach().to(torch.float64)
            V = torch.einsum("odr,dk->kor", _consumer_view(m, Wp, lb.dim, axes.get(point)), Cinv)
            # (k, out): column i of W' C^+; (k, out, P) after a Flatten; (k, out, *kernel) for a convolution
            rows[f"{name}.weight"] = V[..., 0] if V.shape[2] == 1 and Wp.dim() == 2 else (
                V if isinstance(m, nn.Linear) else V.reshape(V.shape[0], *Wp.shape[:1], *Wp.shape[2:]))
        for i in range(lb.size):
            comps.append(Component(point, i, float(lb.eigenvalues[i]), lb.transform[i], lb.inverse[:, i],
                                   {n: r[i] for n, r in rows.items()}))
    return Components(basis, tuple(comps), adjacency, dict(model_signature(model)), weights_fingerprint(model), axes)


def load_components(path: str | os.PathLike, model: nn.Module, *, weights: str = "refuse") -> Components:
    """Read :class:`Components` saved by :meth:`Components.save`, for ``model`` (validated as in
    :func:`~wdecomp.components.files.load_basis`; ``weights``: ``"refuse"`` or ``"warn"`` for a model
    with other weights than the saved ones)."""
    basis, adjacency = read_checked(path, model, weights)
    return decompose(model, basis, adjacency=adjacency or None)
