"""Activation bases: per hook point, an invertible-on-the-data change of coordinates.

A :class:`LayerBasis` at hook point ``l`` with activations ``f_l in R^d`` maps them to basis
coordinates ``c = C (f - mu)`` (``C``: ``transform``, ``k x d``, ``mu``: ``center``, zero unless
the basis centres) and back with ``f = C^+ c + mu`` (``C^+``: ``inverse``, ``d x k``). On the data
the basis was fit on, ``C^+ C`` is the identity on the span of the activations, so inserting
``f -> C^+ C (f - mu) + mu`` at the hook leaves the network's outputs unchanged. ``k <= d``:
directions in which the activations never vary are dropped.

A *folded* basis is linear in the activation with the bias folded in as a constant input,
``[f; s]`` (``s = 1`` on the data): ``c = C f + b s``, ``s = r . c``, ``f = A c``. Two forms:

* a constant node (``constant``, LIB as rib runs it by default): ``b = constant e_0 - C mu``,
  ``r = e_0 / constant``, ``A = C^+ + mu r^T``; stored as ``transform = C``, ``inverse = C^+``,
  ``center = mu``;
* the general form (``const_column = b``, ``const_row = r``, ``inverse = A``; rib's
  ``center: false``, where the constant is mixed into every direction and no node is constant).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from wdecomp.bases.protocol import ComponentModel, model_signature
from wdecomp.errors import ShapeError
from wdecomp.hooks import HookPoint


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
        constant: With a constant node (LIB as rib runs it, arXiv 2405.10928 sec. 2 with the bias
            folded in as a constant input ``[f; s]``, ``s = 1``; rib's ``move_const_dir_first``):
            the value of coordinate 0 at ``s = 1``. Row 0 of ``transform`` and column 0 of
            ``inverse`` are zero, and the maps are linear in ``[f; s]``:
            ``c = C (f - mu s) + constant s e_0`` and ``s = c_0 / constant``,
            ``f = C^+ c + mu s``. ``None``: no constant node (``s = 1`` always).
        const_column: ``b``, ``(k,)``: the general folded form (module docstring), ``c = C f + b s``,
            with ``s = const_row . c`` and ``f = inverse c``; ``None`` otherwise. Set together with
            ``const_row``, never with ``constant`` or ``center``.
        const_row: ``r``, ``(k,)``: ``s = r . c`` in the general folded form, or ``None``.
    """

    point: str
    transform: Tensor
    inverse: Tensor
    eigenvalues: Tensor
    center: Tensor | None = None
    method: str = "neuron"
    constant: float | None = None
    const_column: Tensor | None = None
    const_row: Tensor | None = None

    def __post_init__(self) -> None:
        k, d = self.transform.shape
        if self.inverse.shape != (d, k):
            got = tuple(self.inverse.shape)
            raise ShapeError(f"basis at '{self.point}': inverse has shape {got}, expected {(d, k)}")
        if self.eigenvalues.shape != (k,):
            raise ShapeError(f"basis at '{self.point}': {self.eigenvalues.shape[0]} eigenvalues for {k} directions")
        if (self.const_column is None) != (self.const_row is None):
            raise ShapeError(f"basis at '{self.point}': const_column and const_row are given together or not at all")
        if self.const_column is not None:
            assert self.const_row is not None
            if self.const_column.shape != (k,) or self.const_row.shape != (k,):
                raise ShapeError(f"basis at '{self.point}': const_column {tuple(self.const_column.shape)} and "
                                 f"const_row {tuple(self.const_row.shape)}, expected ({k},) each")
            if self.constant is not None or self.center is not None:
                raise ShapeError(f"basis at '{self.point}': the general folded form (const_column, const_row) "
                                 "has no constant node and no centre")

    @property
    def folded(self) -> bool:
        """Whether the basis is linear in ``[f; s]`` (a constant node or the general folded form):
        sections into and out of it carry the constant ``s``."""
        return self.constant is not None or self.const_column is not None

    @property
    def size(self) -> int:
        """``k``, the number of basis directions."""
        return self.transform.shape[0]

    # ---- the activation-group protocol (wdecomp.bases.protocol.ActivationGroup)
    @property
    def label(self) -> str:
        """The hook point, as reports name the group."""
        return self.point

    @property
    def hook(self) -> str:
        """The hook point in canonical form (``"mod"`` or ``"mod:input"``)."""
        return str(HookPoint.parse(self.point))

    @property
    def importance(self) -> Tensor:
        """``(k,)`` the eigenvalues, float64 on the CPU."""
        return self.eigenvalues.detach().to(torch.float64).cpu()

    @property
    def parameters(self) -> dict[str, tuple[int, ...]]:
        """An activation basis names no weights."""
        return {}

    def coordinates(self, f: Tensor) -> Tensor:
        """:meth:`to_coordinates`."""
        return self.to_coordinates(f)

    def write(self, c: Tensor, idx: Tensor) -> Tensor:
        """``C^+_{:, idx} c``: the contribution of directions ``idx`` with coordinates ``c``
        (``(..., len(idx)) -> (..., d)``)."""
        return c @ self.inverse[:, idx].T.to(c.dtype)

    @property
    def dim(self) -> int:
        """``d``, the width of the activation space."""
        return self.transform.shape[1]

    def to_coordinates(self, f: Tensor) -> Tensor:
        """``c = C (f - mu)`` along the last axis of ``f`` (``(..., d) -> (..., k)``); with a
        constant node, coordinate 0 is ``constant``; in the general folded form ``c = C f + b``
        (the activation taken at ``s = 1``)."""
        if f.shape[-1] != self.dim:
            raise ShapeError(f"activations at '{self.point}' have width {f.shape[-1]}, basis expects {self.dim}")
        if self.center is not None:
            f = f - self.center
        c = f @ self.transform.T.to(f.dtype)
        if self.constant is not None:
            c = torch.cat([c[..., :1] + self.constant, c[..., 1:]], dim=-1)
        if self.const_column is not None:
            c = c + self.const_column.to(c.dtype)
        return c

    def scale_of(self, c: Tensor) -> Tensor | None:
        """The constant input of coordinates ``c`` (``(..., k) -> (..., 1)``): ``s = c_0 / constant``
        with a constant node, ``s = r . c`` in the general folded form, ``None`` otherwise."""
        if self.const_row is not None:
            return (c @ self.const_row.to(c.dtype)).unsqueeze(-1)
        return None if self.constant is None else c[..., :1] / self.constant

    def from_coordinates(self, c: Tensor) -> Tensor:
        """``f = C^+ c + mu`` (``(..., k) -> (..., d)``); with a constant node ``f = C^+ c + mu s``,
        ``s = c_0 / constant`` (so scaling every coordinate scales ``[f; s]``); in the general folded
        form ``f = A c`` (``A``: ``inverse``)."""
        f = c @ self.inverse.T.to(c.dtype)
        if self.center is None:
            return f
        s = self.scale_of(c)
        return f + self.center if s is None else f + s * self.center.to(c.dtype)


@dataclass(frozen=True)
class Basis(ComponentModel, Mapping[str, LayerBasis]):
    """Bases for an ordered list of hook points of one model (``basis[point]``): a
    :class:`~wdecomp.bases.protocol.ComponentModel` with one group (a :class:`LayerBasis`) per point.

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

    @property
    def groups(self) -> tuple[LayerBasis, ...]:
        """One group per hook point, in forward order."""
        return tuple(self.bases[p] for p in self.layers)

    def describe(self) -> str:
        return f"this {self.method} basis"

    def as_basis(self) -> Basis:
        return self


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
