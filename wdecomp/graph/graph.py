"""The interaction graph object: a ``networkx.DiGraph`` with pruning and summaries.

Nodes are components ``(layer, index)`` with ids ``"L{layer_index}_{index}"``; edges join
consecutive layers and carry ``weight`` (the attribution, see :mod:`wdecomp.graph.build`; also
stored as ``attribution``). A basis's constant node (LIB as rib runs it) has ``constant=True``.
The wrapper remembers the unpruned graph's per-layer-pair totals, so a pruned graph can say how
many edges and how much attribution it kept.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from wdecomp.errors import DataError, WdecompError
from wdecomp.graph.export import check_wdecomp_graph, read_nx, save_graph
from wdecomp.graph.plot import plot_graph


def edge_weight(data: Mapping[str, Any]) -> float:
    """An edge's weight: ``weight``, else ``attribution`` (graphs saved before ``weight``), else 0."""
    return float(data.get("weight", data.get("attribution", 0.0)))


def node_id(layer_index: int, index: int) -> str:
    """The node id of component ``index`` at layer number ``layer_index``: ``"L{layer_index}_{index}"``.

    Plain identifiers, so they need no quoting in GraphML, GEXF, JSON or DOT.
    """
    return f"L{layer_index}_{index}"


@dataclass(frozen=True)
class Completeness:
    """How far integrated-gradient attributions are from complete, for one layer pair.

    For every example ``x`` and later coordinate ``(p, i)``, the error is
    ``sum_{q,j} A_{(p,i),(q,j)}(x) - (h_{x,(p,i)}(c_l(x)) - h_{x,(p,i)}(0))``: the quadrature error
    of the path integral (zero for the exact integral; Sundararajan et al. 2017, arXiv:1703.01365).

    Attributes:
        source: Earlier hook point.
        target: Later hook point.
        max_abs_error: Largest absolute error over examples and coordinates.
        rms_error: Root mean square error over examples and coordinates.
        max_abs_change: Largest ``|h(c_l(x)) - h(0)|``, the scale the errors compare with.
        relative_error: ``max_abs_error / max_abs_change`` (``0`` when nothing changes).
        steps: Quadrature nodes.
        rule: Quadrature rule.
    """

    source: str
    target: str
    max_abs_error: float
    rms_error: float
    max_abs_change: float
    relative_error: float
    steps: int
    rule: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ----------------------------------------------------------------------------- tables
def _fmt(x: Any) -> str:
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if math.isnan(x):
            return "-"
        return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.3e}"
    return str(x)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    line = "  ".join(h.rjust(w) for h, w in zip(header, widths))
    return "\n".join([line, "-" * len(line)] + ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells])


# ----------------------------------------------------------------------------- summaries
@dataclass(frozen=True)
class PairSummary:
    """Edges between one pair of consecutive layers.

    Attributes:
        source: Earlier layer (hook point).
        target: Later layer.
        possible_edges: ``k_l k_{l+1}`` in the unpruned graph.
        edges: Edges kept.
        density: ``edges / possible_edges`` (sparsity is ``1 - density``).
        total_attribution: Sum of attributions over all edges of the unpruned graph.
        attribution: Sum over the kept edges.
        attribution_kept: ``attribution / total_attribution`` (``1`` when the total is zero).
    """

    source: str
    target: str
    possible_edges: int
    edges: int
    density: float
    total_attribution: float
    attribution: float
    attribution_kept: float


