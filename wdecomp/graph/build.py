r"""Build interaction graphs: components of consecutive layers joined by their attributions.

Nodes are the directions of an activation basis (:class:`~wdecomp.bases.base.Basis`): at hook
point ``l`` with basis ``c_l = C_l (f_l - mu_l)`` (``C_l``: ``k_l x d_l``, inverse ``C_l^+``),
node ``(l, j)`` is coordinate ``c_{l,j}``; its importance is the basis eigenvalue. A directed
edge ``(l, j) -> (l+1, i)`` carries how much the later coordinate depends on the earlier one over
the data. Writing ``F_x`` for the map from ``f_l`` to ``f_{l+1}`` on input ``x`` (everything
upstream of ``l`` held at its value on ``x``, see :func:`wdecomp.activations.activation_jacobian`)
and ``h_x(c) = C_{l+1} (F_x(C_l^+ c + mu_l) - mu_{l+1})`` for the same map in coordinates:

**Jacobian attribution** (``method="jacobian"``)::

    A_ij(x) = [dc_{l+1} / dc_l]_ij  c_{l,j}(x),    dc_{l+1} / dc_l = C_{l+1} J_x C_l^+,
    E_ij    = E_x[ A_ij(x)^2 ],

with ``J_x = d f_{l+1} / d f_l`` at ``f_l(x)`` from :func:`~wdecomp.activations.activation_jacobian`.

**Integrated-gradient attribution** (``method="integrated_gradients"``; Sundararajan, Taly & Yan
2017, arXiv:1703.01365, as used for the edges of the Local Interaction Basis graph by Bushnaq et
al. 2024, arXiv:2405.10928)::

    A_ij(x) = c_{l,j}(x) \int_0^1 d alpha  [d h_{x,i} / d c_j](alpha c_l(x)),
    E_ij    = E_x[ A_ij(x)^2 ].

The path runs straight from the baseline ``c = 0`` (zero in *basis coordinates*, i.e. the
activation ``f_l = mu_l``: the basis centre, or zero for an uncentred basis) to ``c_l(x)``. The
integral is a quadrature with ``steps`` nodes (``rule``): ``"gauss-legendre"`` (default; exact
for polynomials of degree ``2 steps - 1``, exponentially convergent for analytic ``h``),
``"midpoint"`` (error ``O(steps^-2)``) or ``"trapezoid"`` (endpoints included, ``O(steps^-2)``).
Integrated gradients are *complete*: ``sum_j A_ij(x) = h_{x,i}(c_l(x)) - h_{x,i}(0)`` exactly
for the exact integral. The quadrature breaks this by its error, which is measured on every
example and reported per layer pair (:class:`Completeness`). (``h_x(c_l(x))`` equals ``c_{l+1}(x)``
when the basis at ``l`` spans the activations, as bases fit on the same data do.)

**Sequence models.** When the activations at a hook point carry extra axes (positions, channels:
shape ``(*P, d)``; bases act on the last axis), a node is a direction shared by all positions.
Following the LIB paper's edges, the attribution of output position ``p`` to a direction ``j`` is
summed over input positions ``q`` *before* squaring, then squared terms are summed over output
positions ``p`` (``positions="sum"``, the default)::

    E_ij = E_x  sum_p ( sum_q A_{(p,i),(q,j)}(x) )^2 .

``positions="separate"`` instead sums ``A^2`` over every ``(p, q)`` pair. Without extra axes
both are ``E_x[A_ij^2]``.

Everything is streamed over the data in chunks of ``chunk_size`` examples and batched over
examples with :func:`torch.func.vmap`; the largest tensor ever held is one chunk's Jacobians,
``(chunk, P_{l+1} k_{l+1}, P_l k_l)`` (for integrated gradients, times the quadrature nodes
evaluated together, at most ``max(1, chunk_size // chunk)`` of them).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import jacfwd, jacrev, vmap

from wdecomp import batch as batching
from wdecomp.activations import activation_jacobian, capture, module_order, run_with_hooks
from wdecomp.bases.base import Basis, LayerBasis
from wdecomp.errors import DataError, NonFiniteError, SelectionError, ShapeError
from wdecomp.graph.graph import Completeness, InteractionGraph
from wdecomp.progress import progress_bar

METHODS = ("jacobian", "integrated_gradients")
RULES = ("gauss-legendre", "midpoint", "trapezoid")
POSITION_RULES = ("sum", "separate")


def quadrature(steps: int, rule: str = "gauss-legendre") -> tuple[Tensor, Tensor]:
    """Nodes ``alpha_m`` and weights ``w_m`` of a rule for ``int_0^1 g(alpha) d alpha``, float64.

    Args:
        steps: Number of nodes (``>= 1``; ``>= 2`` for the trapezoid rule).
        rule: ``"gauss-legendre"`` (nodes are the roots of the Legendre polynomial mapped to
            ``[0, 1]``), ``"midpoint"`` (``alpha_m = (m + 1/2) / steps``, ``w_m = 1 / steps``) or
            ``"trapezoid"`` (``alpha_m = m / (steps - 1)``, half weights at the ends).

    Returns:
        ``(nodes, weights)``, each of shape ``(steps,)``; the weights sum to 1.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, not '{rule}'")
    if steps < (2 if rule == "trapezoid" else 1):
        raise ValueError(f"{rule} quadrature needs at least {2 if rule == 'trapezoid' else 1} steps, got {steps}")
    if rule == "gauss-legendre":
        x, w = np.polynomial.legendre.leggauss(steps)
        return torch.as_tensor((x + 1) / 2), torch.as_tensor(w / 2)
    if rule == "midpoint":
        nodes = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
        return nodes, torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    nodes = torch.linspace(0, 1, steps, dtype=torch.float64)
    w = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
    w[0] = w[-1] = 0.5 / (steps - 1)
    return nodes, w


