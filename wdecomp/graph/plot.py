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

import numpy as np

from wdecomp.graph.export import check_wdecomp_graph
from wdecomp.io import atomic_write

_FORMATS = (".png", ".svg", ".pdf")


def _weight(d: dict[str, Any]) -> float:
    return float(d.get("weight", d.get("attribution", 0.0)))


def layered_layout(graph: Any, order: str = "barycenter") -> dict[str, tuple[float, float]]:
    """Positions ``node -> (x, y)``: ``x`` the layer index, ``y`` in ``[0, 1]`` (top is 1).

    Args:
        graph: An :class:`~wdecomp.graph.graph.InteractionGraph` or a ``networkx.DiGraph`` (nodes
            need ``layer_index`` and ``index``).
        order: ``"index"`` (component index, top to bottom) or ``"barycenter"``.
    """
    if order not in ("index", "barycenter"):
        raise ValueError(f"order must be 'index' or 'barycenter', not '{order}'")
    g = graph.nx if hasattr(graph, "nx") else graph
    check_wdecomp_graph(g)
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
                preds = [(pos[u][1], _weight(g.edges[u, n])) for u in g.predecessors(n)
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
    graph: Any,
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
    show_constant: bool = True,
    groups: list[list[str]] | None = None,
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
        cmap: Colormap for the layers (or for ``groups``).
        show_constant: Draw constant nodes (squares) and their edges (dashed); ``False`` hides them.
        groups: Node-id groups (modules, :func:`~wdecomp.graph.modules.find_modules`) drawn in one
            colour each instead of one colour per layer; nodes in no group are grey.

    Returns:
        The :class:`matplotlib.figure.Figure`.
    """
    from matplotlib import colormaps
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    if not show_constant and hasattr(graph, "without_constant"):
        graph = graph.without_constant()
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
    for u, _, d in g.edges(data=True):
        li = int(g.nodes[u]["layer_index"])
        pair_max[li] = max(pair_max[li], _weight(d))
    segs, widths, colors, styles = [], [], [], []
    for u, v, d in sorted(g.edges(data=True), key=lambda e: _weight(e[2])):
        top = pair_max[int(g.nodes[u]["layer_index"])]
        rel = (max(_weight(d), 0.0) / top) ** gamma if top > 0 else 0.0
        segs.append([pos[u], pos[v]])
        widths.append(0.2 + edge_width * rel)
        colors.append((0.15, 0.2, 0.45, 0.08 + 0.82 * rel))
        styles.append("dashed" if g.nodes[u].get("constant") or g.nodes[v].get("constant") else "solid")
    if segs:
        ax.add_collection(LineCollection(segs, linewidths=widths, colors=colors, linestyles=styles, zorder=1))

    # nodes: area by importance relative to the layer's largest, capped so neighbours do not overlap
    spacing_pts = figsize[1] * 72 * 0.85 / 1.12 / max(tallest - 1, 1)
    node_size = min(node_size, (0.9 * spacing_pts) ** 2)
    layer_colors = colormaps[cmap](np.linspace(0.15, 0.85, n_layers))
    group_of = {n: gi for gi, grp in enumerate(groups or []) for n in grp}
    group_colors = colormaps[cmap](np.linspace(0.0, 1.0, max(len(groups or []), 1)))
    for li, nodes in columns.items():
        imp = np.array([max(float(g.nodes[n].get("importance", 1.0)), 0.0) for n in nodes])
        rel = np.sqrt(imp / imp.max()) if imp.max() > 0 else np.ones_like(imp)
        xy = np.array([pos[n] for n in nodes])
        if groups is None:
            colour = [layer_colors[li % n_layers]] * len(nodes)
        else:
            colour = [group_colors[group_of[n]] if n in group_of else (0.75, 0.75, 0.75, 1.0) for n in nodes]
        marker = np.array([bool(g.nodes[n].get("constant")) for n in nodes])
        for is_const, shape in ((False, "o"), (True, "s")):
            sel = marker == is_const
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], s=2 + node_size * rel[sel], color=np.array(colour)[sel],
                           marker=shape, edgecolors="black", linewidths=0.4, zorder=2)
        if len(nodes) <= max_labels:
            fontsize = 7 if len(nodes) <= 20 else 5
            box = {"boxstyle": "round,pad=0.05", "fc": "white", "ec": "none", "alpha": 0.7}
            for n, (x, y) in zip(nodes, xy):
                text = "const" if g.nodes[n].get("constant") else str(g.nodes[n].get("index", n))
                ax.annotate(text, (x, y), xytext=(6, 0), textcoords="offset points",
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
        path = Path(path)
        if path.suffix.lower() not in _FORMATS:
            raise ValueError(f"plot path must end in one of {_FORMATS}, got '{path.name}'")
        atomic_write(path, lambda p: fig.savefig(p, format=path.suffix[1:].lower(), dpi=dpi))
    return fig
