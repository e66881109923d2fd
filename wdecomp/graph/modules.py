"""Modules of an interaction graph: Louvain communities over the pruned graph, resolution swept.

rib's modularity analysis (``rib/modularity.py``, ``rib_scripts/rib_build/run_modularity.py``;
Bushnaq et al. 2024, arXiv 2405.10928, sec. 3): prune the graph to the edges that edge ablation
says the network needs (the ``n`` strongest per layer pair,
:func:`wdecomp.ablation.edges.edge_ablation`'s ``edges_needed``), leave out the constant node and
its edges (they join everything and say nothing about modules), and run Louvain community
detection (Blondel et al. 2008, arXiv:0803.0476; ``networkx.community.louvain_communities``) on
the undirected graph weighted by ``weight`` at several resolutions ``gamma``. Each partition is
reported with Newman's modularity

    Q = 1/(2m) sum_ij [A_ij - gamma k_i k_j / (2m)] delta(c_i, c_j)

at ``gamma = 1`` (comparable across the sweep) and at its own resolution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx

from wdecomp.graph.graph import InteractionGraph, edge_weight
from wdecomp.graph.plot import plot_graph

__all__ = ["ModulePartition", "Modules", "find_modules"]


@dataclass(frozen=True)
class ModulePartition:
    """Louvain communities at one resolution.

    Attributes:
        resolution: ``gamma``.
        modules: Node-id groups, largest first (isolated nodes are their own modules).
        modularity: ``Q`` at ``gamma = 1``.
        modularity_at_resolution: ``Q`` at ``gamma`` (what Louvain maximised).
    """

    resolution: float
    modules: tuple[tuple[str, ...], ...]
    modularity: float
    modularity_at_resolution: float


@dataclass(frozen=True)
class Modules:
    """The module sweep of one pruned graph.

    Attributes:
        graph: The pruned graph without constant nodes (what Louvain saw).
        partitions: One :class:`ModulePartition` per resolution.
        edges_kept: Edges kept per layer pair (source hook point -> count), ``None`` when unpruned.
    """

    graph: InteractionGraph
    partitions: tuple[ModulePartition, ...]
    edges_kept: Mapping[str, int] | None = None

    @property
    def best(self) -> ModulePartition:
        """The partition with the largest modularity at ``gamma = 1``."""
        return max(self.partitions, key=lambda p: p.modularity)

    def plot(self, path: str | Path | None = None, partition: ModulePartition | None = None, **kwargs: Any) -> Any:
        """The pruned graph with each module in one colour (:func:`~wdecomp.graph.plot.plot_graph`)."""
        part = partition or self.best
        n = sum(len(m) > 1 for m in part.modules)
        title = kwargs.pop("title", f"{n} modules of more than one node (resolution {part.resolution:g}, "
                                    f"modularity {part.modularity:.3f}; constant node left out)")
        return plot_graph(self.graph, path, groups=[list(m) for m in part.modules if len(m) > 1], title=title,
                          **kwargs)

    def __str__(self) -> str:
        lines = [f"modules of {self.graph.nx.number_of_nodes()} nodes, {self.graph.nx.number_of_edges()} edges "
                 f"(constant node left out)", f"{'resolution':>10} {'modules':>8} {'largest':>8} {'modularity':>11}"]
        for p in self.partitions:
            lines.append(f"{p.resolution:>10g} {sum(len(m) > 1 for m in p.modules):>8} "
                         f"{max((len(m) for m in p.modules), default=0):>8} {p.modularity:>11.4f}")
        return "\n".join(lines)


def _prune(graph: InteractionGraph, edges_kept: Mapping[str, int] | int | None) -> InteractionGraph:
    if edges_kept is None:
        return graph
    keep = set()
    for li, source in enumerate(graph.layers[:-1]):
        n = edges_kept if isinstance(edges_kept, int) else edges_kept.get(source)
        es = [(u, v, edge_weight(d)) for u, v, d in graph.nx.edges(data=True)
              if graph.nx.nodes[u]["layer_index"] == li]
        if n is None:
            keep |= {(u, v) for u, v, _ in es}
            continue
        if n < 0:
            raise ValueError(f"edges_kept for '{source}' must be >= 0, got {n}")
        es.sort(key=lambda e: (-e[2], e[0], e[1]))
        keep |= {(u, v) for u, v, _ in es[:n]}
    g = graph.nx.copy()
    g.remove_edges_from([e for e in list(g.edges) if e not in keep])
    return InteractionGraph(g, graph.layers, {**graph.info, "pruning": [{"edges_kept": edges_kept}]},
                            graph.completeness, graph.layer_sizes, graph.pair_totals, graph.pair_edges)


def find_modules(
    graph: InteractionGraph,
    *,
    edges_kept: Mapping[str, int | None] | int | None = None,
    resolutions: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
    seed: int = 0,
) -> Modules:
    """Louvain modules of ``graph`` pruned to the strongest edges, resolution swept (module docstring).

    Args:
        graph: An interaction graph (unpruned; :func:`~wdecomp.graph.interaction_graph`).
        edges_kept: Edges to keep per layer pair: a count for every pair, or source hook point ->
            count (e.g. ``edge_ablation(...).edges_needed``; a pair not named, or ``None``, keeps
            all its edges); default: every edge.
        resolutions: Louvain resolutions ``gamma`` to sweep (``> 0``).
        seed: Seed of Louvain's node order.

    Returns:
        :class:`Modules` (``.best``, ``.plot(path)``, printable).
    """
    if not resolutions or any(not r > 0 for r in resolutions):
        raise ValueError(f"resolutions must be positive numbers, got {list(resolutions)}")
    kept = {k: v for k, v in edges_kept.items() if v is not None} if isinstance(edges_kept, Mapping) else edges_kept
    pruned = _prune(graph, kept).without_constant()
    und = nx.Graph()
    und.add_nodes_from(pruned.nx.nodes)
    for u, v, d in pruned.nx.edges(data=True):
        w = max(edge_weight(d), 0.0)
        if w > 0:
            und.add_edge(u, v, weight=w)
    parts = []
    for r in resolutions:
        if und.number_of_edges():
            found = nx.community.louvain_communities(und, weight="weight", resolution=r, seed=seed)
            q1 = float(nx.community.modularity(und, found, weight="weight"))
            qr = float(nx.community.modularity(und, found, weight="weight", resolution=r))
        else:
            found, q1, qr = [{n} for n in und.nodes], 0.0, 0.0
        mods = tuple(tuple(sorted(c)) for c in sorted(found, key=lambda c: (-len(c), sorted(c))))
        parts.append(ModulePartition(float(r), mods, q1, qr))
    return Modules(pruned, tuple(parts), dict(kept) if isinstance(kept, Mapping) else
                   (None if kept is None else {s: kept for s in graph.layers[:-1]}))
