"""Activation bases: per hook point, an invertible-on-the-data change of coordinates.

A :class:`LayerBasis` at hook point ``l`` with activations ``f_l in R^d`` maps them to basis
coordinates ``c = C (f - mu)`` (``C``: ``transform``, ``k x d``, ``mu``: ``center``, zero unless
the basis centres) and back with ``f = C^+ c + mu`` (``C^+``: ``inverse``, ``d x k``). On the data
the basis was fit on, ``C^+ C`` is the identity on the span of the activations, so inserting
``f -> C^+ C (f - mu) + mu`` at the hook leaves the network's outputs unchanged. ``k <= d``:
directions in which the activations never vary are dropped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from wdecomp.errors import ModelMismatchError, ShapeError


@dataclass(frozen=True)
class LayerBasis:
    """One hook point's basis.

    Attributes:
        point: The hook point (``"mlp.act"``, ``"blocks.0:input"``).
        transform: ``C``, shape ``(k, d)``: activations -> coordinates.
        inverse: ``C^+``, shape ``(d, k)``: coordinates -> activations.
        eigenvalues: ``(k,)`` importance of each direction (the method's eigenvalues), sorted
            descending.
        center: ``(d,)`` subtracted before ``C`` is applied, or ``None``.
        method: ``"lib"``, ``"pca"``, ``"neuron"``, ``"jacobian"``, ...
    """

    point: str
    transform: Tensor
    inverse: Tensor
    eigenvalues: Tensor
    center: Tensor | None = None
    method: str = "neuron"

    def __post_init__(self) -> None:
        k, d = self.transform.shape
        if self.inverse.shape != (d, k):
            got = tuple(self.inverse.shape)
            raise ShapeError(f"basis at '{self.point}': inverse has shape {got}, expected {(d, k)}")
        if self.eigenvalues.shape != (k,):
            raise ShapeError(f"basis at '{self.point}': {self.eigenvalues.shape[0]} eigenvalues for {k} directions")

    @property
    def size(self) -> int:
        """``k``, the number of basis directions."""
        return self.transform.shape[0]

    @property
    def dim(self) -> int:
        """``d``, the width of the activation space."""
        return self.transform.shape[1]

    def to_coordinates(self, f: Tensor) -> Tensor:
        """``c = C (f - mu)`` along the last axis of ``f`` (``(..., d) -> (..., k)``)."""
        if f.shape[-1] != self.dim:
            raise ShapeError(f"activations at '{self.point}' have width {f.shape[-1]}, basis expects {self.dim}")
        if self.center is not None:
            f = f - self.center
        return f @ self.transform.T.to(f.dtype)

    def from_coordinates(self, c: Tensor) -> Tensor:
        """``f = C^+ c + mu`` (``(..., k) -> (..., d)``)."""
        f = c @ self.inverse.T.to(c.dtype)
        return f + self.center if self.center is not None else f


def model_signature(model: nn.Module) -> dict[str, list[int]]:
    """Names and shapes of a model's parameters and buffers: what a basis must be used with."""
    sig = {n: list(p.shape) for n, p in model.named_parameters()}
    sig.update({n: list(b.shape) for n, b in model.named_buffers()})
    return sig


@dataclass(frozen=True)
class Basis(Mapping[str, LayerBasis]):
    """Bases for an ordered list of hook points of one model (``basis[point]``).

    Attributes:
        layers: Hook points in forward order.
        bases: Point -> :class:`LayerBasis`.
        method: How it was built.
        signature: :func:`model_signature` of the model it was fit on.
        info: Free-form metadata (thresholds, data sizes).
    """

    layers: tuple[str, ...]
    bases: Mapping[str, LayerBasis]
    method: str
    signature: Mapping[str, list[int]]
    info: Mapping[str, object] = field(default_factory=dict)

    def __getitem__(self, point: str) -> LayerBasis:
        if point not in self.bases:
            raise KeyError(f"no basis at '{point}'; this basis covers {list(self.layers)}")
        return self.bases[point]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def check_model(self, model: nn.Module) -> None:
        """Raise :class:`ModelMismatchError` unless ``model`` has the parameters this basis was fit on."""
        sig = model_signature(model)
        if dict(sig) != dict(self.signature):
            missing = sorted(set(self.signature) - set(sig))[:5]
            extra = sorted(set(sig) - set(self.signature))[:5]
            changed = sorted(n for n in set(sig) & set(self.signature) if list(sig[n]) != list(self.signature[n]))[:5]
            raise ModelMismatchError(
                f"this {self.method} basis was fit on a different model (missing {missing}, extra {extra}, "
                f"reshaped {changed})"
            )


def neuron_basis(model: nn.Module, widths: Mapping[str, int] | Sequence[tuple[str, int]]) -> Basis:
    """The standard (neuron) basis at each hook point: ``C = I``. The control every other basis
    is compared with.

    Args:
        model: The model the basis belongs to.
        widths: Hook point -> activation width ``d``, in forward order.
    """
    items = list(widths.items()) if isinstance(widths, Mapping) else list(widths)
    dtype = next(model.parameters()).dtype
    bases = {}
    for point, d in items:
        eye = torch.eye(d, dtype=dtype)
        bases[point] = LayerBasis(point, eye, eye.clone(), torch.ones(d, dtype=dtype), None, "neuron")
    return Basis(tuple(p for p, _ in items), bases, "neuron", model_signature(model))
