"""Save and load interaction graphs: GraphML, GEXF, node-link JSON (networkx), DOT (pydot).

Every writer gets a sanitised copy of the graph whose attributes are plain Python ``int``,
``float``, ``bool`` or ``str`` (numpy and torch scalars converted, ``None`` dropped, containers
as JSON text), so they read back with the same values and types: GraphML, GEXF and JSON keep
types themselves; DOT keeps text, which :func:`load_graph` parses back. Writes are atomic: the
file is written to a temporary file in the same folder and moved over the target with
:func:`os.replace`, so a reader never sees half a file.

Formats by suffix: ``.graphml``, ``.gexf``, ``.json`` (node-link, edges under ``"edges"``),
``.dot`` / ``.gv``. DOT needs the optional ``pydot`` package (``pip install wdecomp[dot]``).
Open GraphML or GEXF in Gephi or Cytoscape; render DOT with Graphviz.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from wdecomp.graph.graph import Completeness, InteractionGraph
from wdecomp.io import atomic_write

FORMATS = {".graphml": "graphml", ".gexf": "gexf", ".json": "json", ".dot": "dot", ".gv": "dot"}
_INT_KEYS = {"layer_index", "index"}
_FLOAT_KEYS = {"importance", "eigenvalue", "mean_square", "attribution"}
_STR_KEYS = {"layer", "label"}


def _plain(value: Any) -> Any:
    """A Python scalar for ``value`` (``None`` stays ``None``, to be dropped)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    try:
        import torch

        if isinstance(value, torch.Tensor) and value.numel() == 1:
            return value.item()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def _clean_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in attrs.items():
        v = _plain(v)
        if v is not None:
            out[str(k)] = v
    return out


def sanitized(graph: InteractionGraph | nx.DiGraph) -> nx.DiGraph:
    """A copy of the graph with plain-Python attributes and graph-level metadata, ready to write."""
    g = graph.nx if isinstance(graph, InteractionGraph) else graph
    out = nx.DiGraph()
    meta = graph.graph_attributes() if isinstance(graph, InteractionGraph) else {}
    out.graph.update(_clean_attrs({**g.graph, **meta}))
    out.add_nodes_from((str(n), _clean_attrs(d)) for n, d in g.nodes(data=True))
    out.add_edges_from((str(u), str(v), _clean_attrs(d)) for u, v, d in g.edges(data=True))
    return out


def _format_of(path: Path, format: str | None) -> str:
    if format is not None:
        fmt = format.lower().lstrip(".")
        fmt = {"gv": "dot", "node-link": "json", "node_link": "json"}.get(fmt, fmt)
        if fmt not in set(FORMATS.values()):
            raise ValueError(f"unknown graph format '{format}'; use one of {sorted(set(FORMATS.values()))}")
        return fmt
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the graph format of '{path.name}'; use a suffix in {sorted(FORMATS)} "
                         f"or pass format=")
    return fmt


def _pydot() -> Any:
    try:
        import pydot
    except ImportError as exc:
        raise ImportError("writing or reading DOT needs the optional 'pydot' package: "
                          "pip install 'wdecomp[dot]' (or pip install pydot)") from exc
    return pydot


def _node_link_data(g: nx.DiGraph) -> dict[str, Any]:
    try:
        return nx.node_link_data(g, edges="edges")
    except TypeError:  # networkx < 3.4
        return nx.node_link_data(g, link="edges")


def _node_link_graph(data: dict[str, Any]) -> nx.DiGraph:
    try:
        return nx.node_link_graph(data, directed=True, multigraph=False, edges="edges")
    except TypeError:  # networkx < 3.4
        return nx.node_link_graph(data, directed=True, multigraph=False, link="edges")