@dataclass(frozen=True)
class GraphSummary:
    """What a (pruned) interaction graph contains.

    Attributes:
        method: How attributions were computed.
        nodes: Nodes kept.
        nodes_total: Nodes of the unpruned graph.
        edges: Edges kept.
        edges_total: Edges of the unpruned graph.
        attribution_kept: Kept attribution over the unpruned graph's total, all layer pairs.
        pairs: Per layer pair: edges, density, attribution kept.
        weakly_connected: Number of weakly connected components.
        component_sizes: Their sizes, largest first.
        strongly_connected: Number of strongly connected components (every node in a layered
            feed-forward graph).
        communities: Louvain communities (Blondel et al. 2008, arXiv:0803.0476) of the undirected
            graph weighted by attribution, as node ids, largest first; the weakly connected
            components when no edge carries weight.
        modularity: Newman's modularity of ``communities`` (``None`` without weighted edges).
        completeness: Integrated-gradient completeness per layer pair (empty for Jacobians).
    """

    method: str
    nodes: int
    nodes_total: int
    edges: int
    edges_total: int
    attribution_kept: float
    pairs: tuple[PairSummary, ...]
    weakly_connected: int
    component_sizes: tuple[int, ...]
    strongly_connected: int
    communities: tuple[tuple[str, ...], ...]
    modularity: float | None
    completeness: tuple[Completeness, ...] = ()

    @property
    def edges_kept(self) -> float:
        """Fraction of the unpruned graph's edges kept."""
        return self.edges / self.edges_total if self.edges_total else 1.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return {
            "method": self.method, "nodes": self.nodes, "nodes_total": self.nodes_total, "edges": self.edges,
            "edges_total": self.edges_total, "edges_kept": self.edges_kept, "attribution_kept": self.attribution_kept,
            "pairs": [dict(p.__dict__) for p in self.pairs], "weakly_connected": self.weakly_connected,
            "component_sizes": list(self.component_sizes), "strongly_connected": self.strongly_connected,
            "communities": [list(c) for c in self.communities], "modularity": self.modularity,
            "completeness": [c.to_dict() for c in self.completeness],
        }

    def __str__(self) -> str:
        lines = [
            f"interaction graph ({self.method}): {self.nodes}/{self.nodes_total} nodes, "
            f"{self.edges}/{self.edges_total} edges ({self.edges_kept:.1%}) carrying "
            f"{self.attribution_kept:.2%} of the attribution",
            "",
            _table(
                ["source", "target", "edges", "possible", "density", "attribution", "kept"],
                [[p.source, p.target, p.edges, p.possible_edges, p.density, p.total_attribution,
                  f"{p.attribution_kept:.2%}"] for p in self.pairs],
            ),
            "",
            f"weakly connected components: {self.weakly_connected} (sizes {list(self.component_sizes[:10])}"
            f"{' ...' if len(self.component_sizes) > 10 else ''})"
            # a layered feed-forward graph is acyclic: every node is its own strongly connected component
            + (f"; strongly connected: {self.strongly_connected}" if self.strongly_connected < self.nodes else ""),
            f"communities: {len(self.communities)} (sizes {[len(c) for c in self.communities[:10]]}"
            f"{' ...' if len(self.communities) > 10 else ''}), modularity "
            f"{'-' if self.modularity is None else f'{self.modularity:.3f}'}",
        ]
        if self.completeness:
            lines += ["", "integrated-gradient completeness (sum of attributions vs. change of the output):",
                      _table(["source", "target", "steps", "rule", "max |error|", "rms error", "max |change|",
                              "relative"],
                             [[c.source, c.target, c.steps, c.rule, c.max_abs_error, c.rms_error, c.max_abs_change,
                               c.relative_error] for c in self.completeness])]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- the graph
