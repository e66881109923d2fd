"""Weight-space components: a network's weights rewritten in a basis.

:func:`decompose` turns a basis into :class:`Components`, one uniform object whatever the basis:

* **Activation bases** (:class:`~wdecomp.bases.Basis`: LIB, PCA, neuron, Jacobian). At a hook point
  with coordinates ``c = C (f - mu)`` (``C``: ``k x d``) and ``f = C^+ c + mu`` on the data, the
  weights next to the hook are rewritten in the basis: a producing ``Linear`` ``f = W a + b``
  becomes ``c = (C W) a + C (b - mu)`` (row ``i`` of ``C W`` is component ``i``'s input weights),
  a producing ``Embedding`` ``E`` becomes ``(E - mu) C^T``, and a consuming ``Linear``
  ``y = W' f + b'`` reads ``y = (W' C^+) c + W' mu + b'`` (column ``i`` of ``W' C^+`` is component
  ``i``'s output weights). Component ``i``'s weight-space *piece* is what removing it
  (``c_i -> 0``) takes out of the weights: ``C^+_{:,i} C_{i,:} W`` and ``C^+_{:,i} C_{i,:} (b - mu)``
  on the producing side (or ``W' C^+_{:,i} C_{i,:}`` and ``-W' C^+_{:,i} C_{i,:} mu`` on the consuming
  side when nothing linear produces the activation).
* **Curvature eigenbases** (:class:`~wdecomp.bases.CurvatureBasis`): component ``i`` is the
  eigenvector ``v_i`` in the parameters' shapes, importance ``lambda_i``; its piece is
  ``v_i v_i^T theta``.

Projection onto a subset ``S`` removes the pieces of the components outside ``S``:
``W_S = W - sum_{i not in S} piece_i``, so projecting on all components returns the weights
exactly (for a complete curvature eigenbasis it is the orthogonal projection onto ``span(v_S)``).

:meth:`Components.rewrite` returns a copy of the model that computes in the basis: at each hook
point the producing ``Linear``/``Embedding`` is replaced by one with ``k`` outputs (``C`` folded
into its weights) or followed by ``C``; the coordinates pass an ``nn.Identity`` named
``<point>.coords`` (a hook point of their own), and ``C^+`` (with ``mu`` as bias) is inserted
after it, so the copy computes the same function on the data the basis was fit on.

Components save to one safetensors file (tensors) with the JSON metadata in its header (format,
version, basis, model signature, a fingerprint of the model's weights and one of the saved
tensors); writes are atomic and loading runs no code. Loading validates every header key, tensor
shape, dtype and value (finite) and every name against the model (modules exist, widths agree), and
refuses (or, with ``weights="warn"``, warns about) a model whose weights differ from the ones the
components were saved with: a malformed file is a :class:`~wdecomp.errors.FileFormatError`, another
model a :class:`~wdecomp.errors.ModelMismatchError`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from wdecomp.bases.base import Basis, LayerBasis, model_signature
from wdecomp.bases.curvature import CURVATURE_KINDS, CurvatureBasis
from wdecomp.bases.protocol import ComponentModel
from wdecomp.batch import fingerprint
from wdecomp.errors import ArgumentError, FileFormatError, ModelMismatchError, SelectionError, ShapeError
from wdecomp.hooks import HookPoint, ModuleHook, call, edit, resolve_module
from wdecomp.io import atomic_write

__all__ = [
    "FORMAT_VERSION",
    "Component",
    "Components",
    "decompose",
    "load_basis",
    "load_components",
    "save_basis",
    "weights_fingerprint",
]

FORMAT_VERSION = 1
_FORMAT = "wdecomp.components"


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


def _adjacency(model: nn.Module, points: Sequence[str], inputs: Any) -> dict[str, dict[str, Any]]:
    """For each hook point, the ``Linear``/``Embedding`` module whose output *is* its activation
    (producer) and the ``Linear`` modules whose input *is* it (consumers), by tensor identity.
    Every tensor seen is kept alive during the pass so identities are not reused."""
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
                if o is t and isinstance(modules[name], (nn.Linear, nn.Embedding)):
                    producer = name
            consumers = [n for n, i in seen_in.items() if i is t and isinstance(modules[n], nn.Linear)]
        adj[p] = {"producer": producer, "consumers": consumers}
    return adj


def _static_adjacency(model: nn.Module, points: Sequence[str]) -> dict[str, dict[str, Any]]:
    adj = {}
    for p in points:
        hp = HookPoint.parse(p)
        m = resolve_module(model, hp.module)
        producer = hp.module if hp.side == "output" and isinstance(m, (nn.Linear, nn.Embedding)) else None
        consumers = [hp.module] if hp.side == "input" and isinstance(m, nn.Linear) else []
        adj[p] = {"producer": producer, "consumers": consumers}
    return adj


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
    """

    basis: Basis | CurvatureBasis
    components: tuple[Component, ...]
    adjacency: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    signature: Mapping[str, list[int]] = field(default_factory=dict)
    fingerprint: str | None = None

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
        mu = lb.center.to(torch.float64) if lb.center is not None else torch.zeros_like(P_i)
        adj = self.adjacency.get(comp.layer, {})
        out: dict[str, Tensor] = {}
        producer = adj.get("producer")
        if producer is not None:
            m = resolve_module(model, producer)
            W = m.weight.detach().to(torch.float64)
            if isinstance(m, nn.Embedding):
                out[f"{producer}.weight"] = torch.outer((W - mu) @ C_i, P_i)
            else:
                out[f"{producer}.weight"] = torch.outer(P_i, C_i @ W)
                if m.bias is not None:
                    out[f"{producer}.bias"] = P_i * (C_i @ (m.bias.detach().to(torch.float64) - mu))
            return out
        for name in adj.get("consumers", []):
            m = resolve_module(model, name)
            Wp = m.weight.detach().to(torch.float64)
            col = Wp @ P_i
            out[f"{name}.weight"] = torch.outer(col, C_i)
            if m.bias is not None:
                out[f"{name}.bias"] = -col * (C_i @ mu)
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
            if hp.side == "output":
                folded = _fold_producer(inner, lb, dtype) if producer == hp.module else None
                to = None if folded is not None else _linear(lb.transform, _neg_center(lb), dtype)
                new: nn.Module = _InBasis(folded if folded is not None else inner, to, _inverse_linear(lb, dtype))
            else:
                new = _InBasisInput(inner, _linear(lb.transform, _neg_center(lb), dtype), _inverse_linear(lb, dtype))
            parent_name, _, child = hp.module.rpartition(".")
            setattr(resolve_module(clone, parent_name), child, new)
        return clone.eval()

    def verify(self, model: nn.Module, data: Iterable[Any]) -> float:
        """Largest absolute difference between :meth:`rewrite` ``(model)`` and ``model`` on ``data``."""
        rewritten = self.rewrite(model)
        worst = 0.0
        with torch.no_grad():
            for batch in data:
                x = batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 else batch
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
        return _write(self.basis, path, self.adjacency, self.fingerprint)

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module, *, weights: str = "refuse") -> Components:
        """Read components saved by :meth:`save` for ``model`` (validated; see :func:`load_components`)."""
        return load_components(path, model, weights=weights)


