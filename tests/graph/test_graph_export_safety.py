"""Exports never write a file that does not read back, never replace a good file with one, and
foreign graphs are refused with a wdecomp error (issue 13, item 9 and tracebacks)."""

from __future__ import annotations

import math
import os

import networkx as nx
import pytest
import torch

from wdecomp.bases import neuron_basis
from wdecomp.errors import DataError, NonFiniteError, OutputPathError
from wdecomp.graph import InteractionGraph, interaction_graph, layered_layout, load_graph, read_nx, save_graph


def graph(layer0: str = "0") -> InteractionGraph:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    return interaction_graph(net, torch.randn(5, 3, dtype=torch.float64), neuron_basis(net, {"1": 4, "2": 2}))


@pytest.mark.parametrize("fmt", ["graphml", "gexf", "json", "dot"])
def test_weight_in_every_format(tmp_path, fmt):
    if fmt == "dot":
        pytest.importorskip("pydot")
    g = graph()
    back = read_nx(save_graph(g, tmp_path / f"g.{fmt}"))
    for u, v, d in g.nx.edges(data=True):
        assert back.edges[u, v]["weight"] == pytest.approx(d["weight"], rel=1e-12)
        assert back.edges[u, v]["attribution"] == pytest.approx(d["weight"], rel=1e-12)


@pytest.mark.refuses("a control character in a node name or label, saved as GraphML/GEXF",
                     "XML cannot hold it; the error names the node and suggests .json; an existing file is kept")
@pytest.mark.parametrize("fmt", ["graphml", "gexf"])
def test_control_character_refused_and_good_file_kept(tmp_path, fmt):
    path = tmp_path / f"g.{fmt}"
    save_graph(graph(), path)
    good = path.read_bytes()
    bad = graph()
    bad.nx.nodes["L0_0"]["label"] = "bad\x01name"
    with pytest.raises(DataError, match="control character"):
        save_graph(bad, path)
    assert path.read_bytes() == good and sorted(os.listdir(tmp_path)) == [path.name]
    nx.read_graphml(path) if fmt == "graphml" else nx.read_gexf(path)


@pytest.mark.refuses("NaN or infinity in a graph saved as JSON", "JSON has no NaN; the error names the node/edge "
                     "and attribute and suggests GraphML")
def test_nan_refused_in_json(tmp_path):
    g = graph()
    g.nx.nodes["L1_0"]["importance"] = math.inf
    with pytest.raises(NonFiniteError, match="L1_0"):
        save_graph(g, tmp_path / "g.json")
    assert not (tmp_path / "g.json").exists()


def test_dot_newlines_and_backslashes_round_trip(tmp_path):
    pytest.importorskip("pydot")
    g = graph()
    g.nx.nodes["L0_0"]["label"] = "two\nlines"
    g.nx.nodes["L0_1"]["label"] = "a literal \\n and a backslash \\"
    back = read_nx(save_graph(g, tmp_path / "g.dot"))
    assert back.nodes["L0_0"]["label"] == "two\nlines"
    assert back.nodes["L0_1"]["label"] == "a literal \\n and a backslash \\"


@pytest.mark.refuses("prune(threshold=nan)", "a NaN threshold would keep no edge silently; pass a number")
def test_prune_threshold_nan_refused():
    with pytest.raises(ValueError, match="threshold"):
        graph().prune(threshold=float("nan"))


@pytest.mark.refuses("a networkx graph not made by wdecomp (no layer_index)", "names the node and the missing "
                     "attribute instead of a KeyError")
def test_foreign_graph_refused(tmp_path):
    foreign = nx.DiGraph()
    foreign.add_edge("a", "b", weight=1.0)
    with pytest.raises(DataError, match="layer_index"):
        InteractionGraph.from_full(foreign, ["x", "y"])
    with pytest.raises(DataError, match="not made by wdecomp"):
        layered_layout(foreign)
    nx.write_graphml(foreign, tmp_path / "foreign.graphml")
    with pytest.raises(DataError, match="not made by wdecomp"):
        load_graph(tmp_path / "foreign.graphml")


@pytest.mark.refuses("saving a graph into a folder that cannot be written", "OutputPathError naming the path "
                     "asked for, not a hidden temporary file")
def test_unwritable_path_names_the_target(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    target = blocker / "sub" / "g.graphml"  # a file where a folder should be
    with pytest.raises(OutputPathError) as info:
        save_graph(graph(), target)
    assert str(target) in str(info.value) and ".tmp" not in str(info.value)
