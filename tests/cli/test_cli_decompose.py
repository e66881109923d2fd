"""``wdecomp decompose --method spd``: a tiny run on a factory model, its files and JSON, and refusals."""

from __future__ import annotations

import json

import torch
from torch import nn

from wdecomp.cli import main
from wdecomp.decomposition import load_spd


def tiny_factory():
    """(model, data): a 3-6-3 ReLU MLP with class labels (so SPD uses the KL divergence)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 3))
    x = torch.randn(24, 3)
    return model, [(x, torch.randint(0, 3, (24,)))]


FACTORY = f"{__name__}:tiny_factory"


def test_decompose_spd_writes_result_and_json(tmp_path, capsys):
    out = tmp_path / "spd.safetensors"
    code = main(["decompose", "--method", "spd", "--model", FACTORY, "--C", "4", "--steps", "3", "--out", str(out),
                 "--json", "-"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["layers"] == ["0", "2"] and payload["loss"] == "kl" and payload["config"]["C"] == 4
    assert len(payload["norms"]["0"]) == 4
    model, _ = tiny_factory()
    res = load_spd(out, model)
    assert res.info["steps"] == 3 and res.config.C == 4


def test_decompose_refuses_nonlinear_layer(capsys):
    code = main(["decompose", "--method", "spd", "--model", FACTORY, "--layers", "1", "--steps", "1"])
    assert code == 1
    assert "not linear-like" in capsys.readouterr().err
