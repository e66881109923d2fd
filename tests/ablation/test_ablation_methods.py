"""Ablation methods are one registry: a new method is one registered function, and it acts on
activation and weight groups alike, by the stand-in rule of wdecomp.ablation.methods."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wdecomp.ablation import METHODS, WeightComponents, ablate, ablation_sweep, register_method
from wdecomp.bases.base import LayerBasis
from wdecomp.params import select_parameters

DT = torch.float64


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(DT).eval()


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(24, 4, generator=g, dtype=DT)
    y = torch.randint(0, 3, (24,), generator=g)
    return [(x[:15], y[:15]), (x[15:], y[15:])]


@torch.no_grad()
def _loss(fn, data) -> float:
    return sum(float(F.cross_entropy(fn(x), y, reduction="sum")) for x, y in data) / sum(len(y) for _, y in data)


@pytest.fixture
def median_method():
    """Register a 'median' method for one test (the batch's feature-wise median as stand-in)."""

    @register_method("median")
    def median(f, mean, perm):
        return f.median(dim=0, keepdim=True).values.expand_as(f)

    yield "median"
    del METHODS["median"]


def test_registry_holds_the_three_methods():
    assert list(METHODS)[:3] == ["zero", "mean", "resample"]
    assert METHODS["mean"].needs_mean and METHODS["mean"].constant
    assert METHODS["resample"].needs_perm and not METHODS["resample"].constant
    with pytest.raises(ValueError, match="method must be one of"):
        ablate(_mlp(), LayerBasis("1", torch.eye(6, dtype=DT), torch.eye(6, dtype=DT), torch.ones(6, dtype=DT)),
               [0], data=_data(), method="shuffle")


def test_a_registered_method_is_used_by_activation_and_weight_groups(median_method):
    model, data = _mlp(), _data()
    g = torch.Generator().manual_seed(2)
    C = torch.randn(6, 6, generator=g, dtype=DT) + 3 * torch.eye(6, dtype=DT)
    mu = torch.randn(6, generator=g, dtype=DT)
    basis = LayerBasis("1", C, torch.linalg.inv(C), torch.rand(6, generator=g, dtype=DT), mu, "test")
    S = [1, 4]

    def act_fn(x):
        f = torch.tanh(model[0](x))
        fs = f.median(dim=0, keepdim=True).values
        c, cs = (f - mu) @ C[S].T, (fs - mu) @ C[S].T
        return model[2](f - (c - cs) @ basis.inverse[:, S].T)

    res = ablate(model, basis, S, data=data, method=median_method)
    assert abs(res.levels[0].loss - _loss(act_fn, data)) < 1e-12
    assert res.method == "median"

    ps = select_parameters(model, "2")
    V = torch.linalg.qr(torch.randn(ps.numel, ps.numel, generator=g, dtype=DT))[0]
    wc = WeightComponents.from_params(ps, V, model=model)
    theta = torch.cat([model[2].weight.detach().reshape(-1), model[2].bias.detach()])
    cut = theta - V[:, S] @ (V[:, S].T @ theta)
    WS, bS = cut[:18].reshape(3, 6), cut[18:]

    def weight_fn(x):
        h = torch.tanh(model[0](x))
        hs = h.median(dim=0, keepdim=True).values
        return h @ WS.T + bS + (model[2](hs) - (hs @ WS.T + bS))

    res = ablation_sweep(model, wc, data, k=[0, 2], order="most_important", method=median_method)
    assert res.levels[0].loss == res.original.loss
    assert res.levels[1].ablated == (0, 1)
    S[:] = [0, 1]
    cut = theta - V[:, S] @ (V[:, S].T @ theta)
    WS, bS = cut[:18].reshape(3, 6), cut[18:]
    assert abs(res.levels[1].loss - _loss(weight_fn, data)) < 1e-12
