"""Layered plots of interaction graphs (matplotlib, Agg; PNG, SVG, PDF).

Layers are columns, left to right in forward order; a column's nodes are spread evenly over the
height. Node area grows with importance (the square root of importance over the largest in its
layer, since eigenvalues of different layers live on different scales); edge width and opacity
grow with attribution (over the largest attribution of its layer pair, to the power ``gamma``).
Nodes are ordered by component index in the first column and, with ``order="barycenter"``, by
the attribution-weighted mean height of their inputs in later ones (one left-to-right sweep of the
barycentre heuristic of Sugiyama, Tagawa & Toda 1981), which untangles most crossings. Strong
edges are drawn on top. Labels are shown for columns of at most ``max_labels`` nodes.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from wdecomp.graph.graph import InteractionGraph

_FORMATS = (".png", ".svg", ".pdf")


def layered_layout(graph: InteractionGraph | nx.DiGraph, order: str = "barycenter") -> dict[str, tuple[float, float]]:
    """Positions ``node -> (x, y)``: ``x`` the layer index, ``y`` in ``[0, 1]`` (top is 1).

    Args:
        graph: The graph (nodes need ``layer_index`` and ``index``).
        order: ``"index"`` (component index, top to bottom) or ``"barycenter"``.
    """
    if order not in ("index", "barycenter"):
        raise ValueError(f"order must be 'index' or 'barycenter', not '{order}'")
    g = graph.nx if isinstance(graph, InteractionGraph) else graph
    columns: dict[int, list[str]] = defaultdict(list)
    for n, d in g.nodes(data=True):
        columns[int(d["layer_index"])].append(n)
    tallest = max((len(c) for c in columns.values()), default=1)
    step = 1.0 / max(tallest - 1, 1)
    pos: dict[str, tuple[float, float]] = {}
    for li in sorted(columns):
        nodes = sorted(columns[li], key=lambda n: g.nodes[n]["index"])
        if order == "barycenter" and pos:
            def key(n: str) -> tuple[float, int]:
                preds = [(pos[u][1], float(g.edges[u, n].get("attribution", 0.0))) for u in g.predecessors(n)
                         if u in pos]
                w = sum(a for _, a in preds)
                bary = sum(y * a for y, a in preds) / w if w > 0 else (
                    float(np.mean([y for y, _ in preds])) if preds else 0.5)
                return (-bary, g.nodes[n]["index"])

            nodes = sorted(nodes, key=key)
        top = 0.5 + step * (len(nodes) - 1) / 2
        for r, n in enumerate(nodes):
            pos[n] = (float(li), top - r * step if len(nodes) > 1 else 0.5)
    return pos


def plot_graph(
    graph: InteractionGraph,
    path: str | Path | None = None,
    *,
    order: str = "barycenter",
    max_labels: int = 40,
    node_size: float = 300.0,
    edge_width: float = 4.0,
    gamma: float = 0.5,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int = 150,
    cmap: str = "viridis",
) -> Any:
    """Draw ``graph`` with :func:`layered_layout`; write it to ``path`` (atomically) if given.

    Args:
        graph: The (pruned) interaction graph.
        path: ``.png``, ``.svg`` or ``.pdf`` file, or ``None`` to only return the figure.
        order: Node order in a column (:func:`layered_layout`).
        max_labels: Label the nodes of columns with at most this many nodes.
        node_size: Marker area (points^2) of the most important node of a layer (capped by the spacing
            of the tallest column).
        edge_width: Line width (points) of the strongest edge of a layer pair.
        gamma: Edge width and opacity grow as ``(attribution / max)^gamma``.
        title: Figure title (default: method and counts).
        figsize: Inches; default grows with the number of layers and the tallest column.
        dpi: Resolution of raster output.
        cmap: Colormap for the layers.

    Returns:
        The :class:`matplotlib.figure.Figure`.
    """
    from matplotlib import colormaps
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    g = graph.nx
    pos = layered_layout(graph, order)
    n_layers = max(len(graph.layers), 1)
    columns: dict[int, list[str]] = defaultdict(list)
    for n, d in g.nodes(data=True):
        columns[int(d["layer_index"])].append(n)
    tallest = max((len(c) for c in columns.values()), default=1)
    if figsize is None:
        figsize = (max(4.0, 2.4 * n_layers + 1.0), float(np.clip(0.2 * tallest + 1.5, 3.0, 40.0)))
    fig = Figure(figsize=figsize, dpi=dpi)
    ax = fig.add_subplot()
    ax.set_axis_off()

    # edges: per layer pair normalised, strongest on top
    pair_max: dict[int, float] = defaultdict(float)
    for u, _, a in g.edges(data="attribution"):
        pair_max[int(g.nodes[u]["layer_index"])] = max(pair_max[int(g.nodes[u]["layer_index"])], float(a))
    segs, widths, colors = [], [], []
    for u, v, a in sorted(g.edges(data="attribution"), key=lambda e: float(e[2])):
        top = pair_max[int(g.nodes[u]["layer_index"])]
        rel = (float(a) / top) ** gamma if top > 0 else 0.0
        segs.append([pos[u], pos[v]])
        widths.append(0.2 + edge_width * rel)
        colors.append((0.15, 0.2, 0.45, 0.08 + 0.82 * rel))
    if segs:
        ax.add_collection(LineCollection(segs, linewidths=widths, colors=colors, zorder=1))

    # nodes: area by importance relative to the layer's largest, capped so neighbours do not overlap
    spacing_pts = figsize[1] * 72 * 0.85 / 1.12 / max(tallest - 1, 1)
    node_size = min(node_size, (0.9 * spacing_pts) ** 2)
    layer_colors = colormaps[cmap](np.linspace(0.15, 0.85, n_layers))
    for li, nodes in columns.items():
        imp = np.array([max(float(g.nodes[n].get("importance", 1.0)), 0.0) for n in nodes])
        rel = np.sqrt(imp / imp.max()) if imp.max() > 0 else np.ones_like(imp)
        xy = np.array([pos[n] for n in nodes])
        ax.scatter(xy[:, 0], xy[:, 1], s=2 + node_size * rel, color=layer_colors[li % n_layers],
                   edgecolors="black", linewidths=0.4, zorder=2)
        if len(nodes) <= max_labels:
            fontsize = 7 if len(nodes) <= 20 else 5
            box = {"boxstyle": "round,pad=0.05", "fc": "white", "ec": "none", "alpha": 0.7}
            for n, (x, y) in zip(nodes, xy):
                ax.annotate(str(g.nodes[n].get("index", n)), (x, y), xytext=(6, 0), textcoords="offset points",
                            fontsize=fontsize, va="center", zorder=3, bbox=box)
    for li, name in enumerate(graph.layers):
        ax.text(li, 1.025, name, ha="center", va="bottom", fontsize=8, rotation=0 if len(name) < 14 else 15)
    ax.set_xlim(-0.4, n_layers - 0.6)
    ax.set_ylim(-0.04, 1.08)
    if title is None:
        title = f"{graph.method} interaction graph: {g.number_of_nodes()} nodes, {g.number_of_edges()} edges"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if path is not None:
        from wdecomp.graph.export import atomic_write

        path = Path(path)
        if path.suffix.lower() not in _FORMATS:
            raise ValueError(f"plot path must end in one of {_FORMATS}, got '{path.name}'")
        atomic_write(path, lambda p: fig.savefig(p, format=path.suffix[1:].lower(), dpi=dpi))
    return fig
