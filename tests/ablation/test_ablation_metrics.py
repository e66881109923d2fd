"""Ablation metrics, the result object, bad input, and the Components adapter."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from wdecomp.ablation import (
    AblationResult,
    WeightComponents,
    ablate,
    ablation_sweep,
    equivalents,
    loss_recovered,
    score_splice,
)
from wdecomp.bases.base import LayerBasis, neuron_basis
from wdecomp.errors import ModelMismatchError, NonFiniteError, SelectionError, ShapeError
from wdecomp.params import select_parameters


def _setup(seed=0, hidden=8):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, hidden), nn.Tanh(), nn.Linear(hidden, 3)).double().eval()
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(40, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    return model, [(X[:16], y[:16]), (X[16:32], y[16:32]), (X[32:], y[32:])]


def test_loss_recovered_formula_and_both_baselines():
    model, data = _setup()
    res = ablation_sweep(model, neuron_basis(model, {"1": 8}), data, k=[0, 3, 8], order="most_important")
    L, Lz, Lm = res.original.loss, res.zero_baseline.loss, res.mean_baseline.loss
    for lv in res.levels:
        assert lv.recovered_zero == pytest.approx(1 - (lv.loss - L) / (Lz - L), abs=1e-15)
        assert lv.recovered_mean == pytest.approx(1 - (lv.loss - L) / (Lm - L), abs=1e-15)
        assert lv.delta_loss == lv.loss - L
    assert res.zero_baseline.recovered_zero == pytest.approx(0.0, abs=1e-15)
    assert res.mean_baseline.recovered_mean == pytest.approx(0.0, abs=1e-15)
    assert loss_recovered(2.0, 2.0, 2.0) == 1.0 and math.isnan(loss_recovered(2.5, 2.0, 2.0))
    assert loss_recovered(3.0, 2.0, 4.0) == 0.5


def test_accuracy_and_kl_against_direct_computation():
    model, data = _setup()
    S = [1, 5]
    res = ablate(model, neuron_basis(model, {"1": 8}), S, data=data)
    X = torch.cat([x for x, _ in data])
    y = torch.cat([t for _, t in data])
    h = torch.tanh(model[0](X))
    h[:, S] = 0
    z1, z0 = model[2](h).detach(), model(X).detach()
    p0 = z0.log_softmax(-1)
    assert res.levels[0].kl == pytest.approx(float((p0.exp() * (p0 - z1.log_softmax(-1))).sum(-1).mean()), abs=1e-14)
    assert res.levels[0].accuracy == float((z1.argmax(-1) == y).double().mean())
    assert res.original.accuracy == float((z0.argmax(-1) == y).double().mean())
    assert res.original.kl == 0.0


def test_mse_loss_has_no_kl_and_says_so():
    model, data = _setup()
    data = [(x, model(x).detach() + 0.1) for x, _ in data]
    res = ablation_sweep(model, neuron_basis(model, {"1": 8}), data, k=[0, 4], loss="mse")
    assert res.levels[1].kl is None and res.levels[1].accuracy is None
    assert any("KL" in n for n in res.notes)
    assert "kl" not in str(res).split("\n")[3]


def test_result_table_json_csv_plot(tmp_path):
    model, data = _setup()
    res = ablation_sweep(model, neuron_basis(model, {"1": 8}), data, k=[0, 2, 4], method="mean", top_n=4)
    text = str(res)
    assert "zero-ablation" in text and "mean-ablation" in text and "k=4" in text
    assert "no scaling law" in text  # the note for the skipped columns
    d = json.loads(res.to_json(tmp_path / "r.json"))
    assert d["levels"][2]["loss"] == res.levels[2].loss
    assert AblationResult.from_dict(d) == res
    rows = res.to_csv(tmp_path / "r.csv").strip().split("\n")
    assert len(rows) == 1 + 3 + 3 and rows[0].startswith("label,n_ablated,loss")
    fig = res.plot(tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000 and len(fig.axes) == 2
    assert len(res.levels[2].degradation) == 4
    incs = [g.increase for g in res.levels[2].degradation]
    assert incs == sorted(incs, reverse=True)
    assert res.column("n_ablated") == [0, 2, 4]


@pytest.mark.refuses("ablation levels or indices out of range, repeated indices, unknown methods or orders, "
                     "a basis of the wrong width, a splice of the wrong shape, an unknown hook, a model the "
                     "components were not built for",
                     "each is a typed wdecomp error naming the bad value and the allowed range")
def test_bad_input_is_a_clear_error():
    model, data = _setup()
    B = neuron_basis(model, {"1": 8})
    with pytest.raises(SelectionError, match="empty sweep"):
        ablation_sweep(model, B, data, k=[])
    with pytest.raises(SelectionError, match="outside 0..8"):
        ablation_sweep(model, B, data, k=[0, 9])
    with pytest.raises(SelectionError, match="out of range"):
        ablate(model, B, [3, 8], data=data)
    with pytest.raises(SelectionError, match="out of range"):
        ablate(model, B, [-1], data=data)
    with pytest.raises(SelectionError, match="repeat"):
        ablate(model, B, [1, 1], data=data)
    other, _ = _setup(hidden=6)
    with pytest.raises(ModelMismatchError):
        ablate(other, B, [0], data=data)
    ps = select_parameters(model, "2")
    wc = WeightComponents.from_params(ps, torch.eye(ps.numel, dtype=torch.float64), model=model)
    with pytest.raises(ModelMismatchError):
        ablate(other, wc, [0], data=data)
    with pytest.raises(ShapeError, match="orthonormal"):
        WeightComponents.from_params(ps, 2 * torch.eye(ps.numel, dtype=torch.float64))
    with pytest.raises(ValueError, match="method"):
        ablate(model, B, [0], data=data, method="shuffle")
    with pytest.raises(ValueError, match="order"):
        ablation_sweep(model, B, data, k=[1], order="random")
    wrong = LayerBasis("1", torch.eye(6, dtype=torch.float64), torch.eye(6, dtype=torch.float64),
                       torch.ones(6, dtype=torch.float64))
    with pytest.raises(ShapeError, match="width"):
        ablate(model, wrong, [0], data=data)
    with pytest.raises(ShapeError, match="expected shape"):
        score_splice(model, "1", lambda f: f[:, :2], data)
    with pytest.raises(SelectionError, match="no module"):
        score_splice(model, "nope", nn.Identity(), data)
    with pytest.raises(TypeError):
        ablate(model, "not components", [0], data=data)


@pytest.mark.refuses("NaN, infinite or negative losses given to the compute-equivalent",
                     "an equivalent of a loss that is not a finite non-negative number is meaningless")
def test_equivalents_reject_bad_losses():
    law = object()  # never reached: the losses are checked first
    with pytest.raises(NonFiniteError):
        equivalents([float("nan")], 2.0, law)
    with pytest.raises(NonFiniteError):
        equivalents([2.1], float("inf"), law)
    with pytest.raises(ValueError, match="< 0"):
        equivalents([-0.5], 2.0, law)
    ce, pe, notes = equivalents([2.0, 2.5], 2.0, None)
    assert ce is None and pe is None and "no scaling law" in notes[0]


def test_equivalent_columns_with_a_law():
    from wdecomp import scaling

    # E = 0.5 below the model's loss; at D = 1e13 the floor E + B/D^beta = 0.59 is below it too.
    law = scaling.ChinchillaLaw(E=0.5, A=406.4, B=410.7, alpha=0.34, beta=0.28)
    model, data = _setup()
    res = ablation_sweep(model, neuron_basis(model, {"1": 8}), data, k=[0, 4, 8], order="most_important",
                         law=law, tokens=1e13)
    ce = res.column("compute_equivalent")
    assert ce[0] == 1.0
    for lv in res.levels:
        assert lv.compute_equivalent == pytest.approx(
            float(scaling.compute_equivalent(lv.loss, res.original.loss, law)), rel=1e-12)
        assert lv.parameter_equivalent == pytest.approx(
            float(scaling.parameter_equivalent(lv.loss, res.original.loss, law, 1e13)), rel=1e-12)
        assert (lv.compute_equivalent < 1) == (lv.loss > res.original.loss)


def test_components_adapter_matches_the_primitives():
    comp_mod = pytest.importorskip("wdecomp.components")
    model, data = _setup()
    basis = neuron_basis(model, {"1": 8})
    comps = comp_mod.decompose(model, basis)
    a = ablate(model, comps, [0, 3], data=data, method="mean")
    b = ablate(model, basis, [0, 3], data=data, method="mean")
    assert a.levels[0].loss == b.levels[0].loss
    try:
        from wdecomp.bases.curvature import CurvatureBasis
    except ImportError:
        return
    ps = select_parameters(model, "2")
    V = torch.linalg.qr(torch.randn(ps.numel, ps.numel, dtype=torch.float64))[0]
    lam = torch.linspace(2, 1, ps.numel, dtype=torch.float64)
    sig = comps.signature
    cb = CurvatureBasis(ps.names, tuple(tuple(s) for s in ps.shapes), lam, V, "ggn", "all", lam, 1e-8, sig)
    wc = comp_mod.decompose(model, cb)
    a = ablate(model, wc, [0, 1, 2], data=data)
    b = ablate(model, WeightComponents.from_params(ps, V, lam, model=model), [0, 1, 2], data=data)
    assert a.levels[0].loss == b.levels[0].loss
    # zero-ablation of weight directions == Components.project keeping the rest
    keep = [i for i in range(ps.numel) if i not in (0, 1, 2)]
    projected = wc.projected_model(model, keep)
    from wdecomp.objective import Objective

    assert a.levels[0].loss == pytest.approx(Objective(projected, data).value(), abs=1e-12)
