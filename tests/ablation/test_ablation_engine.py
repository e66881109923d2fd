"""Ablation engine: exactness of empty ablations, baselines, splices, weight-space projections."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from wdecomp.ablation import (
    ActivationComponents,
    WeightComponents,
    ablate,
    ablation_sweep,
    score_splice,
    splice,
)
from wdecomp.bases.base import LayerBasis, neuron_basis
from wdecomp.objective import Objective
from wdecomp.params import select_parameters


def _mlp(seed: int = 0, d_in: int = 5, hidden: int = 8, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, classes)).double().eval()


class _Seq(nn.Module):
    """A token model: embedding ``V -> d``, one hidden layer ``mlp`` with ``act``, logits ``d -> V``."""

    def __init__(self, V: int, d: int, act: nn.Module):
        super().__init__()
        self.emb = nn.Embedding(V, d)
        self.mlp = nn.Sequential(nn.Linear(d, d), act)
        self.out = nn.Linear(d, V)

    def forward(self, x):
        return self.out(self.mlp(self.emb(x)))


def _token_setup(seed: int, V: int, T: int, d: int, n: int, act: nn.Module, dtype: torch.dtype):
    """A seeded :class:`_Seq` in ``dtype`` and ``n`` random token sequences of length ``T`` with
    token targets, split into two batches (the first 4 and the rest): ``model, x, y, data``."""
    torch.manual_seed(seed)
    model = _Seq(V, d, act).to(dtype).eval()
    x = torch.randint(0, V, (n, T))
    y = torch.randint(0, V, (n, T))
    return model, x, y, [(x[:4], y[:4]), (x[4:], y[4:])]


def _data(seed: int = 0, n: int = 50, d_in: int = 5, classes: int = 3, sizes=(20, 20, 10)):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    out, start = [], 0
    for s in sizes:
        out.append((X[start:start + s], y[start:start + s]))
        start += s
    return out


def _random_basis(point: str, d: int, seed: int, centred: bool = True) -> LayerBasis:
    g = torch.Generator().manual_seed(seed)
    C = torch.randn(d, d, generator=g, dtype=torch.float64) + 3 * torch.eye(d, dtype=torch.float64)
    mu = torch.randn(d, generator=g, dtype=torch.float64) if centred else None
    return LayerBasis(point, C, torch.linalg.inv(C), torch.rand(d, generator=g, dtype=torch.float64), mu, "test")


def _hooked_loss(model, data, point, fn, loss="cross_entropy"):
    with splice(model, point, fn):
        return Objective(model, data, loss).value()


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_ablating_nothing_is_exact(method):
    model, data = _mlp(), _data()
    ref = Objective(model, data).value()
    for comps in (_random_basis("1", 8, 1), WeightComponents.from_params(
        select_parameters(model, "2"), torch.linalg.qr(torch.randn(27, 27, dtype=torch.float64))[0], model=model
    )):
        res = ablation_sweep(model, comps, data, k=[0], method=method)
        assert res.levels[0].loss == ref
        assert res.original.loss == ref
        assert res.levels[0].kl == 0.0
        assert res.levels[0].recovered_zero == 1.0 and res.levels[0].recovered_mean == 1.0
        assert ablate(model, comps, [], data=data, method=method).levels[0].loss == ref


def test_zero_ablating_every_direction_zeroes_the_hook():
    model, data = _mlp(), _data()
    zeroed = _hooked_loss(model, data, "1", torch.zeros_like)
    # a centred, non-orthogonal complete basis: zero-ablation sets f to 0, not to mu
    res = ablate(model, _random_basis("1", 8, 2), "all", data=data, method="zero")
    assert abs(res.levels[0].loss - zeroed) < 1e-12
    assert abs(res.zero_baseline.loss - zeroed) < 1e-12
    # weight space: every direction of (W, b) of the last layer -> outputs 0 -> loss log(3)
    ps = select_parameters(model, "2")
    V = torch.linalg.qr(torch.randn(ps.numel, ps.numel, dtype=torch.float64))[0]
    res = ablate(model, WeightComponents.from_params(ps, V, model=model), "all", data=data)
    assert abs(res.levels[0].loss - math.log(3)) < 1e-12
    assert abs(res.zero_baseline.loss - math.log(3)) < 1e-12


def test_mean_ablating_every_direction_is_the_mean_baseline():
    model, data = _mlp(), _data()
    X = torch.cat([x for x, _ in data])
    mean = torch.tanh(model[0](X)).mean(0).detach()
    expected = _hooked_loss(model, data, "1", lambda f: mean.expand_as(f))
    res = ablate(model, _random_basis("1", 8, 3), "all", data=data, method="mean")
    assert abs(res.levels[0].loss - expected) < 1e-12
    assert abs(res.mean_baseline.loss - expected) < 1e-12
    # weight space, affine module: the removed contribution is replaced by its data mean
    ps = select_parameters(model, "2")
    V = torch.linalg.qr(torch.randn(ps.numel, ps.numel, dtype=torch.float64))[0]
    res = ablate(model, WeightComponents.from_params(ps, V, model=model), "all", data=data, method="mean")
    out_mean = model(X).mean(0).detach()
    expected = _hooked_loss(model, data, "2", lambda f: out_mean.expand_as(f))
    assert abs(res.levels[0].loss - expected) < 1e-12
    assert abs(res.mean_baseline.loss - expected) < 1e-12


def test_partial_activation_ablation_formula():
    """f' = f - C_S^+ (c_S - r_S) against a direct computation, for zero and mean."""
    model, data = _mlp(), _data()
    B = _random_basis("1", 8, 4)
    S = torch.tensor([1, 4, 6])
    X = torch.cat([x for x, _ in data])
    fbar = torch.tanh(model[0](X)).mean(0).detach()
    for method, r in (("zero", B.to_coordinates(torch.zeros(8, dtype=torch.float64))),
                      ("mean", B.to_coordinates(fbar))):
        def edit(f, r=r):
            c = B.to_coordinates(f)
            c2 = c.clone()
            c2[..., S] = r[S]
            return B.from_coordinates(c2)  # complete basis: nothing outside the span

        expected = _hooked_loss(model, data, "1", edit)
        got = ablate(model, B, S.tolist(), data=data, method=method).levels[0].loss
        assert abs(got - expected) < 1e-12


