"""LIB's default equals rib's formulas, re-implemented independently in numpy (tests/_rib_reference.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _rib_reference import m_dash, rib_layer
from torch import nn

from wdecomp.bases import interaction_basis

DT = torch.float64
THR = 1e-10


def tanh_mlp(seed: int = 0, duplicate: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT).eval()
    if duplicate:  # neuron 5 copies neuron 4: the covariance at "1" is singular
        with torch.no_grad():
            m[0].weight[5] = m[0].weight[4]
            m[0].bias[5] = m[0].bias[4]
    return m


class SeqMix(nn.Module):
    """Embedding, a position-wise Linear, fixed mixing over 3 positions, tanh, Linear (3 positions)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.embed = nn.Embedding(7, 4)
        self.lin1 = nn.Linear(4, 5)
        self.register_buffer("K", torch.randn(3, 3))
        self.act = nn.Tanh()
        self.lin2 = nn.Linear(5, 3)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        u = self.lin1(self.embed(t))
        return self.lin2(self.act(torch.einsum("pq,bqd->bpd", self.K, u)))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().astype(np.float64)


def _ones(f: np.ndarray) -> np.ndarray:
    return np.concatenate([f, np.ones(f.shape[:-1] + (1,))], -1)


def rib_mlp(model: nn.Module, x: torch.Tensor, alpha: float = 1.0):
    """rib's layers at '1' and '3' of a tanh MLP, and the x-space Jacobians at ``alpha x``."""
    W2, b2, W4, b4 = (_np(p) for p in (model[2].weight, model[2].bias, model[4].weight, model[4].bias))
    f1 = np.tanh(_np(model[0](x)))
    f3 = np.tanh(f1 @ W2.T + b2)
    N = len(x)
    J34 = np.broadcast_to(np.concatenate([W4, b4[:, None]], 1)[None, None, :, None, :], (N, 1, 3, 1, 6)).copy()
    L3 = rib_layer(_ones(f3), m_dash(J34), THR)

    def J13x(a: float) -> np.ndarray:
        g = 1 - np.tanh(a * (f1 @ W2.T + b2)) ** 2  # (N, 5)
        J = np.zeros((N, 1, 6, 1, 7))
        J[:, 0, :5, 0, :6] = g[:, :, None] * W2
        J[:, 0, :5, 0, 6] = g * b2
        J[:, 0, 5, 0, 6] = 1.0
        return J

    J13 = np.einsum("ntapb,al->ntlpb", J13x(1.0), L3.C)
    L1 = rib_layer(_ones(f1), m_dash(J13), THR)
    return {"1": (L1, _ones(f1)), "3": (L3, _ones(f3))}, J13x, J34


def rib_seq(model: SeqMix, t: torch.Tensor):
    K, W1, b1, W2, b2 = (_np(p) for p in (model.K, model.lin1.weight, model.lin1.bias, model.lin2.weight,
                                          model.lin2.bias))
    e = _np(model.embed(t))  # (N, 3, 4)
    m = np.einsum("pq,nqd->npd", K, e @ W1.T + b1)
    act = np.tanh(m)
    N = len(t)
    J2 = np.zeros((N, 3, 3, 3, 6))
    for p in range(3):
        J2[:, p, :, p, :5] = W2
        J2[:, p, :, p, 5] = b2
    L_act = rib_layer(_ones(act).reshape(-1, 6), m_dash(J2), THR)

    def J1x(a: float) -> np.ndarray:
        g = 1 - np.tanh(a * m) ** 2  # (N, 3, 5)
        J = np.zeros((N, 3, 6, 3, 5))
        for p in range(3):
            for q in range(3):
                J[:, p, :5, q, :4] = g[:, p, :, None] * K[p, q] * W1
                J[:, p, :5, q, 4] = g[:, p] * K[p, q] * b1
            J[:, p, 5, p, 4] = 1.0
        return J

    J1 = np.einsum("ntapb,al->ntlpb", J1x(1.0), L_act.C)
    L_e = rib_layer(_ones(e).reshape(-1, 5), m_dash(J1), THR)
    return {"embed": (L_e, _ones(e)), "act": (L_act, _ones(act))}, J1x, J2


def assert_same_coordinates(got: torch.Tensor, ref: np.ndarray, lam_got: torch.Tensor, lam_ref: np.ndarray) -> None:
    """Coordinates on the data (``(n, k)``) equal up to the sign of each direction; Lambdas equal."""
    got = _np(got).reshape(-1, got.shape[-1])
    ref = ref.reshape(-1, ref.shape[-1])
    assert got.shape == ref.shape
    np.testing.assert_allclose(_np(lam_got), lam_ref, rtol=1e-10, atol=1e-14 * abs(lam_ref).max())
    signs = np.sign(np.sum(got * ref, 0))
    signs[signs == 0] = 1
    err = np.abs(got * signs - ref).max() / np.abs(ref).max()
    assert err < 1e-10, err


