"""Compute- and parameter-equivalents: identity, monotonicity, errors, plot."""

import json

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from wdecomp.errors import ScalingLawRangeError
from wdecomp.scaling import (
    CHINCHILLA,
    EPOCH,
    KAPLAN,
    ComputeEquivalent,
    ComputeLaw,
    ExtrapolationWarning,
    ParameterEquivalent,
    compute_equivalent,
    parameter_equivalent,
    plot_frontier,
)

pytestmark = pytest.mark.filterwarnings("ignore::wdecomp.scaling.ExtrapolationWarning")
LAWS = [CHINCHILLA, EPOCH, KAPLAN, ComputeLaw(E=1.2, A=30.0, alpha=0.07)]
D = 1.4e12


@pytest.mark.parametrize("law", LAWS, ids=lambda law: law.name)
@pytest.mark.parametrize("ref", [1.9, 2.0, 2.5, 3.7])
def test_identity_is_exactly_one(law, ref):
    r = compute_equivalent(ref, ref, law)
    assert r.fraction == 1.0
    assert float(r) == 1.0
    assert r.compute == r.reference_compute


@pytest.mark.parametrize("law", [CHINCHILLA, EPOCH, KAPLAN], ids=lambda law: law.name)
def test_parameter_identity_is_exactly_one(law):
    ref = law.loss_floor(D) + 0.3
    assert parameter_equivalent(ref, ref, law, D).fraction == 1.0


def test_chinchilla_closed_form_ratio():
    # C_eq ratio = ((L_ref - E) / (L - E)) ** (1/gamma), gamma = alpha beta / (alpha + beta)
    gamma = 0.34 * 0.28 / 0.62
    r = compute_equivalent(2.0, 1.9, CHINCHILLA, training_compute=5.76e23)
    assert r.fraction == pytest.approx((0.21 / 0.31) ** (1 / gamma), rel=1e-12)
    assert r.training_fraction == pytest.approx(r.compute / 5.76e23, rel=1e-12)
    # N_eq ratio at fixed D = ((L_ref - E - B/D^beta) / (L - E - B/D^beta)) ** (1/alpha)
    fl = CHINCHILLA.loss_floor(D)
    p = parameter_equivalent(2.0, 1.95, CHINCHILLA, D, model_params=70e9)
    assert p.fraction == pytest.approx(((1.95 - fl) / (2.0 - fl)) ** (1 / 0.34), rel=1e-12)
    assert p.model_fraction == pytest.approx(p.params / 70e9, rel=1e-12)


def test_vectorised_matches_scalar():
    losses = np.array([1.95, 2.0, 2.2, 3.0])
    vec = compute_equivalent(losses, 1.9, EPOCH)
    assert isinstance(vec.fraction, np.ndarray)
    for i, loss in enumerate(losses):
        assert vec.fraction[i] == pytest.approx(compute_equivalent(loss, 1.9, EPOCH).fraction, rel=1e-14)
    with pytest.raises(TypeError):
        float(vec)


_loss = st.floats(min_value=0.01, max_value=8.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(law_idx=st.integers(0, len(LAWS) - 1), gaps=st.tuples(_loss, _loss, _loss))
def test_compute_equivalent_strictly_decreasing(law_idx, gaps):
    law = LAWS[law_idx]
    g1, g2, gr = gaps
    assume(abs(g1 - g2) > 1e-6 * max(g1, g2))
    lo, hi = sorted((law.irreducible_loss + g1, law.irreducible_loss + g2))
    ref = law.irreducible_loss + gr
    f = compute_equivalent(np.array([lo, hi]), ref, law).fraction
    assert f[0] > f[1]
    assert (compute_equivalent(lo, ref, law).fraction > 1.0) == (lo < ref)


@settings(max_examples=60, deadline=None)
@given(law_idx=st.integers(0, 2), gaps=st.tuples(_loss, _loss), log_d=st.floats(8.0, 13.0))
def test_parameter_equivalent_strictly_decreasing(law_idx, gaps, log_d):
    law = [CHINCHILLA, EPOCH, KAPLAN][law_idx]
    d = 10.0**log_d
    g1, g2 = gaps
    assume(abs(g1 - g2) > 1e-6 * max(g1, g2))
    floor = law.loss_floor(d)
    lo, hi = sorted((floor + g1, floor + g2))
    f = parameter_equivalent(np.array([lo, hi]), floor + 0.5, law, d).fraction
    assert f[0] > f[1]


@pytest.mark.parametrize("bad", [1.69, 1.5, -0.5, float("nan")])
def test_bad_losses_raise_naming_e(bad):
    with pytest.raises(ScalingLawRangeError, match=r"E=1\.69"):
        compute_equivalent(bad, 2.0, CHINCHILLA)
    with pytest.raises(ScalingLawRangeError, match=r"E=1\.69"):
        compute_equivalent(2.0, bad, CHINCHILLA)


def test_parameter_equivalent_below_floor_and_wrong_law():
    with pytest.raises(ScalingLawRangeError, match="floor"):
        parameter_equivalent(1.8, 2.0, CHINCHILLA, 1e9)  # floor at D=1e9 is 2.93
    with pytest.raises(TypeError, match="law of N and D"):
        parameter_equivalent(2.0, 1.9, ComputeLaw(E=1.0, A=10.0, alpha=0.1), D)


def test_bad_training_compute():
    with pytest.raises(ValueError, match="training_compute"):
        compute_equivalent(2.0, 1.9, CHINCHILLA, training_compute=-1.0)


@pytest.mark.filterwarnings("default::wdecomp.scaling.ExtrapolationWarning")
def test_outside_fitted_range_warns():
    with pytest.warns(ExtrapolationWarning, match="compute"):
        compute_equivalent(1.75, 1.72, CHINCHILLA)  # C_eq ~ 1e33 FLOPs


def test_results_print_and_serialise():
    r = compute_equivalent([2.0, 2.1], 1.9, CHINCHILLA, training_compute=5.76e23)
    assert isinstance(r, ComputeEquivalent)
    assert "compute fraction" in str(r)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["fraction"] == pytest.approx(list(r.fraction))
    p = parameter_equivalent(2.0, 1.95, CHINCHILLA, D)
    assert isinstance(p, ParameterEquivalent)
    assert "parameter fraction" in str(p)
    assert json.loads(json.dumps(p.to_dict()))["model_fraction"] is None


def test_plot_writes_png(tmp_path):
    path = tmp_path / "frontier.png"
    fig = plot_frontier(CHINCHILLA, {"original": 2.0, "ablated": 2.3}, path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    with pytest.raises(ScalingLawRangeError):
        plot_frontier(CHINCHILLA, {"impossible": 1.5})
