"""Curvature eigenbases: shapes, completeness, the behavioural-loss Hessian against a dense reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wdecomp.bases import curvature_basis
from wdecomp.components import decompose

DT = torch.float64


def _case():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DT).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 3, generator=g, dtype=DT)
    y = torch.randint(0, 2, (9,), generator=g)
    return model, [(x[:5], y[:5]), (x[5:], y[5:])]


@pytest.mark.parametrize("kind", ["hessian", "ggn", "behavioural"])
def test_directions_have_parameter_shapes_and_project_back(kind):
    model, data = _case()
    basis = curvature_basis(model, data, ["0.weight", "2.bias"], kind=kind)
    assert basis.size == basis.numel == 14
    d = basis.direction(0)
    assert d["0.weight"].shape == (4, 3) and d["2.bias"].shape == (2,)
    assert basis.directions()["0.weight"].shape == (14, 4, 3)
    V = basis.eigenvectors
    assert torch.allclose(V.T @ V, torch.eye(14, dtype=DT), atol=1e-12)
    comps = decompose(model, basis)
    new = comps.project(model)  # all components -> the weights themselves
    params = dict(model.named_parameters())
    for n, t in new.items():
        assert torch.allclose(t, params[n], rtol=0, atol=1e-12)
    assert comps.rewrite(model) is not model
    half = comps.project(model, keep=range(7))
    theta = basis.flatten({n: params[n].detach() for n in basis.names})
    expect = V[:, :7] @ (V[:, :7].T @ theta)
    assert torch.allclose(basis.flatten(half), expect, atol=1e-12)


def test_behavioural_hessian_is_twice_jtj():
    model, data = _case()
    basis = curvature_basis(model, data, "0.weight", kind="behavioural")
    x = torch.cat([b[0] for b in data])
    W0 = model[0].weight.detach().clone()

    def f(w):
        h = torch.tanh(x @ w.reshape(4, 3).T + model[0].bias)
        return model[2](h).reshape(-1)

    J = torch.autograd.functional.jacobian(f, W0.reshape(-1))  # (9*2, 12)
    H = 2 * J.T @ J / len(x)
    evals = torch.linalg.eigvalsh(H).flip(0)
    assert torch.allclose(basis.eigenvalues, evals, rtol=1e-9, atol=1e-13)
    # and it is the true Hessian of L_B at theta*: compare with double backward
    f0 = f(W0.reshape(-1)).detach()
    Hd = torch.autograd.functional.hessian(lambda w: (f(w) - f0).pow(2).sum() / len(x), W0.reshape(-1))
    assert torch.allclose(Hd, H, rtol=1e-9, atol=1e-12)


def test_top_bulk_null_partition():
    model, data = _case()
    full = curvature_basis(model, data, kind="ggn", null_threshold=1e-10)
    top = curvature_basis(model, data, kind="ggn", which="top", k=3)
    null = curvature_basis(model, data, kind="ggn", which="null", null_threshold=1e-10)
    bulk = curvature_basis(model, data, kind="ggn", which="bulk", k=3, null_threshold=1e-10)
    assert top.size + bulk.size + null.size == full.numel
    assert null.size == full.numel - full.rank > 0  # 9 examples x 2 outputs < 23 parameters
    assert torch.allclose(top.eigenvalues, full.eigenvalues[:3], rtol=1e-10)
    assert "rank" in str(full) and full.to_dict()["rank"] == full.rank
    with pytest.raises(ValueError, match="needs k"):
        curvature_basis(model, data, which="top")
