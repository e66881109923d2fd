r"""Build interaction graphs: components of consecutive layers joined by their attributions.

Nodes are the directions of an activation basis (:class:`~wdecomp.bases.base.Basis`): at hook
point ``l``, node ``(l, j)`` is coordinate ``c_{l,j}``; its importance is the basis eigenvalue. A
basis with a constant node (LIB as rib runs it) gives node ``(l, 0)`` the attribute
``constant=True``. Writing ``h_x(c)`` for the map from layer ``l``'s coordinates (at every source
position ``p``) to layer ``l+1``'s coordinates (at every target position ``t``) on input ``x``
(:mod:`wdecomp.bases.section`: for a folded basis, with a constant node or rib's ``center: false``
form without one, the coordinates are linear in ``[f; s]``, ``s`` scaling the biases between the
two hook points), the edge ``(l, j) -> (l+1, i)`` carries

**squared edges** (``formula="squared"``, default; rib's ``edge_formula="squared"``,
``rib.linalg.calc_edge_squared``)::

    A_{ti,j}(x) = sum_p c_{pj}(x) sum_m w_m [d h_{x,ti} / d c_{pj}](alpha_m c(x)),
    E_ij = 1/(N P_l) sum_x sum_t A_{ti,j}(x)^2,

with ``method="jacobian"`` the single node ``alpha = 1`` (rib's ``integration_method="gradient"``,
the configuration of the paper's runs) and with ``method="integrated_gradients"`` a quadrature
(``steps`` nodes, ``rule``) along ``alpha c``: for a folded basis this is rib's path
``alpha [f; 1]`` (biases scale with ``alpha``, baseline the all-zero input); for a basis without one
``c = 0`` is the activation ``f = mu`` with the biases unchanged (a wdecomp variant:
integrated gradients from the basis centre, Sundararajan, Taly & Yan 2017, arXiv:1703.01365).
``positions="separate"`` instead sums over source positions outside the square
(``1/(N P_l) sum_x sum_{t,p} (c_{pj} ...)^2``, a wdecomp variant). Without positions (``P = 1``)
both are rib's.

**functional edges** (``formula="functional"``; rib's October ``edge_formula="functional"``,
``rib.linalg.calc_edge_functional``)::

    E_ij = 2/(N P_l) sum_x sum_m w_m sum_p c_{pj} sum_t (h_{x,ti}(c) - h_{x,ti}(alpha_m c))
           [d h_{x,ti} / d c_{pj}](alpha_m c)

(may be negative; zero at the single node ``alpha = 1``, so it needs ``method="integrated_gradients"``).

Integrated gradients are *complete*: ``sum_{p,j} A_{(t,i),(p,j)}(x) = h_{x,ti}(c) - h_{x,ti}(0)``
for the exact integral; the quadrature error is measured on every example and reported per layer
pair (:class:`Completeness`). Quadrature rules: :func:`~wdecomp.bases.section.quadrature`
(rib's ``"gauss-legendre"`` with ``n_intervals`` is ``steps = n_intervals + 1``; rib's
``"trapezoidal"`` is ``rule="trapezoidal"``).

Everything is streamed over the data in chunks of examples batched with :func:`torch.func.vmap`;
the chunk comes from ``chunk_size`` or from the memory budget ``max_memory``
(:func:`~wdecomp.bases.section.plan_chunk`); the largest tensor held is one chunk's Jacobians,
``(chunk, P_{l+1} k_{l+1}, P_l k_l)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import vmap

from wdecomp import hooks
from wdecomp.bases.base import Basis, LayerBasis
from wdecomp.bases.protocol import ComponentModel
from wdecomp.bases.section import (
    RULES,
    Section,
    TargetCoordinates,
    batched_jacobians,
    build_section,
    jacobian_working_set,
    memory_guard,
    plan_chunk,
    quadrature,
    to_rows,
)
from wdecomp.batch import as_batches, chunks, num_examples, split
from wdecomp.errors import DataError, NonFiniteError, SelectionError, ShapeError
from wdecomp.graph.graph import Completeness, InteractionGraph
from wdecomp.progress import progress_bar

__all__ = ["FORMULAS", "METHODS", "POSITION_RULES", "RULES", "interaction_graph", "quadrature"]

METHODS = ("jacobian", "integrated_gradients")
FORMULAS = ("squared", "functional")
POSITION_RULES = ("sum", "separate")


# ----------------------------------------------------------------------------- inputs
def _as_basis(obj: Any) -> Basis:
    """The activation :class:`Basis` of any component model (``ComponentModel.as_basis``)."""
    if isinstance(obj, ComponentModel):
        return obj.as_basis()
    raise TypeError(f"expected a Basis or a Components object, got {type(obj).__name__}")


def _resolve(model_or_components: Any, basis: Any, model: nn.Module | None) -> tuple[nn.Module, Basis]:
    """``(model, basis)`` from ``(model, basis)``, ``(model, components)`` or ``(components, model=...)``."""
    if isinstance(model_or_components, nn.Module):
        if model is not None and model is not model_or_components:
            raise ValueError("two models given (first argument and model=)")
        if basis is None:
            raise ValueError("interaction_graph(model, data, basis) needs a Basis or Components as basis=")
        return model_or_components, _as_basis(basis)
    if basis is not None:
        raise ValueError("basis= given together with a Components object, which has its own basis; pass one")
    model = model if model is not None else getattr(model_or_components, "model", None)
    if not isinstance(model, nn.Module):
        raise ValueError("interaction_graph(components, data) needs the model the components belong to: model=...")
    return model, _as_basis(model_or_components)


# ----------------------------------------------------------------------------- attributions
@dataclass
class _Edge:
    """One layer pair: ``h_x(c)`` in coordinates and its running sums."""

    src: LayerBasis
    tgt: LayerBasis
    section: Section
    sums: Tensor
    err_max: float = 0.0
    err_sq: float = 0.0
    err_count: int = 0
    change_max: float = 0.0

    def point(self, c: Tensor) -> Tensor:
        """The source rows ``(..., P_s, d_s [+ 1])`` of coordinates ``c`` (the constant appended)."""
        return self.section.source_rows(self.src, c)

    def h(self, c: Tensor, xr: tuple[Any, Tensor]) -> Tensor:
        """``(P_s, k_s) -> (P_t, k_t)`` for one example ``xr = (inputs, residual)``: the section at
        the rows of ``c`` plus ``residual`` (the part of the activation outside the basis's span)."""
        x, r = xr
        rows, s_t = self.section(self.point(c) + r, x)
        return TargetCoordinates(self.tgt)(rows, s_t)

    def coordinates(self, acts: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Coordinates ``(B, P_s, k_s)`` and the residual rows the basis does not span."""
        rows = to_rows(acts[self.src.point], self.section.source_axis)
        c = self.src.to_coordinates(rows)
        full = torch.cat([rows, torch.ones_like(rows[..., :1])], -1) if self.section.constant else rows
        return c, full - self.point(c)


def _accumulate(edge: _Edge, x: Any, c: Tensor, residual: Tensor, nodes: Tensor, weights: Tensor, formula: str,
                positions: str, complete: bool, mode: str) -> None:
    """Add one chunk's attribution sums (``(k_t, k_s)``) and completeness errors to ``edge``.

    The gradient (one node at ``alpha = 1``) is taken at the activation itself (``residual``
    kept); integrated-gradient paths ``alpha c`` run through the basis's span (rib's
    ``module_hat``). The two agree when the basis spans the activations (bases fit on the data).
    """
    if len(nodes) > 1 or float(nodes[0]) != 1.0:
        residual = torch.zeros_like(residual)
    x = (x, residual)
    with torch.no_grad():
        h1 = vmap(edge.h)(c, x) if (formula == "functional" or complete) else None
    total: Tensor | None = None
    for alpha, w, J in zip(nodes.tolist(), weights.tolist(), batched_jacobians(edge.h, c, x, nodes, mode)):
        if formula == "squared":
            total = w * J if total is None else total + w * J
        else:
            assert h1 is not None
            with torch.no_grad():
                diff = h1 - vmap(edge.h)(alpha * c, x)  # (B, P_t, k_t)
            part = 2 * w * torch.einsum("bti,btipj,bpj->ij", diff.double(), J.double(), c.double())
            total = part if total is None else total + part
    assert total is not None
    if not torch.isfinite(total).all():
        raise NonFiniteError(f"attributions {edge.src.point} -> {edge.tgt.point} contain NaN or inf")
    if formula == "functional":
        edge.sums += total.double().cpu()
        return
    attr = (total * c[:, None, None]).double()  # (B, P_t, k_t, P_s, k_s), squared and summed in float64
    red = attr.sum(3).square().sum((0, 1)) if positions == "sum" else attr.square().sum((0, 1, 3))
    edge.sums += red.double().cpu()
    if complete:
        assert h1 is not None
        with torch.no_grad():
            change = h1 - vmap(edge.h)(torch.zeros_like(c), x)
        error = attr.sum((3, 4)) - change.double()
        edge.err_max = max(edge.err_max, float(error.abs().max()))
        edge.err_sq += float(error.double().square().sum())
        edge.err_count += error.numel()
        edge.change_max = max(edge.change_max, float(change.abs().max()))


def interaction_graph(
    model_or_components: Any,
    data: Any,
    basis: Any = None,
    *,
    model: nn.Module | None = None,
    method: str = "jacobian",
    formula: str = "squared",
    steps: int = 20,
    rule: str = "gauss-legendre",
    chunk_size: int | None = None,
    max_memory: int | None = None,
    layers: Sequence[str] | None = None,
    positions: str = "sum",
    mode: str = "auto",
    progress: bool | None = None,
) -> InteractionGraph:
    r"""The interaction graph of a basis's components over ``data`` (rib's edges by default).

    See the module docstring for the formulas. Node ``(l, j)`` gets ``layer`` (hook point),
    ``layer_index``, ``index`` (``j``), ``eigenvalue`` and ``importance`` (the basis eigenvalue),
    ``mean_square`` (``E_x 1/P sum_p c_{pj}(x)^2``), ``constant`` (whether it is the constant
    node) and ``label``; node ids are ``"L{layer_index}_{j}"``. Edge ``(l, j) -> (l+1, i)`` gets
    ``weight`` ``E_ij`` (the name networkx and Gephi read) and the same value as ``attribution``
    (every pair of consecutive layers is joined by all ``k_l k_{l+1}`` edges; prune with
    :meth:`InteractionGraph.prune`).

    Args:
        model_or_components: The model (then ``basis`` is required), or a
            :class:`~wdecomp.components.Components` object of an activation basis (then ``model``
            is required, unless the object has a ``.model``).
        data: A data argument (:mod:`wdecomp.batch`): one batch (a tensor, dict or
            ``(inputs, targets)`` tuple), a list of batches, a ``DataLoader`` or a one-shot
            iterator. Streamed once.
        basis: A :class:`~wdecomp.bases.base.Basis` (activation bases at the hook points, in forward
            order) or a ``Components`` object of one.
        model: The model, when the first argument is a ``Components`` object.
        method: ``"jacobian"`` (gradient at ``alpha = 1``) or ``"integrated_gradients"``.
        formula: ``"squared"`` (rib's default) or ``"functional"``.
        steps: Quadrature nodes for integrated gradients.
        rule: Quadrature rule for integrated gradients (:func:`quadrature`).
        chunk_size: Examples per vmapped Jacobian evaluation; default from ``max_memory``.
        max_memory: Memory budget in bytes for one chunk (default a quarter of the available memory,
            at most 2 GiB, or one example when that alone is over it but within half the available
            memory; :func:`~wdecomp.bases.section.plan_chunk`).
        layers: A subsequence of ``basis.layers`` to use (default: all of them).
        positions: ``"sum"`` (rib) or ``"separate"`` (module docstring).
        mode: ``"forward"``, ``"reverse"`` or ``"auto"`` Jacobians.
        progress: Show a progress bar (default: when on a terminal).

    Returns:
        An :class:`~wdecomp.graph.graph.InteractionGraph`; for integrated gradients its
        ``completeness`` lists one :class:`Completeness` per layer pair (squared edges).

    Raises:
        SelectionError: Layers not in the basis, fewer than two, or not in forward order.
        ShapeError: Activations of a width the basis does not expect.
        DataError: Malformed or empty data.
        DenseTooLargeError: Out of memory (names ``chunk_size`` / ``max_memory``).

    Example:
        >>> import torch, wdecomp
        >>> from wdecomp.graph import interaction_graph
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
        >>> basis = wdecomp.bases.neuron_basis(net, {"0": 3, "2": 2})
        >>> g = interaction_graph(net, torch.randn(10, 2), basis)
        >>> g.nx.number_of_nodes(), g.nx.number_of_edges()
        (5, 6)
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not '{method}'")
    if formula not in FORMULAS:
        raise ValueError(f"formula must be one of {FORMULAS}, not '{formula}'")
    if formula == "functional" and method == "jacobian":
        raise ValueError("functional edges are zero at the single node alpha = 1; use method='integrated_gradients'")
    if positions not in POSITION_RULES:
        raise ValueError(f"positions must be one of {POSITION_RULES}, not '{positions}'")
    model, basis = _resolve(model_or_components, basis, model)
    basis.check_model(model)
    names = list(basis.layers if layers is None else layers)
    unknown = [p for p in names if p not in basis.layers]
    if unknown:
        raise SelectionError(f"layers {unknown} are not in the basis, which covers {list(basis.layers)}")
    if len(names) < 2:
        raise SelectionError(f"an interaction graph needs at least two layers, got {names}")
    bases = [basis[p] for p in names]
    nodes_q, weights_q = quadrature(steps, rule) if method == "integrated_gradients" else quadrature(1, "gradient")
    axes = dict(basis.info.get("feature_axes", {})) if isinstance(basis.info, dict) else {}
    complete = method == "integrated_gradients" and formula == "squared"

    edges: list[_Edge] = []
    mean_sq = [torch.zeros(b.size, dtype=torch.float64) for b in bases]
    n_examples, positions_src = 0, [1] * (len(bases) - 1)
    size = 1
    batches = as_batches(data, keep=False, what="interaction_graph")
    bar = progress_bar(total=None, desc=f"graph ({method})", enabled=progress)
    try:
        for batch in batches:
            inputs = split(batch)[0]
            if not edges:
                probe = next(iter(chunks(inputs, 1)))
                order = hooks.forward_order(model, names, probe)
                if order != sorted(order):
                    reached = [names[i] for i in order]
                    raise SelectionError(f"layers must be in forward order; the forward pass reaches them as {reached}")
                edges = [_Edge(s, t, build_section(model, probe, s.point, t.point, constant=s.folded,
                                                   feature_dims=axes), torch.zeros(t.size, s.size, dtype=torch.float64))
                         for s, t in zip(bases[:-1], bases[1:])]
                per = max(_bytes(model, probe, e, len(nodes_q), mode) for e in edges)
                size = plan_chunk(per, chunk_size, max_memory, "interaction_graph", num_examples(inputs))
            for x in chunks(inputs, size):
                with memory_guard("interaction_graph", size), torch.no_grad():
                    acts = hooks.run(model, x, read=names)[1]
                for b, ms, e in zip(bases, mean_sq, [*edges, None]):
                    a = acts[b.point]
                    axis = e.section.source_axis if e is not None else edges[-1].section.target_axis
                    if (a.shape[axis] if a.dim() > 1 else 1) != b.dim:
                        raise ShapeError(f"activations at '{b.point}' have width {a.shape[axis]} on their feature axis "
                                         f"{axis}, basis expects {b.dim}")
                    c = b.to_coordinates(to_rows(a, axis))
                    ms += (c.double().square().sum((0, 1)) / c.shape[1]).cpu()
                for li, e in enumerate(edges):
                    with memory_guard("interaction_graph", size):
                        c, residual = e.coordinates(acts)
                        positions_src[li] = c.shape[1]
                        _accumulate(e, x, c, residual, nodes_q, weights_q, formula, positions, complete, mode)
                n_examples += num_examples(x)
                bar.update(1)
    finally:
        bar.close()
    if n_examples == 0:
        raise DataError("no examples in data")

    completeness = []
    if complete:
        for e in edges:
            rel = e.err_max / e.change_max if e.change_max > 0 else 0.0
            rms = math.sqrt(e.err_sq / max(e.err_count, 1))
            completeness.append(Completeness(e.src.point, e.tgt.point, e.err_max, rms, e.change_max, rel, steps, rule))
    info: dict[str, Any] = {"method": method, "formula": formula, "n_examples": n_examples, "positions": positions,
                            "basis_method": basis.method, "normalisation": "1/(N P_source) (rib)"}
    if method == "integrated_gradients":
        info.update(steps=steps, rule=rule)
    return InteractionGraph.from_attributions(
        names, [(e.sums / (n_examples * p)).numpy() for e, p in zip(edges, positions_src)],
        [b.eigenvalues.double().cpu().numpy() for b in bases], [(ms / n_examples).numpy() for ms in mean_sq],
        info, completeness, constants=[b.constant is not None for b in bases],
    )


def _bytes(model: nn.Module, probe: Any, e: _Edge, steps: int, mode: str = "auto") -> int:
    """Estimated working set of one example's Jacobians for edge ``e`` (bytes; see
    :func:`~wdecomp.bases.section.jacobian_working_set`)."""
    def coordinates(a_s: Tensor, a_t: Tensor) -> tuple[int, int]:  # positions x component counts
        return a_s.numel() // max(e.src.dim, 1) * e.src.size, a_t.numel() // max(e.tgt.dim, 1) * e.tgt.size

    return jacobian_working_set(model, probe, e.src.point, e.tgt.point, coordinates, steps, mode)
