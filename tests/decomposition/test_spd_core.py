"""SPD's building blocks against hand computations, in float64 (arXiv 2506.20790; reference
``spd/losses.py`` and ``spd/models/component_utils.py`` on branch ``spd-paper`` of goodfire-ai/spd)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from wdecomp.decomposition.spd import (
    ImportanceMLP,
    SPDConfig,
    SPDModel,
    _Target,
    compute_losses,
    faithfulness_loss,
    importance_minimality_loss,
    lower_leaky_hard_sigmoid,
    output_divergence,
    stochastic_masks,
    swapped,
    train_spd,
    upper_leaky_hard_sigmoid,
)
from wdecomp.models.spd_targets import TMS

DT = torch.float64


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).to(DT).eval()


def _tms() -> nn.Module:
    torch.manual_seed(1)
    m = TMS(5, 2, n_identity=1).to(DT).eval()
    with torch.no_grad():
        m.linear1.weight.normal_()
        m.linear2.bias.normal_(0, 0.1)
    return m


def _exact(model: nn.Module, layers: list[str], C: int = 8) -> tuple[_Target, SPDModel]:
    target = _Target(model, layers)
    ties = {"linear2": "linear1"} if "linear2" in layers and "linear1" in layers else {}
    sm = SPDModel(layers, {n: tuple(target.weights[n].shape) for n in layers}, C, ties, 4, DT)
    sm.init_svd({n: target.weights[n].detach() for n in layers})
    return target, sm


@pytest.mark.parametrize("which", ["mlp", "tms"])
def test_float64_all_masks_one_reproduces_the_target(which: str) -> None:
    model = _mlp() if which == "mlp" else _tms()
    layers = ["0", "2"] if which == "mlp" else ["linear1", "hidden_layers.0", "linear2"]
    x = torch.rand(7, 4 if which == "mlp" else 5, dtype=DT)
    target, sm = _exact(model, layers)
    assert sm.tied == ({} if which == "mlp" else {"linear2": "linear1"})
    y = model(x)
    biases = {n: target.bias(n) for n in layers}
    ones = {n: torch.ones(7, sm.C, dtype=DT) for n in layers}
    with swapped(model, sm, ones, biases):
        y_all = model(x)
    assert (y_all - y).abs().max() < 1e-10
    for n in layers:
        with swapped(model, sm, {n: ones[n]}, biases):
            assert (model(x) - y).abs().max() < 1e-10
    # a zero mask on one subcomponent changes the output by exactly that piece's contribution
    m = ones["0" if which == "mlp" else "linear1"].clone()
    m[:, 0] = 0
    first = layers[0]
    with swapped(model, sm, {first: m}, biases):
        y0 = model(x)
    assert (y0 - y).abs().max() > 1e-3


def test_masks_properties() -> None:
    g = torch.tensor([0.0, 0.3, 1.0, 0.7], dtype=DT, requires_grad=True)
    r = torch.tensor([0.2, 0.9, 0.4, 0.0], dtype=DT)
    m = stochastic_masks(g, r=r)
    ones = torch.ones(5, dtype=DT)
    assert torch.equal(stochastic_masks(ones, torch.Generator().manual_seed(0)), ones)
    m.sum().backward()
    assert torch.allclose(g.grad, 1 - r, atol=0, rtol=0)
    assert torch.allclose(m.detach(), g.detach() + (1 - g.detach()) * r)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=20), st.integers(0, 2**31 - 1))
def test_masks_lie_between_importance_and_one(values: list[float], seed: int) -> None:
    g = torch.tensor(values, dtype=DT)
    m = stochastic_masks(g, torch.Generator().manual_seed(seed))
    assert bool((m >= g - 1e-15).all()) and bool((m <= 1 + 1e-15).all())


@pytest.mark.parametrize(("z", "lower", "dlower", "upper", "dupper"), [
    (-1.0, -0.01, 0.01, 0.0, 0.0),
    (0.5, 0.5, 1.0, 0.5, 1.0),
    (2.0, 1.0, 0.0, 1.01, 0.01),
])
def test_leaky_hard_sigmoids_values_and_gradients(z: float, lower: float, dlower: float, upper: float,
                                                  dupper: float) -> None:
    t = torch.tensor(z, dtype=DT, requires_grad=True)
    v = lower_leaky_hard_sigmoid(t)
    (gl,) = torch.autograd.grad(v, t)
    v = v.detach()
    assert float(v) == pytest.approx(lower, abs=1e-15) and float(gl) == pytest.approx(dlower, abs=1e-15)
    v = upper_leaky_hard_sigmoid(t)
    (gu,) = torch.autograd.grad(v, t)
    v = v.detach()
    assert float(v) == pytest.approx(upper, abs=1e-15) and float(gu) == pytest.approx(dupper, abs=1e-15)


def test_faithfulness_normalisation_by_hand() -> None:
    W1, A1 = torch.ones(2, 3, dtype=DT), torch.zeros(2, 3, dtype=DT)  # 6 entries, error 6
    W2, A2 = torch.full((4, 1), 2.0, dtype=DT), torch.ones(4, 1, dtype=DT)  # 4 entries, error 4
    assert float(faithfulness_loss([(W1, A1), (W2, A2)])) == pytest.approx(10 / 10)


def test_minimality_normalisation_by_hand() -> None:
    a = torch.tensor([[0.5, 1.0], [0.0, 2.0]], dtype=DT)  # batch 2, C 2
    b = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5]], dtype=DT)  # batch 2, C 3
    # p = 2: example 0: 0.25 + 1 + 1 = 2.25; example 1: 0 + 4 + 0.75 = 4.75; mean 3.5
    assert float(importance_minimality_loss([a, b], 2.0)) == pytest.approx(3.5)
    # p = 1: (1.5 + 1) and (2 + 1.5) -> mean 3.0
    assert float(importance_minimality_loss([a, b], 1.0)) == pytest.approx(3.0)
    # with a position axis: (batch 1, pos 2, C 2) averages over positions too
    c = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]], dtype=DT)
    assert float(importance_minimality_loss([c], 1.0)) == pytest.approx(1.0)


def test_output_divergences_by_hand() -> None:
    out = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=DT)
    tgt = torch.tensor([[0.0, 0.0], [0.0, 2.0]], dtype=DT)
    assert float(output_divergence(out, tgt, "mse")) == pytest.approx((1 + 4 + 0 + 4) / 4)
    kl = 0.0
    for i in range(2):
        p = [math.exp(v) / sum(math.exp(u) for u in tgt[i].tolist()) for v in tgt[i].tolist()]
        q = [math.exp(v) / sum(math.exp(u) for u in out[i].tolist()) for v in out[i].tolist()]
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert float(output_divergence(out, tgt, "kl")) == pytest.approx(kl / 2, rel=1e-12)


def test_reconstruction_losses_normalised_over_samples_and_layers() -> None:
    model = _mlp()
    layers = ["0", "2"]
    target, sm = _exact(model, layers)
    x = torch.rand(5, 4, dtype=DT)
    cfg = SPDConfig(C=8, n_mask_samples=2, gate_hidden=4)
    gen = torch.Generator().manual_seed(3)
    twin = torch.Generator().manual_seed(3)
    got = compute_losses(target, sm, cfg, x, "mse", gen)
    got.terms = {k: v.detach() for k, v in got.terms.items()}
    got.total = got.total.detach()
    y, acts = target.run(x)
    g = {n: lower_leaky_hard_sigmoid(sm.importance_logits(n, acts[n])).detach() for n in layers}
    biases = {n: target.bias(n) for n in layers}
    stoch, layer = [], []
    for _ in range(2):
        masks = {n: stochastic_masks(g[n], twin) for n in layers}
        with swapped(model, sm, masks, biases):
            stoch.append(float(((model(x) - y) ** 2).mean().detach()))
        for n in layers:
            with swapped(model, sm, {n: stochastic_masks(g[n], twin)}, biases):
                layer.append(float(((model(x) - y) ** 2).mean().detach()))
    assert float(got.terms["stochastic_recon"]) == pytest.approx(sum(stoch) / 2, rel=1e-12)
    assert float(got.terms["layerwise_recon"]) == pytest.approx(sum(layer) / 4, rel=1e-12)
    assert float(got.terms["faithfulness"]) < 1e-28
    total = (got.terms["faithfulness"] + got.terms["stochastic_recon"] + got.terms["layerwise_recon"]
             + cfg.importance_coeff * got.terms["importance_minimality"])
    assert float(got.total) == pytest.approx(float(total), rel=1e-12)


def test_reconstruction_losses_reach_the_importance_mlps() -> None:
    model = _mlp()
    target, sm = _exact(model, ["0", "2"])
    with torch.no_grad():  # move the pieces off W so a mask below 1 changes the output
        sm.U["0"].mul_(1.1)
    cfg = SPDConfig(C=8, gate_hidden=4, importance_coeff=0.0, faithfulness_coeff=0.0)
    losses = compute_losses(target, sm, cfg, torch.rand(16, 4, dtype=DT), "mse", torch.Generator().manual_seed(0))
    (losses.terms["stochastic_recon"] + losses.terms["layerwise_recon"]).backward()
    for n in ("0", "2"):
        gate = sm.gate(n)
        assert float(gate.w_in.grad.abs().sum() + gate.w_out.grad.abs().sum()) > 0


def test_importance_mlp_shapes_and_linear_variant() -> None:
    mlp = ImportanceMLP(3, 5, DT, torch.Generator().manual_seed(0))
    h = torch.randn(2, 4, 3, dtype=DT)
    z = mlp(h)
    assert z.shape == (2, 4, 3)
    c = 1  # subcomponent c reads only h[..., c]
    manual = (F.gelu(h[..., c, None] * mlp.w_in[c] + mlp.b_in[c]) * mlp.w_out[c]).sum(-1) + mlp.b_out[c]
    assert torch.allclose(z[..., c], manual, atol=1e-14)
    lin = ImportanceMLP(3, 0, DT)
    assert torch.allclose(lin(h), h * lin.w_in[:, 0] + lin.b_in[:, 0] + lin.b_out)


def test_same_seed_same_first_50_losses() -> None:
    model = _tms()

    def sample(b: int, g: torch.Generator) -> torch.Tensor:
        return torch.rand(b, 5, generator=g, dtype=DT) * (torch.rand(b, 5, generator=g, dtype=DT) < 0.2)

    cfg = SPDConfig(C=6, steps=50, batch_size=32, gate_hidden=4, seed=5)
    runs = [train_spd(model, sample, ["linear1", "linear2"], cfg, progress=False)[1].history for _ in range(2)]
    assert len(runs[0]["total"]) == 50
    assert runs[0] == runs[1]
    other = train_spd(model, sample, ["linear1", "linear2"], SPDConfig(C=6, steps=5, batch_size=32, gate_hidden=4,
                                                                      seed=6), progress=False)[1].history
    assert other["total"][:5] != runs[0]["total"][:5]


def test_schedules_and_p_annealing() -> None:
    cfg = SPDConfig(steps=101, lr=1e-3)
    assert cfg.lr_at(0) == pytest.approx(1e-3) and cfg.lr_at(100) == pytest.approx(0.0, abs=1e-18)
    assert cfg.lr_at(50) == pytest.approx(1e-3 * math.cos(math.pi / 4))
    assert SPDConfig(steps=101, lr_schedule="constant").lr_at(77) == pytest.approx(1e-3)
    ann = SPDConfig(steps=100, p=2.0, p_final=1.0, p_anneal_start=0.5)
    assert [ann.p_at(s) for s in (0, 50, 75, 100)] == pytest.approx([2.0, 2.0, 1.5, 1.0])
    assert SPDConfig(p=1.0).p_at(10_000) == 1.0
