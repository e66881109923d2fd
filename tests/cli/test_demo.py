"""The README's first command, in its quick mode: the whole pipeline and the report it writes."""

from __future__ import annotations

import json
import os
import re

import networkx as nx
import pytest

from wdecomp.cli import main
from wdecomp.demo import N_STAGES


@pytest.mark.slow
def test_demo_quick_writes_a_complete_report(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "headline numbers" in printed
    # not a terminal: one line per stage with its time, and the total so far
    stage = re.compile(r"wdecomp demo: .+: [\d.]+ s \(CPU [\d.]+ s\)")
    stage_lines = [ln for ln in captured.err.splitlines() if stage.match(ln)]
    assert len(stage_lines) == N_STAGES, captured.err
    assert "$WDECOMP_CACHE" in captured.err
    for name in ("report.md", "results.json", "graph.graphml", "graph.json", "graph.png", "hessian_density.png",
                 "ablation.png", "components.safetensors", "scaling_fit.png"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert len(results["timings"]) == N_STAGES and len(results["cpu_timings"]) == N_STAGES
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
    assert nx.is_directed_acyclic_graph(graph)
    report = (out / "report.md").read_text()
    assert "compute-equivalent" in report.lower() and "![interaction graph](graph.png)" in report
    # only fields that apply: an acyclic graph has no "strongly connected" count, no margin reads "inf"
    assert "strongly connected" not in report
    assert not re.search(r"\binf\b", report.split("## Timings")[0])
    fit = results["scaling_fit"]
    if fit["diagnostics"]:  # a degenerate fit is flagged first in the headline, never silently used
        assert printed.split("headline numbers", 1)[1].lstrip("-\n ").startswith("WARNING")


def test_demo_train_flag_turns_the_shipped_models_off(tmp_path, monkeypatch):
    """``wdecomp demo --train`` runs the demo with ``WDECOMP_SHIPPED=0`` (exit 0); without it they stay on."""
    import wdecomp.cli.demo as cli_demo

    seen = []

    def fake_run_demo(out, quick, progress):
        seen.append(os.environ.get("WDECOMP_SHIPPED", "1"))

        class R:
            folder = out

            def summary(self):
                return "ok"

        return R()

    monkeypatch.setattr(cli_demo, "run_demo", fake_run_demo)
    monkeypatch.delenv("WDECOMP_SHIPPED", raising=False)
    assert main(["demo", "--out", str(tmp_path / "a")]) == 0
    assert main(["demo", "--train", "--out", str(tmp_path / "b")]) == 0
    assert seen == ["1", "0"]
    monkeypatch.delenv("WDECOMP_SHIPPED", raising=False)  # the flag set it for the rest of the process
