"""Property: a saved graph file damaged anywhere loads into a well-formed graph or raises a
WdecompError, never another exception (issue 13: fuzz over malformed graph files)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _fuzz import damage_json
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wdecomp.bases import neuron_basis
from wdecomp.errors import WdecompError
from wdecomp.graph import InteractionGraph, interaction_graph, load_graph, save_graph
from wdecomp.graph.export import check_wdecomp_graph


def _well_formed(g: InteractionGraph) -> None:
    check_wdecomp_graph(g.nx, len(g.layers))
    for _, _, d in g.nx.edges(data=True):
        w = d.get("weight")
        assert w is None or (isinstance(w, (int, float)) and math.isfinite(w)), d


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("graphs")
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
    g = interaction_graph(net, torch.randn(6, 3, dtype=torch.float64), neuron_basis(net, {"1": 4, "2": 2}))
    save_graph(g, folder / "g.json")
    save_graph(g, folder / "g.graphml")
    return folder


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_malformed_graph_files(saved, tmp_path, data):
    fmt = data.draw(st.sampled_from(["json", "graphml"]))
    text = (saved / f"g.{fmt}").read_text(encoding="utf-8")
    what = data.draw(st.sampled_from(["header", "truncate", "flip"] if fmt == "json"
                                      else ["truncate", "flip", "replace_text"]))
    if what == "header":
        doc = json.loads(text)
        damage_json(doc, data)
        text = json.dumps(doc)
    elif what == "truncate":
        text = text[: data.draw(st.integers(0, len(text) - 1))]
    elif what == "flip":
        i = data.draw(st.integers(0, len(text) - 1))
        text = text[:i] + data.draw(st.sampled_from(["<", ">", "\"", "{", "}", "x", "9", "-", "\x01"])) + text[i + 1:]
    else:  # a value in the XML replaced by a random word
        i = data.draw(st.integers(0, len(text) - 1))
        j = text.find("<", i)
        text = text[:i] + data.draw(st.text(max_size=6)) + (text[j:] if j >= 0 else "")
    path = tmp_path / f"fuzz.{fmt}"
    path.write_text(text, encoding="utf-8")
    try:
        g = load_graph(path)
    except WdecompError:
        return
    _well_formed(g)
