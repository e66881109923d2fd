"""The graph example runs end to end in fast mode and writes every promised file."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import networkx as nx
from _examples import load_example


def test_export_component_graph_fast(tmp_path, capsys):
    result = load_example("export_component_graph").main(["--fast", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "interaction graph (integrated_gradients)" in out and "completeness" in out

    summary = json.loads((tmp_path / "summary.json").read_text())
    s = summary["summary"]
    assert s == result["summary"]
    assert s["attribution_kept"] >= 0.9 - 1e-9 and 0 < s["edges"] <= s["edges_total"]
    assert all(p["attribution_kept"] >= 0.9 - 1e-9 for p in s["pairs"])
    assert all(c["relative_error"] < 1e-6 for c in s["completeness"])  # 8 Gauss-Legendre nodes, tanh MLP

    g = nx.read_graphml(tmp_path / "graph.graphml")
    assert g.number_of_edges() == s["edges"] and g.number_of_nodes() == s["nodes"]
    assert nx.read_gexf(tmp_path / "graph.gexf").number_of_edges() == s["edges"]
    assert len(json.loads((tmp_path / "graph.json").read_text())["edges"]) == s["edges"]
    img = mpimg.imread(tmp_path / "graph.png")
    assert img.ndim == 3 and img.shape[0] > 300 and (tmp_path / "graph.png").stat().st_size > 10_000
    assert (tmp_path / "graph.svg").stat().st_size > 10_000
