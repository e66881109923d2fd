"""The equivalents wired into ablation sweeps and splice scores: laws=, training_compute=, per-level NaN."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from wdecomp.ablation import AblationResult, ablation_sweep, score_splice
from wdecomp.bases.base import neuron_basis
from wdecomp.errors import ScalingLawRangeError
from wdecomp.scaling import ChinchillaLaw, compute_equivalent, equivalents_table

pytestmark = pytest.mark.filterwarnings("ignore::wdecomp.scaling.ComparabilityWarning",
                                        "ignore::wdecomp.scaling.ExtrapolationWarning")


class Counting(nn.Module):
    """A small trained classifier (so ablating neurons raises its loss) that counts its forward calls."""

    def __init__(self, hidden=8, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(5, hidden), nn.Tanh(), nn.Linear(hidden, 3)).double()
        opt = torch.optim.Adam(self.net.parameters(), lr=0.05)
        X, y = (torch.cat(t) for t in zip(*_data()))
        for _ in range(60):
            opt.zero_grad()
            nn.functional.cross_entropy(self.net(X), y).backward()
            opt.step()
        self.eval()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(40, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    return [(X[:20], y[:20]), (X[20:], y[20:])]


def test_sweep_with_several_laws_and_training_compute():
    model, data = Counting(), _data()
    own = ChinchillaLaw(E=0.05, A=40.0, B=30.0, alpha=0.5, beta=0.45, name="own")
    res = ablation_sweep(model, neuron_basis(model, {"net.1": 8}), data, k=[0, 4, 8], order="most_important",
                         laws=[own, "kaplan"], n_params=1e4, tokens=1e6)
    table = res.equivalents
    assert table.laws == ("own", "kaplan") and res.law == "own"
    assert table.training_compute == pytest.approx(6e10)
    ref = res.original.loss
    for i, lv in enumerate(res.levels):
        row = table.for_law("own")[3 + i]
        assert row.loss == lv.loss
        assert lv.compute_equivalent == pytest.approx(float(compute_equivalent(lv.loss, ref, own)), rel=1e-12)
        assert lv.training_fraction == row.training_fraction
        c_star = float(own.compute_for_loss(lv.loss))
        assert lv.training_fraction == pytest.approx(c_star / 6e10, rel=1e-12)
    assert res.levels[0].compute_equivalent == 1.0
    text = str(res)
    assert "training fraction (Gao)" in text and "kaplan" in text and "training_fraction" in text
    back = AblationResult.from_dict(json.loads(res.to_json()))
    assert back.equivalents.laws == table.laws
    assert back.levels[-1].training_fraction == pytest.approx(res.levels[-1].training_fraction)


def test_a_level_no_better_than_trivial_is_nan_with_a_note_others_unchanged():
    model, data = Counting(), _data()
    basis = neuron_basis(model, {"net.1": 8})
    probe = ablation_sweep(model, basis, data, k=[0, 8], order="most_important")
    l0, l8 = probe.original.loss, probe.levels[1].loss
    assert l8 > l0
    trivial = 0.5 * (l0 + l8)
    law = ChinchillaLaw(E=0.5 * l0, A=40.0, B=30.0, alpha=0.5, beta=0.45, name="own")
    res = ablation_sweep(model, basis, data, k=[0, 2, 4, 8], order="most_important", laws=[law],
                         trivial_loss=trivial)
    rows = res.equivalents.for_law("own")[3:]
    assert any(lv.loss >= trivial for lv in res.levels) and any(lv.loss < trivial for lv in res.levels)
    for lv, row in zip(res.levels, rows):
        if lv.loss >= trivial:
            assert math.isnan(lv.compute_equivalent) and "no better than a trivial model" in row.note
        else:
            assert lv.compute_equivalent == pytest.approx(float(compute_equivalent(lv.loss, l0, law)), rel=1e-12)
    # a level below E (e.g. a splice that beats the law's floor): NaN and a note for that level only
    t = equivalents_table([l0 * 0.4, l8], l0, law)
    assert math.isnan(t.rows[0].frontier_fraction) and "irreducible loss E" in t.rows[0].note
    assert t.rows[1].frontier_fraction == pytest.approx(float(compute_equivalent(l8, l0, law)), rel=1e-12)


@pytest.mark.refuses("an ablation sweep whose original loss is below a law's E",
                     "refused after the reference pass, before any level is evaluated")
def test_reference_below_e_refused_before_levels():
    model, data = Counting(), _data()
    basis = neuron_basis(model, {"net.1": 8})
    law = ChinchillaLaw(E=50.0, A=40.0, B=30.0, alpha=0.5, beta=0.45, name="too-high")
    model.calls = 0
    ablation_sweep(model, basis, data, k=[0, 4, 8])
    full = model.calls
    model.calls = 0
    with pytest.raises(ScalingLawRangeError, match="too-high"):
        ablation_sweep(model, basis, data, k=[0, 4, 8], laws=[law])
    # refused after the reference pass: none of the 2 baselines and 3 levels (one call per batch each)
    assert model.calls <= full - 5 * len(data)


def test_score_splice_takes_laws_and_training_compute():
    model, data = Counting(), _data()
    law = ChinchillaLaw(E=0.05, A=40.0, B=30.0, alpha=0.5, beta=0.45, name="own")
    res = score_splice(model, "net.1", {"identity": nn.Identity(), "half": lambda h: 0.5 * h}, data,
                       laws=[law], training_compute=1e12)
    assert res.equivalents.laws == ("own",)
    assert res.levels[0].compute_equivalent == pytest.approx(1.0, abs=1e-12)
    assert res.levels[0].training_fraction == pytest.approx(float(law.compute_for_loss(res.original.loss)) / 1e12)
