"""The command line: exit codes, JSON output, and each subcommand on a tiny factory model."""

from __future__ import annotations

import json

import pytest
import torch
from _zoo import cli_classifier

from wdecomp.cli import build_parser, main

FACTORY = "_zoo:cli_classifier"


def test_help_everywhere(capsys):
    for cmd in ("spectrum", "rank", "basis", "graph", "ablate", "demo"):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args([cmd, "--help"])
        assert exc.value.code == 0
        assert "usage: wdecomp" in capsys.readouterr().out


def test_usage_error_exits_2():
    with pytest.raises(SystemExit) as exc:
        main(["spectrum"])  # --model missing
    assert exc.value.code == 2


def test_spectrum_json_matches_library(capsys):
    code = main(["spectrum", "--model", FACTORY, "--k", "3", "--json", "-"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    import wdecomp as wd

    model, data = cli_classifier()
    ref = wd.eigh(wd.hessian(wd.Objective(model.double(), data)), k=3)
    assert payload["eigenvalues"] == pytest.approx(ref.eigenvalues.tolist(), rel=1e-8)


def test_spectrum_block_size_and_ritz_residuals(capsys):
    code = main(["spectrum", "--model", FACTORY, "--k", "3", "--block-size", "1", "--no-verify", "--json", "-"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["block_size"] == 1 and payload["residual_kind"] == "ritz"
    import wdecomp as wd

    model, data = cli_classifier()
    ref = wd.eigh(wd.hessian(wd.Objective(model.double(), data)), k=3)
    assert payload["eigenvalues"] == pytest.approx(ref.eigenvalues.tolist(), rel=1e-8)
    assert max(payload["relative_residuals"]) <= 2e-10


def test_rank_by_module(capsys, tmp_path):
    out = tmp_path / "rank.json"
    assert main(["rank", "--model", FACTORY, "--operator", "ggn", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    # GGN of a softmax head: rank <= examples x (classes - 1) = 48, and <= p = 45
    assert 0 < payload["rank"] <= 45
    assert "rank" in capsys.readouterr().out


def test_graph_and_basis_and_ablate(tmp_path, capsys):
    graph = tmp_path / "g.graphml"
    assert main(["graph", "--model", FACTORY, "--layers", "hidden,act,out", "--out", str(graph),
                 "--plot", str(tmp_path / "g.png")]) == 0
    import networkx as nx

    g = nx.read_graphml(graph)
    assert g.number_of_nodes() > 0 and (tmp_path / "g.png").stat().st_size > 1000
    comps = tmp_path / "c.safetensors"
    assert main(["basis", "--model", FACTORY, "--layers", "hidden,act,out", "--out", str(comps)]) == 0
    assert comps.exists()
    assert main(["ablate", "--model", FACTORY, "--layers", "hidden,act,out", "--at", "act", "--basis", "pca",
                 "--levels", "0,2,4", "--json", str(tmp_path / "a.json")]) == 0
    levels = json.loads((tmp_path / "a.json").read_text())["levels"]
    assert [lv["n_ablated"] for lv in levels] == [0, 2, 4]
    assert levels[0]["delta_loss"] == 0.0


@pytest.mark.parametrize("variant", ["rib", "rib-uncentred", "wdecomp-centred"])
def test_basis_variant_reaches_the_library(tmp_path, variant):
    """``wdecomp basis --variant V`` saves the basis ``interaction_basis(..., variant=V)`` gives (to 1e-6:
    float32 model), so the named rib configurations are selectable from the command line too."""
    from wdecomp.bases import interaction_basis
    from wdecomp.components import load_basis

    comps = tmp_path / "c.safetensors"
    assert main(["basis", "--model", FACTORY, "--layers", "hidden,act,out", "--variant", variant,
                 "--out", str(comps)]) == 0
    model, data = cli_classifier()
    want = interaction_basis(model, data, ["hidden", "act", "out"], variant=variant)
    got = load_basis(comps)
    for point in ("hidden", "act"):
        assert got[point].eigenvalues.shape == want[point].eigenvalues.shape
        torch.testing.assert_close(got[point].eigenvalues, want[point].eigenvalues, rtol=1e-6, atol=1e-9)
    assert (got["hidden"].constant is None) == (variant != "rib")
    assert (got["hidden"].const_row is not None) == (variant == "rib-uncentred")


def test_bad_model_name_exits_1(capsys):
    assert main(["rank", "--model", "no_such_model"]) == 1
    err = capsys.readouterr().err
    assert "unknown model 'no_such_model'" in err and "built-in models" in err
    assert main(["rank", "--model", "nowhere.at_all:f"]) == 1
    assert "cannot load model factory" in capsys.readouterr().err


def test_bad_params_exit_1(capsys):
    assert main(["spectrum", "--model", FACTORY, "--params", "nothing.*", "--k", "2"]) == 1
    assert "matches no parameter" in capsys.readouterr().err