# ----------------------------------------------------------------------------- inputs
def _as_basis(obj: Any) -> Basis:
    """A :class:`Basis` from a basis or from a components object (``wdecomp.components.Components``)."""
    if isinstance(obj, Basis):
        return obj
    inner = getattr(obj, "basis", None)
    if isinstance(inner, Basis):
        return inner
    if inner is not None:
        raise TypeError(
            f"interaction graphs join activation components of consecutive layers; these components come from a "
            f"{type(inner).__name__}, not an activation Basis"
        )
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


def iter_chunks(data: Any, chunk_size: int) -> Iterator[Any]:
    """Input chunks of at most ``chunk_size`` examples from ``data``.

    ``data`` is a data argument as :mod:`wdecomp.batch` defines it (one batch, a list of batches,
    a DataLoader or a one-shot iterator; a bare tensor is one batch of inputs). Targets are ignored.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    for batch in batching.as_batches(data, keep=False, what="interaction_graph"):
        yield from batching.chunks(batching.split(batch)[0], chunk_size)


def _count_chunks(data: Any, chunk_size: int) -> int | None:
    """Number of chunks :func:`iter_chunks` will yield, when ``data`` can be looked at twice."""
    batches = batching.as_batches(data, keep=False)
    if not isinstance(batches, Sequence):
        return None
    return sum(math.ceil(batching.num_examples(batching.split(b)[0]) / chunk_size) for b in batches)


# ----------------------------------------------------------------------------- attributions
def _coordinate_map(model: nn.Module, src: LayerBasis, tgt: LayerBasis, s_shape: torch.Size) -> Any:
    """``(c, x) -> h_x(c)`` for one example: ``c`` of shape ``(P_l, k_l)`` to ``(P_{l+1}, k_{l+1})``."""

    def h(c: Tensor, x: Any) -> Tensor:
        f = src.from_coordinates(c).reshape(s_shape).unsqueeze(0)
        _, acts = run_with_hooks(model, batching.add_example_axis(x), read=[tgt.point], write={src.point: f})
        out = acts[tgt.point][0]
        return tgt.to_coordinates(out.reshape(-1, out.shape[-1]))

    return h


def _reduce(attr: Tensor, positions: str) -> Tensor:
    """``(B, P_t, k_t, P_s, k_s)`` attributions -> ``(k_t, k_s)`` summed squares over the chunk."""
    if positions == "sum":
        return attr.sum(3).square().sum((0, 1))
    return attr.square().sum((0, 1, 3))


def _jacobian_chunk(model: nn.Module, x: Any, src: LayerBasis, tgt: LayerBasis, acts: dict[str, Tensor],
                    positions: str) -> Tensor:
    a_s, a_t = acts[src.point], acts[tgt.point]
    b = a_s.shape[0]
    jac = activation_jacobian(model, x, src.point, tgt.point)  # (B, *t_shape, *s_shape)
    d_t, d_s = a_t.shape[-1], a_s.shape[-1]
    p_t, p_s = a_t[0].numel() // d_t, a_s[0].numel() // d_s
    jac = jac.reshape(b, p_t, d_t, p_s, d_s)
    dtype = jac.dtype
    dc = torch.einsum("ia,bpaqc,cj->bpiqj", tgt.transform.to(jac.device, dtype), jac, src.inverse.to(jac.device, dtype))
    c_s = src.to_coordinates(a_s.reshape(b, p_s, d_s))  # (B, P_s, k_s)
    return _reduce(dc * c_s[:, None, None], positions)


def _ig_chunk(model: nn.Module, x: Any, src: LayerBasis, tgt: LayerBasis, acts: dict[str, Tensor], positions: str,
              nodes: Tensor, weights: Tensor, chunk_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Summed squared IG attributions of one chunk, plus completeness errors and output changes."""
    a_s = acts[src.point]
    b, s_shape = a_s.shape[0], a_s.shape[1:]
    p_s = a_s[0].numel() // s_shape[-1]
    c_s = src.to_coordinates(a_s.reshape(b, p_s, s_shape[-1]))  # (B, P_s, k_s)
    h = _coordinate_map(model, src, tgt, s_shape)
    k_t_total = acts[tgt.point][0].numel() // acts[tgt.point].shape[-1] * tgt.size
    jac = jacrev if k_t_total <= c_s[0].numel() else jacfwd
    jh = jac(h, argnums=0)
    nodes, weights = nodes.to(c_s.device, c_s.dtype), weights.to(c_s.device, c_s.dtype)
    group = max(1, chunk_size // b)

    def along_path(c: Tensor, xi: Any, alphas: Tensor, w: Tensor) -> Tensor:
        js = vmap(jh, in_dims=(0, None))(alphas[:, None, None] * c, xi)  # (S, P_t, k_t, P_s, k_s)
        return torch.einsum("s,spiqj->piqj", w, js)

    mean_grad = None
    with torch.no_grad():
        for start in range(0, nodes.numel(), group):
            al, w = nodes[start:start + group], weights[start:start + group]
            part = vmap(along_path, in_dims=(0, 0, None, None))(c_s, x, al, w)
            mean_grad = part if mean_grad is None else mean_grad + part
        attr = mean_grad * c_s[:, None, None]  # (B, P_t, k_t, P_s, k_s)
        h_end = vmap(h)(c_s, x)
        h_start = vmap(h)(torch.zeros_like(c_s), x)
    if not torch.isfinite(attr).all():
        raise NonFiniteError(f"integrated gradients {src.point} -> {tgt.point} contain NaN or inf")
    change = h_end - h_start
    error = attr.sum((3, 4)) - change
    return _reduce(attr, positions), error, change


@dataclass
class _Accumulator:
    sums: Tensor
    err_max: float = 0.0
    err_sq: float = 0.0
    err_count: int = 0
    change_max: float = 0.0


def interaction_graph(
    model_or_components: Any,
    data: Any,
    basis: Any = None,
    *,
    model: nn.Module | None = None,
    method: str = "jacobian",
    steps: int = 20,
    rule: str = "gauss-legendre",
    chunk_size: int = 32,
    layers: Sequence[str] | None = None,
    positions: str = "sum",
    progress: bool | None = None,
) -> InteractionGraph:
    r"""The interaction graph of a basis's components over ``data``.

    See the module docstring for the formulas. Node ``(l, j)`` gets the attributes ``layer``
    (hook point), ``layer_index``, ``index`` (``j``), ``eigenvalue`` and ``importance`` (both the
    basis eigenvalue of direction ``j``), ``mean_square`` (``E_x sum_p c_{l,(p,j)}(x)^2``) and
    ``label`` (``"layer[j]"``); node ids are ``"L{layer_index}_{j}"``. Edge
    ``(l, j) -> (l+1, i)`` gets ``attribution`` ``E_ij`` (every pair of consecutive layers is
    joined by all ``k_l k_{l+1}`` edges; prune with :meth:`InteractionGraph.prune`).

    Args:
        model_or_components: The model (then ``basis`` is required), or a
            :class:`~wdecomp.components.Components` object of an activation basis (then ``model``
            is required, unless the object has a ``.model``).
        data: One batch of inputs (tensor), or an iterable of batches, each ``(inputs, targets)``
            or bare inputs. Streamed once.
        basis: A :class:`~wdecomp.bases.base.Basis` (activation bases at the hook points, in forward
            order) or a ``Components`` object of one.
        model: The model, when the first argument is a ``Components`` object.
        method: ``"jacobian"`` or ``"integrated_gradients"``.
        steps: Quadrature nodes for integrated gradients.
        rule: Quadrature rule for integrated gradients (see :func:`quadrature`).
        chunk_size: Examples per vmapped Jacobian evaluation (bounds memory).
        layers: A subsequence of ``basis.layers`` to use (default: all of them).
        positions: How extra activation axes (sequence positions) are reduced: ``"sum"`` or
            ``"separate"`` (module docstring).
        progress: Show a progress bar (default: when on a terminal).

    Returns:
        An :class:`~wdecomp.graph.graph.InteractionGraph`; for integrated gradients its
        ``completeness`` lists one :class:`Completeness` per layer pair.

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
    nodes_q, weights_q = quadrature(steps, rule) if method == "integrated_gradients" else (None, None)

    pairs = list(zip(bases[:-1], bases[1:]))
    accs = [_Accumulator(torch.zeros(t.size, s.size, dtype=torch.float64)) for s, t in pairs]
    mean_sq = [torch.zeros(b.size, dtype=torch.float64) for b in bases]
    n_examples = 0
    total = _count_chunks(data, chunk_size)
    bar = progress_bar(total=total, desc=f"graph ({method})", enabled=progress)
    checked = False
    try:
        for x in iter_chunks(data, chunk_size):
            if not checked:
                order = module_order(model, names, x)
                if order != sorted(order):
                    raise SelectionError(
                        f"layers must be in forward order; the forward pass reaches them as {[names[i] for i in order]}"
                    )
                checked = True
            acts = capture(model, x, names)
            for b, ms in zip(bases, mean_sq):
                a = acts[b.point]
                if a.shape[-1] != b.dim:
                    raise ShapeError(f"activations at '{b.point}' have width {a.shape[-1]}, basis expects {b.dim}")
                c = b.to_coordinates(a.reshape(a.shape[0], -1, a.shape[-1]))
                ms += c.double().square().sum((0, 1)).cpu()
            for (src, tgt), acc in zip(pairs, accs):
                if method == "jacobian":
                    acc.sums += _jacobian_chunk(model, x, src, tgt, acts, positions).double().cpu()
                else:
                    s, err, change = _ig_chunk(model, x, src, tgt, acts, positions, nodes_q, weights_q, chunk_size)
                    acc.sums += s.double().cpu()
                    acc.err_max = max(acc.err_max, float(err.abs().max()))
                    acc.err_sq += float(err.double().square().sum())
                    acc.err_count += err.numel()
                    acc.change_max = max(acc.change_max, float(change.abs().max()))
            n_examples += batching.num_examples(x)
            bar.update(1)
    finally:
        bar.close()
    if n_examples == 0:
        raise DataError("no examples in data")

    completeness = []
    if method == "integrated_gradients":
        for (src, tgt), acc in zip(pairs, accs):
            rel = acc.err_max / acc.change_max if acc.change_max > 0 else 0.0
            rms = math.sqrt(acc.err_sq / max(acc.err_count, 1))
            completeness.append(Completeness(src.point, tgt.point, acc.err_max, rms, acc.change_max, rel, steps, rule))
    info: dict[str, Any] = {"method": method, "n_examples": n_examples, "positions": positions,
                            "basis_method": basis.method}
    if method == "integrated_gradients":
        info.update(steps=steps, rule=rule)
    return InteractionGraph.from_attributions(
        names, [(acc.sums / n_examples).numpy() for acc in accs], [b.eigenvalues.double().cpu().numpy() for b in bases],
        [(ms / n_examples).numpy() for ms in mean_sq], info, completeness,
    )

