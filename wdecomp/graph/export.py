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
import math
import re
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import torch

from wdecomp.errors import DataError, NonFiniteError
from wdecomp.io import atomic_write

FORMATS = {".graphml": "graphml", ".gexf": "gexf", ".json": "json", ".dot": "dot", ".gv": "dot"}
_INT_KEYS = {"layer_index", "index"}
_FLOAT_KEYS = {"importance", "eigenvalue", "mean_square", "attribution", "weight"}
_BOOL_KEYS = {"constant"}
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_STR_KEYS = {"layer", "label"}


def check_wdecomp_graph(g: nx.DiGraph, n_layers: int | None = None) -> None:
    """Raise :class:`DataError` unless every node has the integer ``layer_index`` and ``index`` a
    wdecomp interaction graph carries (in range when ``n_layers`` is given)."""
    for n, d in g.nodes(data=True):
        for key in ("layer_index", "index"):
            v = d.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise DataError(
                    f"node {n!r} has no integer '{key}' (got {v!r}): this graph was not made by wdecomp's "
                    f"interaction_graph; wrap only graphs whose nodes carry 'layer', 'layer_index' and 'index'")
        if n_layers is not None and not 0 <= int(d["layer_index"]) < n_layers:
            raise DataError(f"node {n!r} has layer_index {d['layer_index']} outside the {n_layers} layers")


def _plain(value: Any) -> Any:
    """A Python scalar for ``value`` (``None`` stays ``None``, to be dropped)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
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


def sanitized(graph: Any, meta: dict[str, Any] | None = None) -> nx.DiGraph:
    """A copy of the graph (a ``networkx.DiGraph`` or an object with ``.nx`` and
    ``.graph_attributes()``) with plain-Python attributes and graph-level metadata, ready to write."""
    g = graph.nx if hasattr(graph, "graph_attributes") else graph
    if meta is None and hasattr(graph, "graph_attributes"):
        meta = graph.graph_attributes()
    out = nx.DiGraph()
    out.graph.update(_clean_attrs({**g.graph, **(meta or {})}))
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


def _values(g: nx.DiGraph) -> Any:
    """``(where, key, value)`` for every attribute of the graph, its nodes and edges, and node ids."""
    for k, v in g.graph.items():
        yield "the graph", k, v
    for n, d in g.nodes(data=True):
        yield f"node {n!r}", "id", n
        for k, v in d.items():
            yield f"node {n!r}", k, v
    for u, v_, d in g.edges(data=True):
        for k, v in d.items():
            yield f"edge {u!r} -> {v_!r}", k, v


def _check_xml(g: nx.DiGraph, fmt: str) -> None:
    for where, key, value in _values(g):
        for text in (str(key), value if isinstance(value, str) else ""):
            if _XML_FORBIDDEN.search(text):
                raise DataError(f"{where}: '{key}' holds a control character ({text!r}), which {fmt.upper()} (XML) "
                                f"cannot store; rename it, or save as .json")


def _check_finite(g: nx.DiGraph) -> None:
    for where, key, value in _values(g):
        if isinstance(value, float) and not math.isfinite(value):
            raise NonFiniteError(f"{where}: '{key}' is {value}, which JSON cannot store; fix or drop the value, or "
                                 f"save as .graphml")


def _escape_dot(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    return value


def _unescape_dot(text: str) -> str:
    out, i = [], 0
    table = {"n": "\n", "r": "\r", "\\": "\\", '"': '"'}
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in table:
            out.append(table[text[i + 1]])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def save_graph(graph: Any, path: str | Path, format: str | None = None, *,
               meta: dict[str, Any] | None = None) -> Path:
    """Write ``graph`` to ``path`` atomically; format from the suffix unless ``format`` is given.

    The file is checked before it replaces anything at ``path``: GraphML and GEXF refuse control
    characters (XML cannot hold them) and are parsed back from the temporary file; JSON refuses
    NaN and infinities (not JSON); DOT escapes newlines and backslashes so they read back as
    written. Edges carry ``weight`` (and ``attribution``) in every format.

    Args:
        graph: An :class:`~wdecomp.graph.graph.InteractionGraph` (its metadata is written as graph
            attributes, where the format has them) or a plain ``networkx.DiGraph``.
        path: Target file.
        format: ``"graphml"``, ``"gexf"``, ``"json"`` (node-link) or ``"dot"``.
        meta: Graph-level metadata to write (default: ``graph.graph_attributes()`` if it has one).

    Returns:
        The path written.

    Raises:
        DataError: A control character where the format cannot hold one.
        NonFiniteError: NaN or infinite values for JSON.
        OutputPathError: ``path`` cannot be written (the message names ``path``).
        ImportError: DOT requested without ``pydot`` installed.
    """
    path = Path(path)
    fmt = _format_of(path, format)
    g = sanitized(graph, meta)
    if fmt in ("graphml", "gexf"):
        _check_xml(g, fmt)
        write, read = (nx.write_graphml, nx.read_graphml) if fmt == "graphml" else (nx.write_gexf, nx.read_gexf)

        def checked(p: str) -> None:
            write(g, p)
            read(p)  # never move a file that does not parse into place

        return atomic_write(path, checked)
    if fmt == "json":
        _check_finite(g)
        text = json.dumps(_node_link_data(g), indent=1, allow_nan=False)
        return atomic_write(path, lambda p: Path(p).write_text(text, encoding="utf-8"))
    _pydot()
    g.graph.clear()  # DOT graph attributes are Graphviz settings; metadata stays in the node/edge data
    for _, d in g.nodes(data=True):
        d.update({k: _escape_dot(v) for k, v in d.items()})
    for _, _, d in g.edges(data=True):
        d.update({k: _escape_dot(v) for k, v in d.items()})
    return atomic_write(path, lambda p: nx.nx_pydot.write_dot(g, p))


def _parse_dot_value(key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = _unescape_dot(value[1:-1])
    if key in _STR_KEYS:
        return value
    if key in _BOOL_KEYS and value in ("True", "False"):
        return value == "True"
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