def test_out_of_span_part_is_kept():
    """A rank-2 basis of an 8-wide hook: ablating both directions keeps the orthogonal rest."""
    model, data = _mlp(), _data()
    Q = torch.linalg.qr(torch.randn(8, 2, dtype=torch.float64))[0]
    B = LayerBasis("1", Q.T.contiguous(), Q.contiguous(), torch.tensor([2.0, 1.0], dtype=torch.float64))
    P = torch.eye(8, dtype=torch.float64) - Q @ Q.T
    expected = _hooked_loss(model, data, "1", lambda f: f @ P.T)
    assert abs(ablate(model, B, "all", data=data).levels[0].loss - expected) < 1e-12


def test_resample_is_seeded_and_uses_other_examples():
    model, data = _mlp(), _data()
    B = neuron_basis(model, {"1": 8})
    a = ablate(model, B, [0, 3], data=data, method="resample", seed=1).levels[0].loss
    b = ablate(model, B, [0, 3], data=data, method="resample", seed=1).levels[0].loss
    c = ablate(model, B, [0, 3], data=data, method="resample", seed=2).levels[0].loss
    assert a == b and a != c
    # identical examples: resampling changes nothing
    x = data[0][0][:1].expand(6, -1).clone()
    same = [(x, torch.zeros(6, dtype=torch.long))]
    r = ablate(model, B, "all", data=same, method="resample")
    assert abs(r.levels[0].loss - r.original.loss) < 1e-14


def test_splice_identity_changes_nothing():
    model, data = _mlp(), _data()
    x = data[0][0]
    y0 = model(x)
    with splice(model, "1", nn.Identity()) as m:
        assert torch.equal(m(x), y0)
    s = splice(model, "0:input", lambda f: f)
    assert torch.equal(model(x), y0)
    s.remove()
    res = score_splice(model, "1", {"identity": nn.Identity(), "half": lambda f: 0.5 * f}, data)
    assert res.levels[0].loss == res.original.loss and res.levels[0].kl == 0.0
    assert res.levels[1].loss != res.original.loss
    assert not model[1]._forward_hooks  # hooks removed


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    hidden=st.integers(2, 9),
    method=st.sampled_from(["zero", "mean", "resample"]),
    subset=st.lists(st.integers(0, 8), unique=True, max_size=9),
)
def test_property_empty_is_exact_and_neuron_zero_matches_direct(seed, hidden, method, subset):
    model = _mlp(seed, hidden=hidden)
    data = _data(seed)
    B = _random_basis("1", hidden, seed + 1)
    ref = Objective(model, data).value()
    assert ablate(model, B, [], data=data, method=method).levels[0].loss == ref
    S = [i for i in subset if i < hidden]
    mask = torch.ones(hidden, dtype=torch.float64)
    mask[S] = 0
    expected = _hooked_loss(model, data, "1", lambda f: f * mask)
    got = ablate(model, neuron_basis(model, {"1": hidden}), S, data=data).levels[0].loss
    assert abs(got - expected) < 1e-12