def _neg_center(lb: LayerBasis) -> Tensor | None:
    return None if lb.center is None else -(lb.transform.to(torch.float64) @ lb.center.to(torch.float64))


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
    C = lb.transform.to(torch.float64)
    mu = lb.center.to(torch.float64) if lb.center is not None else None
    if isinstance(m, nn.Linear):
        W = m.weight.detach().to(torch.float64)
        b = m.bias.detach().to(torch.float64) if m.bias is not None else torch.zeros(W.shape[0], dtype=torch.float64)
        if mu is not None:
            b = b - mu
        return _linear(C @ W, C @ b if (m.bias is not None or mu is not None) else None, dtype)
    if isinstance(m, nn.Embedding) and m.padding_idx is None and m.max_norm is None:
        E = m.weight.detach().to(torch.float64)
        if mu is not None:
            E = E - mu
        emb = nn.Embedding(E.shape[0], C.shape[0]).to(dtype)
        with torch.no_grad():
            emb.weight.copy_(E @ C.T)
        return emb
    return None


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
        data: Optional batches (or inputs); the first batch is run once to find the ``Linear``
            layers that consume each hook point's activation (by tensor identity). Without it only
            a hook point's own ``Linear``/``Embedding`` is found.
        adjacency: Precomputed adjacency (as stored by :meth:`Components.save`).

    Returns:
        :class:`Components`.
    """
    basis.check_model(model)
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
    adjacency = {k: {"producer": v.get("producer"), "consumers": list(v.get("consumers", []))}
                 for k, v in adjacency.items()}
    for point in basis.layers:
        lb = basis[point]
        C = lb.transform.to(torch.float64)
        Cinv = lb.inverse.to(torch.float64)
        mu = lb.center.to(torch.float64) if lb.center is not None else torch.zeros(lb.dim, dtype=torch.float64)
        adj = adjacency.get(point, {})
        rows: dict[str, Tensor] = {}
        producer = adj.get("producer")
        if producer is not None:
            m = resolve_module(model, producer)
            W = params[f"{producer}.weight"].detach().to(torch.float64)
            if isinstance(m, nn.Embedding):
                rows[f"{producer}.weight"] = ((W - mu) @ C.T).T  # (k, V): column i of (E - mu) C^T
            else:
                rows[f"{producer}.weight"] = C @ W  # (k, in)
                if getattr(m, "bias", None) is not None:
                    rows[f"{producer}.bias"] = C @ (m.bias.detach().to(torch.float64) - mu)
        for name in adj.get("consumers", []):
            Wp = params[f"{name}.weight"].detach().to(torch.float64)
            rows[f"{name}.weight"] = (Wp @ Cinv).T  # (k, out): column i of W' C^+
        for i in range(lb.size):
            comps.append(Component(point, i, float(lb.eigenvalues[i]), lb.transform[i], lb.inverse[:, i],
                                   {n: r[i] for n, r in rows.items()}))
    return Components(basis, tuple(comps), adjacency, dict(model_signature(model)), weights_fingerprint(model))


# ---------------------------------------------------------------------- persistence
WEIGHT_CHECKS = ("refuse", "warn")


def weights_fingerprint(model: nn.Module) -> str:
    """A hash of every parameter's and buffer's name, shape, dtype and bits
    (:func:`wdecomp.batch.fingerprint`): equal weights give equal fingerprints, any changed entry a
    different one."""
    named = {n: t.detach() for n, t in model.named_parameters()}
    named.update({n: b.detach() for n, b in model.named_buffers()})
    return fingerprint(named)


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Tensor):
        return x.tolist()
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def _dtype_name(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _tensors_fingerprint(tensors: Mapping[str, Tensor]) -> str:
    return fingerprint({k: tensors[k] for k in sorted(tensors)})


def _write(basis: Basis | CurvatureBasis, path: str | os.PathLike, adjacency: Mapping[str, Any],
           weights: str | None) -> Path:
    path = Path(path)
    tensors: dict[str, Tensor] = {}
    meta: dict[str, Any] = {"format": _FORMAT, "version": FORMAT_VERSION,
                            "signature": _jsonable(basis.signature), "info": _jsonable(basis.info),
                            "adjacency": _jsonable(adjacency), "weights_fingerprint": weights}
    if isinstance(basis, CurvatureBasis):
        meta.update(kind="curvature", curvature_kind=basis.kind, which=basis.which, names=list(basis.names),
                    shapes=[list(s) for s in basis.shapes], null_threshold=basis.null_threshold)
        tensors.update(eigenvalues=basis.eigenvalues, eigenvectors=basis.eigenvectors, spectrum=basis.spectrum)
    else:
        meta.update(kind="activation", method=basis.method, layers=list(basis.layers),
                    layer_methods={p: basis[p].method for p in basis.layers},
                    layer_constants={p: getattr(basis[p], "constant", None) for p in basis.layers})
        for i, p in enumerate(basis.layers):
            lb = basis[p]
            tensors[f"{i}/transform"] = lb.transform
            tensors[f"{i}/inverse"] = lb.inverse
            tensors[f"{i}/eigenvalues"] = lb.eigenvalues
            if lb.center is not None:
                tensors[f"{i}/center"] = lb.center
    plain = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta["tensors_fingerprint"] = _tensors_fingerprint(plain)
    meta["dtypes"] = {k: _dtype_name(v) for k, v in plain.items()}
    atomic_write(path, lambda tmp: save_file(plain, tmp, metadata={"wdecomp": json.dumps(meta)}))
    return path


def save_basis(basis: Basis | CurvatureBasis, path: str | os.PathLike,
               adjacency: Mapping[str, Any] | None = None, *, model: nn.Module | None = None) -> Path:
    """Save a basis (and optional adjacency) to a safetensors file with a JSON header, atomically
    (a temporary file in the same directory, then ``os.replace``).

    With ``model`` (checked to be the basis's model), the fingerprint of its weights
    (:func:`weights_fingerprint`) is stored, and loading with a model of other weights is refused
    (or warned about). A fingerprint of the saved tensors is always stored, so a corrupted file
    is refused on load.
    """
    if model is not None:
        basis.check_model(model)
    return _write(basis, path, adjacency or {}, weights_fingerprint(model) if model is not None else None)


class _Header:
    """Typed reads from a components file's JSON header; every failure is a :class:`FileFormatError`
    naming the file and the key."""

    def __init__(self, path: str | os.PathLike, meta: Any) -> None:
        self.path = str(path)
        if not isinstance(meta, dict):
            raise self.error(f"the header is a JSON {type(meta).__name__}, not an object")
        self.meta = meta

    def error(self, problem: str) -> FileFormatError:
        return FileFormatError(f"{self.path}: {problem}; this is not a components file wdecomp wrote "
                               "(or it was edited or corrupted): save it again with Components.save")

    def get(self, key: str, kinds: type | tuple[type, ...], what: str, *, optional: bool = False) -> Any:
        if key not in self.meta:
            if optional:
                return None
            raise self.error(f"the header has no '{key}'")
        value = self.meta[key]
        if value is None and optional:
            return None
        if not isinstance(value, kinds) or isinstance(value, bool) and bool not in _tuple(kinds):
            raise self.error(f"'{key}' is a JSON {type(value).__name__}, expected {what}")
        return value

    def names(self, key: str) -> list[str]:
        value = self.get(key, list, "a list of names")
        if not value or not all(isinstance(v, str) for v in value) or len(set(value)) != len(value):
            raise self.error(f"'{key}' must be a non-empty list of distinct strings")
        return value

    def shape(self, value: Any, where: str) -> tuple[int, ...]:
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                  for v in value):
            raise self.error(f"{where} is not a shape (a list of non-negative integers)")
        return tuple(value)

    def number(self, key: str) -> float:
        value = self.get(key, (int, float), "a number")
        if not math.isfinite(value) or value < 0:
            raise self.error(f"'{key}' = {value} is not a finite number >= 0")
        return float(value)


def _tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _read(path: str | os.PathLike) -> tuple[_Header, dict[str, Tensor]]:
    """The header (typed, checked) and tensors of a components file (no code is executed)."""
    if not Path(path).is_file():
        raise FileFormatError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises its own (and torch's) errors for every kind of damage
        raise FileFormatError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e})") from e
    if "wdecomp" not in header:
        raise FileFormatError(f"{path} is not a wdecomp file (no 'wdecomp' metadata in its safetensors header)")
    try:
        meta = json.loads(header["wdecomp"])
    except (ValueError, RecursionError) as e:
        raise FileFormatError(f"{path}: the wdecomp header is not valid JSON ({type(e).__name__})") from e
    h = _Header(path, meta)
    if h.get("format", str, "a string") != _FORMAT:
        raise h.error(f"unknown format {meta.get('format')!r}")
    version = h.get("version", int, "an integer")
    if version > FORMAT_VERSION:
        raise FileFormatError(f"{path} has format version {version}; this wdecomp reads up to {FORMAT_VERSION}")
    stored = h.get("tensors_fingerprint", str, "a string", optional=True)
    dtypes = h.get("dtypes", dict, "an object of tensor dtypes", optional=True)
    if dtypes is not None and sorted(dtypes) != sorted(tensors):
        raise h.error(f"the header lists tensors {sorted(dtypes)[:5]}, the file holds {sorted(tensors)[:5]}")
    for key, t in tensors.items():
        if not t.is_floating_point():
            raise h.error(f"tensor '{key}' has dtype {t.dtype}, not a floating-point dtype")
        if dtypes is not None and dtypes[key] != _dtype_name(t):
            raise h.error(f"tensor '{key}' has dtype {_dtype_name(t)}, but was saved as {dtypes[key]!r}")
        if not torch.isfinite(t).all():
            raise h.error(f"tensor '{key}' contains NaN or inf")
    if stored is not None and stored != _tensors_fingerprint(tensors):
        raise h.error("the tensors do not match the fingerprint stored when the file was written")
    return h, tensors


def _tensor(h: _Header, t: Mapping[str, Tensor], key: str, shape: tuple[int | None, ...]) -> Tensor:
    if key not in t:
        raise h.error(f"tensor '{key}' is missing")
    x = t[key]
    if x.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, x.shape)):
        want = tuple("*" if s is None else s for s in shape)
        raise h.error(f"tensor '{key}' has shape {tuple(x.shape)}, expected {want}")
    return x


def _basis_from(h: _Header, t: Mapping[str, Tensor]) -> Basis | CurvatureBasis:
    """The basis a checked header and its tensors describe (every shape and name validated)."""
    sig_raw = h.get("signature", dict, "an object of parameter shapes")
    sig = {str(k): list(h.shape(v, f"signature['{k}']")) for k, v in sig_raw.items()}
    info = h.get("info", dict, "an object", optional=True) or {}
    kind = h.get("kind", str, "a string")
    expected: set[str]
    if kind == "curvature":
        names = h.names("names")
        shapes_raw = h.get("shapes", list, "a list of shapes")
        if len(shapes_raw) != len(names):
            raise h.error(f"{len(shapes_raw)} shapes for {len(names)} parameter names")
        shapes = tuple(h.shape(s, f"shapes[{i}]") for i, s in enumerate(shapes_raw))
        for n, s in zip(names, shapes):
            if n not in sig or tuple(sig[n]) != s:
                raise h.error(f"parameter '{n}' of shape {s} is not in the file's model signature")
        curvature_kind = h.get("curvature_kind", str, "a string")
        if curvature_kind not in CURVATURE_KINDS:
            raise h.error(f"curvature_kind {curvature_kind!r} is not one of {CURVATURE_KINDS}")
        p = sum(math.prod(s) for s in shapes)
        vectors = _tensor(h, t, "eigenvectors", (p, None))
        k = vectors.shape[1]
        expected = {"eigenvalues", "eigenvectors", "spectrum"}
        basis: Basis | CurvatureBasis = CurvatureBasis(
            names=tuple(names), shapes=shapes, eigenvalues=_tensor(h, t, "eigenvalues", (k,)), eigenvectors=vectors,
            kind=curvature_kind, which=h.get("which", str, "a string"), spectrum=_tensor(h, t, "spectrum", (None,)),
            null_threshold=h.number("null_threshold"), signature=sig, info=info,
        )
    elif kind == "activation":
        layers = h.names("layers")
        methods = h.get("layer_methods", dict, "an object")
        constants = h.get("layer_constants", dict, "an object", optional=True) or {}
        bases, expected = {}, set()
        for i, point in enumerate(layers):
            try:
                HookPoint.parse(point)
            except SelectionError as e:
                raise h.error(f"layer '{point}' is not a hook point ({e})") from e
            if not isinstance(methods.get(point), str):
                raise h.error(f"layer_methods has no method for layer '{point}'")
            constant = constants.get(point)
            if constant is not None and (not isinstance(constant, (int, float)) or isinstance(constant, bool)
                                         or not math.isfinite(constant)):
                raise h.error(f"layer_constants['{point}'] = {constant!r} is not a finite number")
            T = _tensor(h, t, f"{i}/transform", (None, None))
            k, d = T.shape
            center = _tensor(h, t, f"{i}/center", (d,)) if f"{i}/center" in t else None
            extra = {"constant": float(constant)} if constant is not None else {}
            bases[point] = LayerBasis(point, T, _tensor(h, t, f"{i}/inverse", (d, k)),
                                      _tensor(h, t, f"{i}/eigenvalues", (k,)), center, methods[point], **extra)
            expected |= {f"{i}/transform", f"{i}/inverse", f"{i}/eigenvalues"} | ({f"{i}/center"} if center is not None
                                                                                 else set())
        basis = Basis(tuple(layers), bases, h.get("method", str, "a string"), sig, info)
    else:
        raise h.error(f"kind {kind!r} is neither 'activation' nor 'curvature'")
    unexpected = sorted(set(t) - expected)
    if unexpected:
        raise h.error(f"unexpected tensors {unexpected[:5]}")
    groups = [[k for k in t if k.split("/")[0] == str(i)] for i in range(len(basis.layers))] if kind == "activation" \
        else [list(t)]
    for keys in groups:
        if len({t[k].dtype for k in keys}) > 1:
            names = sorted({_dtype_name(t[k]) for k in keys})
            raise h.error(f"tensors {keys} of one layer have different dtypes {names}")
    return basis


def _adjacency_from(h: _Header, basis: Basis | CurvatureBasis) -> dict[str, dict[str, Any]]:
    raw = h.get("adjacency", dict, "an object", optional=True) or {}
    layers = set(basis.layers) if isinstance(basis, Basis) else set()
    out = {}
    for point, entry in raw.items():
        if point not in layers:
            raise h.error(f"the adjacency names '{point}', which is not a layer of the basis")
        if not isinstance(entry, dict):
            raise h.error(f"adjacency['{point}'] is not an object")
        producer, consumers = entry.get("producer"), entry.get("consumers", [])
        if producer is not None and not isinstance(producer, str):
            raise h.error(f"adjacency['{point}']['producer'] is not a module name")
        if not isinstance(consumers, list) or not all(isinstance(c, str) for c in consumers):
            raise h.error(f"adjacency['{point}']['consumers'] is not a list of module names")
        out[point] = {"producer": producer, "consumers": list(consumers)}
    return out


def _check_against(h: _Header, basis: Basis | CurvatureBasis, adjacency: Mapping[str, Mapping[str, Any]],
                   model: nn.Module, weights: str) -> None:
    """The file's names and widths exist in ``model``, and its weights are the ones saved with."""
    if weights not in WEIGHT_CHECKS:
        raise ArgumentError(f"weights must be one of {WEIGHT_CHECKS}, not {weights!r}")
    basis.check_model(model)
    if isinstance(basis, Basis):
        modules = dict(model.named_modules())

        def width(name: str, side: str, kinds: tuple[type, ...] = ()) -> int | None:
            m = modules.get(name)
            if m is None:
                raise h.error(f"module '{name}' named in the file does not exist in {type(model).__name__}")
            if kinds and not isinstance(m, kinds):
                raise h.error(f"the adjacency names '{name}', a {type(m).__name__}, where a "
                              f"{' or '.join(k.__name__ for k in kinds)} belongs")
            if isinstance(m, nn.Linear):
                return m.out_features if side == "output" else m.in_features
            if isinstance(m, nn.Embedding):
                return m.embedding_dim if side == "output" else None
            return None

        for point in basis.layers:
            hp, d = HookPoint.parse(point), basis[point].dim
            found = [(hp.module, width(hp.module, hp.side))]
            adj = adjacency.get(point, {})
            if adj.get("producer") is not None:
                found.append((adj["producer"], width(adj["producer"], "output", (nn.Linear, nn.Embedding))))
            found += [(c, width(c, "input", (nn.Linear,))) for c in adj.get("consumers", [])]
            for name, w in found:
                if w is not None and w != d:
                    raise h.error(f"layer '{point}' has width {d}, but module '{name}' there has width {w}")
    saved = h.get("weights_fingerprint", str, "a string", optional=True)
    if saved is not None and saved != weights_fingerprint(model):
        message = (f"{h.path} was saved for a model with other weights (the same names and shapes, different "
                   "values); its components describe those weights, not these")
        if weights == "refuse":
            raise ModelMismatchError(message + "; load it with the model it was saved for, or pass weights='warn'")
        warnings.warn(message, stacklevel=3)


def load_basis(path: str | os.PathLike, model: nn.Module | None = None, *,
               weights: str = "refuse") -> Basis | CurvatureBasis:
    """Read a basis written by :func:`save_basis` (no code is executed).

    Every header key, tensor shape and name is validated (:class:`FileFormatError` otherwise). With
    ``model``: the file's parameter signature, module names and widths must be the model's
    (:class:`ModelMismatchError` / :class:`FileFormatError`), and when the file stores a weights
    fingerprint, a model with other weights is refused (``weights="refuse"``) or warned about
    (``weights="warn"``).
    """
    h, t = _read(path)
    basis = _basis_from(h, t)
    if model is not None:
        _check_against(h, basis, _adjacency_from(h, basis), model, weights)
    return basis


def load_components(path: str | os.PathLike, model: nn.Module, *, weights: str = "refuse") -> Components:
    """Read :class:`Components` saved by :meth:`Components.save`, for ``model`` (checked as in
    :func:`load_basis`)."""
    h, t = _read(path)
    basis = _basis_from(h, t)
    adjacency = _adjacency_from(h, basis)
    _check_against(h, basis, adjacency, model, weights)
    return decompose(model, basis, adjacency=adjacency or None)