def assert_same_inverse(lb, layer, d: int) -> None:
    """``C^+``: rib's rows of ``C_pinv`` equal wdecomp's inverse (up to sign), the constant's row too."""
    Cp = layer.C_pinv.copy()  # (k, d+1)
    Cp[0] *= np.sign(Cp[0, d])  # the constant direction's sign is arbitrary in rib too
    np.testing.assert_allclose(Cp[0, d], 1 / lb.constant, rtol=1e-10)
    np.testing.assert_allclose(Cp[0, :d], _np(lb.center) / lb.constant, rtol=1e-10, atol=1e-14)
    ours = _np(lb.inverse).T[1:]  # (k-1, d)
    theirs = Cp[1:, :d]
    signs = np.sign(np.sum(ours * theirs, 1))[:, None]
    assert np.abs(ours * signs - theirs).max() < 1e-10 * np.abs(theirs).max()


@pytest.mark.parametrize("duplicate", [False, True])
def test_lib_default_equals_rib_on_mlp(duplicate):
    model = tanh_mlp(duplicate=duplicate)
    x = torch.randn(30, 4, dtype=DT, generator=torch.Generator().manual_seed(1))
    basis = interaction_basis(model, (x, None), ["1", "3", "4"])
    ref, _, _ = rib_mlp(model, x)
    f1 = model[1](model[0](x))
    f3 = model[3](model[2](f1))
    for point, f in (("1", f1), ("3", f3)):
        layer, xr = ref[point]
        lb = basis[point]
        assert lb.constant is not None and lb.size == len(layer.Lambda)
        assert_same_coordinates(lb.to_coordinates(f.detach()), xr @ layer.C, lb.eigenvalues, layer.Lambda)
        assert_same_inverse(lb, layer, f.shape[-1])
    assert basis["1"].size == 6  # constant + 5: W2 has rank 5 (and the duplicate is a null direction)
    # the last layer (the model's output) is not rotated and has no constant node
    assert basis["4"].constant is None and torch.equal(basis["4"].transform, torch.eye(3, dtype=DT))


def test_lib_default_equals_rib_on_sequence_model():
    model = SeqMix().to(DT).eval()
    t = torch.randint(0, 7, (20, 3), generator=torch.Generator().manual_seed(2))
    basis = interaction_basis(model, [(t[:12],), (t[12:],)], ["embed", "act", "lin2"])
    ref, _, _ = rib_seq(model, t)
    e = model.embed(t)
    act = model.act(torch.einsum("pq,bqd->bpd", model.K, model.lin1(e)))
    for point, f in (("embed", e), ("act", act)):
        layer, xr = ref[point]
        lb = basis[point]
        assert_same_coordinates(lb.to_coordinates(f.detach()), xr.reshape(-1, xr.shape[-1]) @ layer.C,
                                lb.eigenvalues, layer.Lambda)
        assert_same_inverse(lb, layer, f.shape[-1])


def test_sequence_forms_differ_and_summed_is_named():
    """rib's per-position M differs from the summed form kept as sequence='summed'."""
    model = SeqMix().to(DT).eval()
    t = torch.randint(0, 7, (20, 3), generator=torch.Generator().manual_seed(2))
    rib = interaction_basis(model, t, ["embed", "act", "lin2"], constant=False)
    summed = interaction_basis(model, t, ["embed", "act", "lin2"], constant=False, sequence="summed")
    a, b = rib["embed"].eigenvalues, summed["embed"].eigenvalues
    assert float((a - b).abs().max() / a.max()) > 0.05
    assert summed.info["sequence"] == "summed" and rib.info["sequence"] == "per-position"


def test_constant_node_rewrites_exactly():
    """Through the basis and back at every layer, the outputs stay the same (1e-10)."""
    from wdecomp import hooks

    model = tanh_mlp()
    x = torch.randn(30, 4, dtype=DT, generator=torch.Generator().manual_seed(1))
    basis = interaction_basis(model, x, ["1", "3", "4"], drop_noninteracting=False)
    ref = model(x)
    for point in basis:
        lb = basis[point]
        out, _ = hooks.run(model, x, write={point: lambda f, lb=lb: lb.from_coordinates(lb.to_coordinates(f))})
        assert float((out - ref).abs().max()) < 1e-10