def test_nested_weight_ablation_is_monotone_on_a_linear_model():
    """Linear model f = W x, MSE to its own outputs. With A = kron(I, X^T X) / (N d_out) (the
    Gauss-Newton matrix / 2), L(theta') = (theta' - theta)^T A (theta' - theta). For V the
    eigenvectors of A, removing the set S gives L(S) = sum_{i in S} lambda_i (v_i^T theta)^2:
    the cross terms vanish, each term is >= 0, so nested sets give a nondecreasing loss."""
    torch.manual_seed(0)
    d_in, d_out, n = 4, 3, 40
    model = nn.Linear(d_in, d_out, bias=False).double().eval()
    X = torch.randn(n, d_in, dtype=torch.float64)
    data = [(X[:25], model(X[:25]).detach()), (X[25:], model(X[25:]).detach())]
    A = torch.kron(torch.eye(d_out, dtype=torch.float64), X.T @ X) / (n * d_out)
    lam, V = torch.linalg.eigh(A)
    ps = select_parameters(model)
    theta = ps.flat().detach()
    wc = WeightComponents.from_params(ps, V, lam, model=model)
    res = ablation_sweep(model, wc, data, loss="mse", order="most_important")
    order = torch.argsort(-lam, stable=True)
    expected = torch.cumsum(lam[order] * (V[:, order].T @ theta) ** 2, 0)
    losses = res.column("loss")
    assert losses[0] == 0.0
    for k in range(1, ps.numel + 1):
        assert abs(losses[k] - float(expected[k - 1])) < 1e-12
    assert all(b >= a - 1e-15 for a, b in zip(losses, losses[1:]))


def test_sequence_model_kl_accuracy_and_token_degradation():
    V, T, d = 7, 5, 6
    model, x, y, data = _token_setup(0, V, T, d, 6, nn.ReLU(), torch.float64)
    B = neuron_basis(model, {"mlp": d})
    res = ablate(model, B, [0, 2], data=data, top_n=3)
    mask = torch.ones(d, dtype=torch.float64)
    mask[[0, 2]] = 0
    with splice(model, "mlp", lambda f: f * mask):
        z1 = model(x)
    z0 = model(x)
    p0 = z0.log_softmax(-1)
    kl = (p0.exp() * (p0 - z1.log_softmax(-1))).sum(-1).mean().detach()
    lv = res.levels[0]
    assert res.n_terms == 6 * T
    assert abs(lv.kl - float(kl)) < 1e-12
    assert lv.accuracy == float((z1.argmax(-1) == y).double().mean())
    inc = F.cross_entropy(z1.reshape(-1, V), y.reshape(-1), reduction="none") - F.cross_entropy(
        z0.reshape(-1, V), y.reshape(-1), reduction="none"
    )
    top = torch.topk(inc, 3)
    # ties (same token, same target) may come in either order: compare the values
    assert all(abs(d.increase - float(v)) < 1e-12 for d, v in zip(lv.degradation, top.values))
    for d in lv.degradation:
        assert abs(d.increase - float(inc[d.example * T + d.position])) < 1e-12


def test_sweep_orders_and_components_are_nested():
    model, data = _mlp(), _data()
    B = _random_basis("1", 8, 5)
    res = ablation_sweep(model, B, data, k=[0, 3, 8], order="least_important")
    ranking = torch.argsort(B.eigenvalues, stable=True).tolist()
    assert res.levels[1].ablated == tuple(ranking[:3])
    assert abs(res.levels[2].loss - res.zero_baseline.loss) < 1e-12
    res = ablation_sweep(model, B, data, k=[2], order="most_important")
    assert res.levels[0].ablated == tuple(torch.argsort(-B.eigenvalues, stable=True).tolist()[:2])


def test_activation_components_with_importance_and_multiple_groups():
    model, data = _mlp(), _data()
    g1 = ActivationComponents(_random_basis("1", 8, 6), importance=torch.arange(8.0))
    g2 = ActivationComponents(neuron_basis(model, {"0:input": 5})["0:input"])
    res = ablate(model, [g1, g2], [0, 8], data=data)
    assert set(res.hooks) == {"1", "0:input"}
    assert res.n_components == 13


def test_float32_sequence_model_empty_level_is_exact_and_fused_edit_matches():
    """The cached-reference metric path (float32, tokens x vocab logits): ablating nothing gives
    Objective.value bit for bit and KL exactly 0; the fused (I - A) edit used for many
    components matches the two-product edit used for few."""
    V, T, d = 11, 7, 6
    model, x, y, data = _token_setup(1, V, T, d, 10, nn.Tanh(), torch.float32)
    B = _random_basis("mlp", d, 7)
    ref = Objective(model, data).value()
    res = ablation_sweep(model, B, data, k=[0, 1, 5, 6], method="mean", top_n=4)
    assert res.original.loss == ref and res.levels[0].loss == ref
    assert res.levels[0].kl == 0.0 and res.original.kl == 0.0
    assert all(lv.kl > 0 for lv in res.levels[1:])
    for lv in res.levels[1:]:  # fused (k >= d/2) and thin (k < d/2) edits against the formula
        S = torch.tensor(sorted(lv.ablated))
        X = torch.cat([b[0] for b in data])
        with torch.no_grad():
            fbar = model.mlp(model.emb(X)).reshape(-1, d).double().mean(0)
        r = B.to_coordinates(fbar)

        def edit(f, S=S, r=r):
            c = B.to_coordinates(f.double())
            c[..., S] = r[S]
            return B.from_coordinates(c).to(f.dtype)

        expected = _hooked_loss(model, data, "mlp", edit)
        assert abs(lv.loss - expected) < 1e-5
        incs = [g.increase for g in lv.degradation]
        assert incs == sorted(incs, reverse=True) and len(incs) == 4