@dataclass(frozen=True)
class InteractionGraph:
    """An interaction graph of components, wrapping a ``networkx.DiGraph`` (``.nx``).

    Attributes:
        nx: The graph. Node attributes: ``layer``, ``layer_index``, ``index``, ``importance``,
            ``eigenvalue``, ``mean_square``, ``constant``, ``label``; edge attributes: ``weight``
            and its alias ``attribution``.
        layers: Hook points in forward order (``layer_index`` indexes this).
        info: How it was built (method, examples, quadrature) and pruned.
        completeness: Integrated-gradient completeness per layer pair (empty for Jacobians).
        layer_sizes: Components per layer in the unpruned graph.
        pair_totals: Total attribution per layer pair in the unpruned graph.
        pair_edges: Edges per layer pair in the unpruned graph.
    """

    nx: nx.DiGraph
    layers: tuple[str, ...]
    info: Mapping[str, Any] = field(default_factory=dict)
    completeness: tuple[Completeness, ...] = ()
    layer_sizes: tuple[int, ...] = ()
    pair_totals: tuple[float, ...] = ()
    pair_edges: tuple[int, ...] = ()

    @classmethod
    def from_full(cls, g: nx.DiGraph, layers: Sequence[str], info: Mapping[str, Any] | None = None,
                  completeness: Sequence[Completeness] = ()) -> InteractionGraph:
        """Wrap an unpruned graph, recording its sizes and per-pair totals as the reference."""
        layers = tuple(layers)
        check_wdecomp_graph(g, len(layers))
        sizes = [0] * len(layers)
        for _, li in g.nodes(data="layer_index"):
            sizes[int(li)] += 1
        totals = [0.0] * max(len(layers) - 1, 0)
        counts = [0] * max(len(layers) - 1, 0)
        for u, v, d in g.edges(data=True):
            li = int(g.nodes[u]["layer_index"])
            if int(g.nodes[v]["layer_index"]) != li + 1:
                raise DataError(f"edge {u!r} -> {v!r} does not join consecutive layers")
            totals[li] += edge_weight(d)
            counts[li] += 1
        return cls(g, layers, dict(info or {}), tuple(completeness), tuple(sizes), tuple(totals), tuple(counts))

    @classmethod
    def from_attributions(
        cls,
        layers: Sequence[str],
        attributions: Sequence[Any],
        eigenvalues: Sequence[Any] | None = None,
        mean_squares: Sequence[Any] | None = None,
        info: Mapping[str, Any] | None = None,
        completeness: Sequence[Completeness] = (),
        constants: Sequence[bool] | None = None,
    ) -> InteractionGraph:
        """The unpruned graph from per-pair attribution matrices.

        Args:
            layers: Hook points, in forward order.
            attributions: For each consecutive pair ``l``, an array ``(k_{l+1}, k_l)`` whose entry
                ``[i, j]`` is the attribution of edge ``(l, j) -> (l+1, i)``.
            eigenvalues: Per layer, ``(k_l,)`` node importances (default: ones).
            mean_squares: Per layer, ``(k_l,)`` mean squared coordinates (optional attribute).
            info: Build metadata.
            completeness: Integrated-gradient completeness per pair.
            constants: Per layer, whether component 0 is the constant node.
        """
        layers = tuple(layers)
        mats = [np.asarray(a, dtype=float) for a in attributions]
        if len(mats) != len(layers) - 1:
            raise ValueError(f"{len(layers)} layers need {len(layers) - 1} attribution matrices, got {len(mats)}")
        sizes = [m.shape[1] for m in mats[:1]] + [m.shape[0] for m in mats]
        for li, m in enumerate(mats[1:], start=1):
            if m.shape[1] != sizes[li]:
                raise ValueError(f"attribution matrix {li} has {m.shape[1]} columns, layer {li} has {sizes[li]} nodes")
        g = nx.DiGraph()
        for li, name in enumerate(layers):
            ev = np.ones(sizes[li]) if eigenvalues is None else np.asarray(eigenvalues[li], dtype=float)
            for j in range(sizes[li]):
                const = bool(constants is not None and constants[li] and j == 0)
                attrs = {"layer": name, "layer_index": li, "index": j, "eigenvalue": float(ev[j]),
                         "importance": float(ev[j]), "constant": const}
                if mean_squares is not None:
                    attrs["mean_square"] = float(mean_squares[li][j])
                attrs["label"] = f"{name}[const]" if const else f"{name}[{j}]"
                g.add_node(node_id(li, j), **attrs)
        for li, m in enumerate(mats):
            rows = m.tolist()
            g.add_edges_from((node_id(li, j), node_id(li + 1, i), {"weight": rows[i][j], "attribution": rows[i][j]})
                             for i in range(m.shape[0]) for j in range(m.shape[1]))
        return cls.from_full(g, layers, info, completeness)

    # -- access
    def node_id(self, layer: str | int, index: int) -> str:
        """Id of component ``index`` at ``layer`` (a hook point or its position in ``layers``)."""
        li = self.layers.index(layer) if isinstance(layer, str) else int(layer)
        return node_id(li, index)

    @property
    def method(self) -> str:
        return str(self.info.get("method", "unknown"))

    def attribution_matrix(self, pair: int | str) -> np.ndarray:
        """Attributions from layer ``pair`` to the next as a ``(k_{l+1}, k_l)`` array (pruned edges 0).

        ``pair`` is the earlier layer's index in ``layers`` or its hook point.
        """
        li = self.layers.index(pair) if isinstance(pair, str) else int(pair)
        if not 0 <= li < len(self.layers) - 1:
            raise IndexError(f"layer pair {pair} out of range: {len(self.layers) - 1} pairs")
        m = np.zeros((self.layer_sizes[li + 1], self.layer_sizes[li]))
        for u, v, d in self.nx.edges(data=True):
            nu, nv = self.nx.nodes[u], self.nx.nodes[v]
            if nu["layer_index"] == li:
                m[nv["index"], nu["index"]] = edge_weight(d)
        return m

    def _pair_of(self, u: str) -> int:
        return int(self.nx.nodes[u]["layer_index"])

    # -- pruning
    def prune(
        self,
        *,
        fraction: float | None = None,
        top_k_in: int | None = None,
        top_k_out: int | None = None,
        threshold: float | None = None,
        drop_isolated: bool = True,
    ) -> InteractionGraph:
        """A pruned copy: the edges that pass *every* given criterion, each judged on this graph.

        Edges are ranked by attribution (largest first; ties broken by node ids, so rankings are
        total and reproducible).

        Args:
            fraction: Per layer pair, keep the fewest strongest edges whose attributions sum to at
                least ``fraction`` of that pair's total (``1.0`` drops exactly the zero edges).
            top_k_in: Keep an edge only if it is among the ``top_k_in`` strongest into its target.
            top_k_out: Keep an edge only if it is among the ``top_k_out`` strongest out of its source.
            threshold: Keep edges whose attribution is strictly greater (``0``: drop zero edges).
            drop_isolated: Remove nodes left without any edge.

        Every criterion is monotone (a larger ``fraction``/``top_k``, or a smaller ``threshold``,
        keeps a superset), and so is their intersection.
        """
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        for name, k in (("top_k_in", top_k_in), ("top_k_out", top_k_out)):
            if k is not None and k < 0:
                raise ValueError(f"{name} must be >= 0, got {k}")
        if threshold is not None and not math.isfinite(float(threshold)) and float(threshold) != -math.inf:
            raise ValueError(f"threshold must be a number (or -inf to keep every edge), got {threshold}")
        edges = sorted(((u, v, edge_weight(d)) for u, v, d in self.nx.edges(data=True)),
                       key=lambda e: (-e[2], e[0], e[1]))
        keep = {(u, v) for u, v, _ in edges}
        if threshold is not None:
            keep &= {(u, v) for u, v, a in edges if a > threshold}
        if fraction is not None:
            by_pair: dict[int, list[tuple[str, str, float]]] = defaultdict(list)
            for e in edges:
                by_pair[self._pair_of(e[0])].append(e)
            passing = set()
            for es in by_pair.values():
                cum = np.cumsum([max(float(a), 0.0) for _, _, a in es])
                goal = fraction * cum[-1]
                n = 0 if goal <= 0 else int(np.searchsorted(cum, goal, side="left")) + 1
                passing |= {(u, v) for u, v, _ in es[:n]}
            keep &= passing
        for k, end in ((top_k_in, 1), (top_k_out, 0)):
            if k is None:
                continue
            rank: dict[str, int] = defaultdict(int)
            passing = set()
            for e in edges:
                node = e[end]
                if rank[node] < k:
                    passing.add((e[0], e[1]))
                rank[node] += 1
            keep &= passing
        g = nx.DiGraph()
        g.graph.update(self.nx.graph)
        g.add_nodes_from(self.nx.nodes(data=True))
        g.add_edges_from((u, v, dict(self.nx.edges[u, v])) for u, v, _ in edges if (u, v) in keep)
        if drop_isolated:
            g.remove_nodes_from([n for n in list(g.nodes) if g.degree(n) == 0])
        settings = {"fraction": fraction, "top_k_in": top_k_in, "top_k_out": top_k_out, "threshold": threshold,
                    "drop_isolated": drop_isolated}
        info = dict(self.info)
        info["pruning"] = [*info.get("pruning", []), {k: v for k, v in settings.items() if v is not None}]
        return InteractionGraph(g, self.layers, info, self.completeness, self.layer_sizes, self.pair_totals,
                                self.pair_edges)

    # -- analysis
    def summary(self, *, communities: bool = True, seed: int = 0) -> GraphSummary:
        """Edges and attribution kept, per-pair density, components and communities.

        Args:
            communities: Run Louvain community detection (``networkx.community.louvain_communities``
                on the undirected graph weighted by ``weight``, ``seed`` fixed; constant nodes and
                their edges left out, as in rib's modularity analysis).
            seed: Seed of the community detection.
        """
        g = self.nx
        n_pairs = len(self.layers) - 1
        kept = [0.0] * n_pairs
        counts = [0] * n_pairs
        for u, _, d in g.edges(data=True):
            li = self._pair_of(u)
            kept[li] += edge_weight(d)
            counts[li] += 1
        pairs = []
        for li in range(n_pairs):
            possible = self.layer_sizes[li] * self.layer_sizes[li + 1]
            total = self.pair_totals[li]
            pairs.append(PairSummary(self.layers[li], self.layers[li + 1], possible, counts[li],
                                     counts[li] / possible if possible else 0.0, total, kept[li],
                                     kept[li] / total if total > 0 else 1.0))
        grand = sum(self.pair_totals)
        wcc = sorted((sorted(c) for c in nx.weakly_connected_components(g)), key=lambda c: (-len(c), c))
        comms: tuple[tuple[str, ...], ...] = ()
        modularity = None
        if communities and g.number_of_nodes():
            und = self.without_constant().nx.to_undirected()
            for _, _, d in und.edges(data=True):
                d["weight"] = edge_weight(d)
            weight = sum(float(a) for _, _, a in und.edges(data="weight"))
            if weight > 0:
                found = nx.community.louvain_communities(und, weight="weight", seed=seed)
                modularity = float(nx.community.modularity(und, found, weight="weight"))
            else:
                found = [set(c) for c in wcc]
            comms = tuple(tuple(c) for c in sorted((sorted(c) for c in found), key=lambda c: (-len(c), c)))
        return GraphSummary(
            method=self.method, nodes=g.number_of_nodes(), nodes_total=sum(self.layer_sizes),
            edges=g.number_of_edges(), edges_total=sum(self.pair_edges),
            attribution_kept=sum(kept) / grand if grand > 0 else 1.0, pairs=tuple(pairs),
            weakly_connected=len(wcc), component_sizes=tuple(len(c) for c in wcc),
            strongly_connected=nx.number_strongly_connected_components(g), communities=comms,
            modularity=modularity, completeness=self.completeness,
        )

    def without_constant(self) -> InteractionGraph:
        """A copy without the constant nodes (``constant=True``) and their edges."""
        g = self.nx.copy()
        g.remove_nodes_from([n for n, c in self.nx.nodes(data="constant") if c])
        return InteractionGraph(g, self.layers, dict(self.info), self.completeness, self.layer_sizes,
                                self.pair_totals, self.pair_edges)

    # -- front doors
    def save(self, path: str | Path, format: str | None = None) -> Path:
        """Write the graph (GraphML, GEXF, node-link JSON or DOT, by suffix); see :func:`save_graph`."""
        return save_graph(self.nx, path, format=format, meta=self.graph_attributes())

    def plot(self, path: str | Path | None = None, **kwargs: Any) -> Any:
        """Layered plot; see :func:`wdecomp.graph.plot.plot_graph`."""
        return plot_graph(self, path, **kwargs)

    @classmethod
    def load(cls, path: str | Path, format: str | None = None) -> InteractionGraph:
        """Read a saved graph back; see :func:`load_graph`."""
        return load_graph(path, format)

    def graph_attributes(self) -> dict[str, Any]:
        """Graph-level metadata as flat scalars (what the exporters write)."""
        out: dict[str, Any] = {
            "wdecomp_graph": 1,
            "layers": json.dumps(list(self.layers)),
            "layer_sizes": json.dumps(list(self.layer_sizes)),
            "pair_totals": json.dumps(list(self.pair_totals)),
            "pair_edges": json.dumps(list(self.pair_edges)),
            "info": json.dumps(self.info, default=str),
            "completeness": json.dumps([c.to_dict() for c in self.completeness]),
        }
        return out

    def __repr__(self) -> str:
        return (f"InteractionGraph({self.method}, layers={list(self.layers)}, nodes={self.nx.number_of_nodes()}, "
                f"edges={self.nx.number_of_edges()})")


