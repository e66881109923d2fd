"""The README's first command, in its quick mode: the whole pipeline and the report it writes."""

from __future__ import annotations

import json

import networkx as nx
import pytest

from wdecomp.cli import main


@pytest.mark.slow
def test_demo_quick_writes_a_complete_report(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "headline numbers" in printed
    for name in ("report.md", "results.json", "graph.graphml", "graph.json", "graph.png", "hessian_density.png",
                 "ablation.png", "components.safetensors"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    mod = results["modular_addition"]
    assert mod["metrics"]["test_accuracy"] == 1.0
    assert max(mod["eigen"]["relative_residuals"]) < 1e-5
    conc = results["fourier_concentration"]
    assert conc["lib"] > conc["neuron"] + 0.3  # LIB directions pick single frequencies; neurons do not
    levels = results["ablation"]["levels"]
    assert levels[0]["n_ablated"] == 0 and levels[0]["compute_equivalent"] == 1.0
    assert levels[-1]["loss"] > levels[0]["loss"]
    assert levels[-1]["compute_equivalent"] < 1.0
    graph = nx.read_graphml(out / "graph.graphml")
    assert graph.number_of_edges() > 0
    report = (out / "report.md").read_text()
    assert "compute-equivalent" in report.lower() and "![interaction graph](graph.png)" in report