def save_graph(graph: InteractionGraph | nx.DiGraph, path: str | Path, format: str | None = None) -> Path:
    """Write ``graph`` to ``path`` atomically; format from the suffix unless ``format`` is given.

    Args:
        graph: An :class:`InteractionGraph` (its metadata is written as graph attributes, where
            the format has them) or a plain ``networkx.DiGraph``.
        path: Target file.
        format: ``"graphml"``, ``"gexf"``, ``"json"`` (node-link) or ``"dot"``.

    Returns:
        The path written.

    Raises:
        ImportError: DOT requested without ``pydot`` installed.
    """
    path = Path(path)
    fmt = _format_of(path, format)
    g = sanitized(graph)
    if fmt == "graphml":
        return atomic_write(path, lambda p: nx.write_graphml(g, p))
    if fmt == "gexf":
        return atomic_write(path, lambda p: nx.write_gexf(g, p))
    if fmt == "json":
        text = json.dumps(_node_link_data(g), indent=1)
        return atomic_write(path, lambda p: Path(p).write_text(text, encoding="utf-8"))
    _pydot()
    g.graph.clear()  # DOT graph attributes are Graphviz settings; metadata stays in the node/edge data
    return atomic_write(path, lambda p: nx.nx_pydot.write_dot(g, p))


def _parse_dot_value(key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].replace('\\"', '"')
    if key in _STR_KEYS:
        return value
    if key in _INT_KEYS:
        return int(value)
    if key in _FLOAT_KEYS:
        return float(value)
    if value in ("True", "False"):
        return value == "True"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def read_nx(path: str | Path, format: str | None = None) -> nx.DiGraph:
    """Read a file written by :func:`save_graph` back into a plain ``networkx.DiGraph``.

    DOT values are parsed back from text; GEXF's own edge ``id`` attribute is dropped.
    """
    path = Path(path)
    fmt = _format_of(path, format)
    if fmt == "graphml":
        g = nx.read_graphml(path)
    elif fmt == "gexf":
        g = nx.read_gexf(path)
        for _, _, d in g.edges(data=True):
            d.pop("id", None)
        for key in ("mode", "node_default", "edge_default"):
            g.graph.pop(key, None)
    elif fmt == "json":
        g = _node_link_graph(json.loads(path.read_text(encoding="utf-8")))
    else:
        _pydot()
        raw = nx.nx_pydot.read_dot(path)
        g = nx.DiGraph()
        g.add_nodes_from((str(n), {k: _parse_dot_value(k, v) for k, v in d.items()})
                         for n, d in raw.nodes(data=True) if str(n) not in ("node", "edge", "graph", "\\n"))
        g.add_edges_from((str(u), str(v), {k: _parse_dot_value(k, v) for k, v in d.items()})
                         for u, v, d in raw.edges(data=True))
    for key in ("node_default", "edge_default"):
        g.graph.pop(key, None)
    return nx.DiGraph(g)


def load_graph(path: str | Path, format: str | None = None) -> InteractionGraph:
    """Read a saved graph back into an :class:`InteractionGraph`.

    Metadata (layers, unpruned totals, build info) comes from the graph attributes where the format
    keeps them (GraphML, JSON); otherwise (GEXF, DOT) layers are recovered from the nodes'
    ``layer``/``layer_index`` and the file's graph is taken as the unpruned reference.
    """
    g = read_nx(path, format)
    meta = {k: g.graph.pop(k) for k in list(g.graph)}
    layer_of: dict[int, str] = {int(d["layer_index"]): str(d["layer"]) for _, d in g.nodes(data=True)}
    if "layers" in meta:
        layers = tuple(json.loads(meta["layers"]))
    else:
        layers = tuple(layer_of.get(i, f"layer{i}") for i in range(max(layer_of, default=-1) + 1))
    if "layer_sizes" not in meta:
        return InteractionGraph.from_full(g, layers)
    info = json.loads(meta.get("info", "{}"))
    completeness = tuple(Completeness(**c) for c in json.loads(meta.get("completeness", "[]")))
    return InteractionGraph(g, layers, info, completeness, tuple(json.loads(meta["layer_sizes"])),
                            tuple(json.loads(meta["pair_totals"])), tuple(json.loads(meta["pair_edges"])))