def load_graph(path: str | Path, format: str | None = None) -> InteractionGraph:
    """Read a saved graph back into an :class:`InteractionGraph`.

    Metadata (layers, unpruned totals, build info) comes from the graph attributes where the format
    keeps them (GraphML, JSON); otherwise (GEXF, DOT) layers are recovered from the nodes'
    ``layer``/``layer_index`` and the file's graph is taken as the unpruned reference.

    Raises:
        DataError: The file does not parse, its graph was not made by wdecomp (nodes without
            ``layer_index``), or a value in it is malformed (a non-finite or non-numeric edge
            weight, metadata of the wrong shape). Checked by a hypothesis fuzz over damaged files.
    """
    try:
        g = _load_graph(path, format)
    except (WdecompError, OSError, MemoryError, ImportError):
        raise
    except Exception as exc:  # a damaged file: any parser or shape error is the file's fault
        raise DataError(f"'{path}' is not a readable wdecomp graph file ({type(exc).__name__}: {exc}); "
                        "re-export it with wd.save_graph") from exc
    for u, v, d in g.nx.edges(data=True):
        for key in ("weight", "attribution"):
            w = d.get(key)
            if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w)):
                raise DataError(f"'{path}': edge {u!r} -> {v!r} has {key} {w!r}, not a finite number")
    return g


