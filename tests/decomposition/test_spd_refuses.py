"""Bad input to spd(): each refused with a typed wdecomp error that says what to do."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wdecomp.decomposition import spd
from wdecomp.errors import ArgumentError, ModelStateError, NonFiniteError, SelectionError

DT = torch.float64


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).to(DT).eval()


X = torch.rand(8, 3, dtype=DT)


class _SquaredLinear(nn.Module):
    """Has a 2-D weight, but computes (x W^T)^2: not linear."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2, 3, dtype=DT))
        self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.weight.T) ** 2


@pytest.mark.refuses("spd() on a module that is not linear (a ReLU)",
                     "SPD decomposes weight matrices of layers computing y = x W^T + b; name the Linear layers")
def test_refuses_module_without_weight() -> None:
    with pytest.raises(SelectionError, match="not linear-like"):
        spd(_net(), X, modules=["1"], C=2, steps=1)


@pytest.mark.refuses("spd() on a module with a 2-D weight that does not compute x W^T + b",
                     "its output is checked against x W^T + b on the first batch; only linear-like modules decompose")
def test_refuses_nonlinear_module_with_weight() -> None:
    net = nn.Sequential(_SquaredLinear()).eval()
    with pytest.raises(SelectionError, match="does not compute"):
        spd(net, X, modules=["0"], C=2, steps=1)


@pytest.mark.refuses("spd() with C < 1 subcomponents", "C must be an integer >= 1 (the paper uses 20 for TMS 5-2)")
def test_refuses_C_below_one() -> None:
    with pytest.raises(ArgumentError, match="C"):
        spd(_net(), X, modules=["0"], C=0, steps=1)


@pytest.mark.refuses("spd() on a model whose outputs contain NaN",
                     "SPD reconstructs the target's outputs; fix the model or the data first")
def test_refuses_nan_outputs() -> None:
    net = _net()
    with torch.no_grad():
        net[2].bias[0] = float("nan")
    with pytest.raises(NonFiniteError, match="NaN"):
        spd(net, X, modules=["0"], C=2, steps=1)


@pytest.mark.refuses("spd() on a model in train mode with dropout",
                     "random outputs cannot be reconstructed; call model.eval() first")
def test_refuses_train_mode_dropout() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)).to(DT).train()
    with pytest.raises(ModelStateError, match="eval"):
        spd(net, X, modules=["0"], C=2, steps=1)


@pytest.mark.refuses("spd() with an unknown setting", "the message lists the SPDConfig fields")
def test_refuses_unknown_setting() -> None:
    with pytest.raises(ArgumentError, match="unknown SPD settings"):
        spd(_net(), X, modules=["0"], C=2, stepz=1)


def test_eval_mode_dropout_is_accepted() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)).to(DT).eval()
    res = spd(net, X, modules=["0", "2"], C=3, steps=2, gate_hidden=2, progress=False)
    assert len(res.history["total"]) == 2
