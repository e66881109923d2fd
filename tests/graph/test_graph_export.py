"""Export round trips (GraphML, GEXF, node-link JSON, DOT) and plots of interaction graphs."""

from __future__ import annotations

import builtins
import json
import os

import matplotlib.image as mpimg
import networkx as nx
import numpy as np
import pytest
import torch

from wdecomp.graph import InteractionGraph, interaction_graph, load_graph, read_nx, save_graph
from wdecomp.graph.plot import layered_layout


def built_graph() -> InteractionGraph:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3), torch.nn.Tanh(),
                              torch.nn.Linear(3, 2)).double()
    from wdecomp.bases import neuron_basis

    basis = neuron_basis(net, {"1": 4, "3": 3, "4": 2})
    g = interaction_graph(net, torch.randn(6, 3, dtype=torch.float64), basis, method="integrated_gradients", steps=3)
    # numpy / torch scalars in attributes must be written as plain numbers
    g.nx.nodes["L0_0"]["np_attr"] = np.float32(0.5)
    g.nx.nodes["L0_1"]["torch_attr"] = torch.tensor(3)
    return g


def plain(g: nx.DiGraph) -> tuple[set, dict, dict]:
    def conv(d: dict) -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(v, torch.Tensor):
                v = v.item()
            elif isinstance(v, np.generic):
                v = v.item()
            out[k] = v
        return out

    edges = {(u, v): conv(d) for u, v, d in g.edges(data=True)}
    return set(g.nodes), {n: conv(d) for n, d in g.nodes(data=True)}, edges


FORMATS = ["graphml", "gexf", "json", "dot"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip(tmp_path, fmt):
    if fmt == "dot":
        pytest.importorskip("pydot")
    g = built_graph()
    pruned = g.prune(fraction=0.9)
    path = save_graph(pruned, tmp_path / f"graph.{fmt}")
    assert path.exists() and path.stat().st_size > 200
    assert [p.name for p in tmp_path.iterdir()] == [f"graph.{fmt}"]  # no temporary files left behind
    # read back with networkx itself (DOT: text values parsed back by read_nx)
    if fmt == "graphml":
        back = nx.read_graphml(path)
    elif fmt == "gexf":
        back = nx.read_gexf(path)
        for _, _, d in back.edges(data=True):
            d.pop("id")
    elif fmt == "json":
        back = nx.node_link_graph(json.loads(path.read_text()), edges="edges")
    else:
        back = read_nx(path)
    nodes, nattr, eattr = plain(pruned.nx)
    b_nodes, b_nattr, b_eattr = plain(back)
    assert b_nodes == nodes
    assert b_nattr == nattr  # same values *and* types (int stays int, float exact)
    assert b_eattr == eattr
    for n, d in b_nattr.items():
        assert type(d["index"]) is int and type(d["importance"]) is float and type(d["layer"]) is str, n
    # and back into an InteractionGraph
    h = load_graph(path)
    assert h.layers == pruned.layers
    assert set(h.nx.edges) == set(pruned.nx.edges)
    if fmt in ("graphml", "json"):  # formats that keep graph-level metadata
        assert h.pair_totals == pruned.pair_totals and h.layer_sizes == pruned.layer_sizes
        assert h.info["method"] == "integrated_gradients" and h.completeness == pruned.completeness
        assert h.summary().attribution_kept == pytest.approx(pruned.summary().attribution_kept, rel=1e-15)


def test_save_errors_and_atomicity(tmp_path, monkeypatch):
    g = built_graph()
    with pytest.raises(ValueError, match="suffix"):
        save_graph(g, tmp_path / "graph.xyz")
    assert save_graph(g, tmp_path / "g.out", format="json").exists()
    target = tmp_path / "keep.graphml"
    target.write_text("old")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(nx, "write_graphml", boom)
    with pytest.raises(RuntimeError):
        save_graph(g, target)
    assert target.read_text() == "old"  # the old file is untouched, no temporary left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.out", "keep.graphml"]


def test_dot_without_pydot_is_a_clear_error(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_pydot(name, *args, **kwargs):
        if name == "pydot" or name.startswith("pydot."):
            raise ImportError("No module named 'pydot'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pydot)
    with pytest.raises(ImportError, match=r"wdecomp\[dot\]"):
        save_graph(built_graph(), tmp_path / "g.dot")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_plot_written(tmp_path, suffix):
    g = built_graph().prune(threshold=0.0)
    path = tmp_path / f"graph.{suffix}"
    fig = g.plot(path, figsize=(6, 4), dpi=100)
    assert path.stat().st_size > 5_000
    if suffix == "png":
        img = mpimg.imread(path)
        assert img.shape[:2] == (400, 600)
        assert img[..., :3].std() > 0.05  # not a blank canvas
    else:
        text = path.read_text()
        assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert fig.axes


def test_plot_hundreds_of_nodes(tmp_path):
    rng = np.random.default_rng(0)
    sizes = [60, 120, 80, 40]
    mats = [rng.exponential(size=(b, a)) * (rng.random((b, a)) < 0.05) for a, b in zip(sizes[:-1], sizes[1:])]
    g = InteractionGraph.from_attributions(["embed", "mlp.0", "mlp.1", "unembed"], mats,
                                           eigenvalues=[np.sort(rng.random(k))[::-1] for k in sizes])
    p = g.prune(fraction=0.8)
    path = p.plot(tmp_path / "big.png", dpi=60)
    path = tmp_path / "big.png"
    img = mpimg.imread(path)
    assert img.shape[0] > 600 and os.path.getsize(path) > 20_000  # height grows with the tallest column
    pos = layered_layout(p)
    assert {x for x, _ in pos.values()} <= {0.0, 1.0, 2.0, 3.0}
    assert all(0.0 <= y <= 1.0 for _, y in pos.values())