def _load_graph(path: str | Path, format: str | None) -> InteractionGraph:
    g = read_nx(path, format)
    check_wdecomp_graph(g)
    meta = {k: g.graph.pop(k) for k in list(g.graph)}
    layer_of: dict[int, str] = {int(d["layer_index"]): str(d.get("layer", f"layer{d['layer_index']}"))
                                for _, d in g.nodes(data=True)}
    try:
        if "layers" in meta:
            layers = tuple(json.loads(meta["layers"]))
        else:
            layers = tuple(layer_of.get(i, f"layer{i}") for i in range(max(layer_of, default=-1) + 1))
        if "layer_sizes" not in meta:
            return InteractionGraph.from_full(g, layers)
        info = json.loads(meta.get("info", "{}"))
        completeness = tuple(Completeness(**c) for c in json.loads(meta.get("completeness", "[]")))
        sizes = tuple(json.loads(meta["layer_sizes"]))
        totals, counts = tuple(json.loads(meta["pair_totals"])), tuple(json.loads(meta["pair_edges"]))
    except (ValueError, TypeError, KeyError) as exc:
        raise DataError(f"'{path}': malformed wdecomp graph metadata ({exc})") from exc
    check_wdecomp_graph(g, len(layers))
    return InteractionGraph(g, layers, info, completeness, sizes, totals, counts)
