"""Published scaling laws: the numbers their papers print, inverses, JSON, range errors."""

import json
import math
import warnings
from dataclasses import replace

import numpy as np
import pytest
from scipy.optimize import brentq

from wdecomp.errors import ScalingLawRangeError
from wdecomp.scaling import (
    CHINCHILLA,
    CHINCHILLA_TEX,
    EPOCH,
    FLOPS_PER_PF_DAY,
    KAPLAN,
    ChinchillaLaw,
    ComputeLaw,
    ExtrapolationWarning,
    FittedRange,
    KaplanLaw,
    law_from_dict,
)

GOPHER_BUDGET = 5.76e23  # FLOPs: Gopher's (and Chinchilla's) training compute, Hoffmann et al.

pytestmark = pytest.mark.filterwarnings("ignore::wdecomp.scaling.ExtrapolationWarning")


# --- numbers printed in the papers --------------------------------------------------------


def test_chinchilla_loss_of_chinchilla_model():
    # L(70B, 1.4T) from eq. 10 with the printed constants: the widely quoted 1.94.
    loss = CHINCHILLA.loss(70e9, 1.4e12)
    assert round(loss, 2) == 1.94
    assert loss == pytest.approx(1.69 + 406.4 / 70e9**0.34 + 410.7 / 1.4e12**0.28, rel=1e-15)


def test_chinchilla_tex_constants_reproduce_approach3_allocation():
    # Hoffmann et al.: approach 3 gives a = 0.46, b = 0.54 (Table 2) and about 40B parameters at
    # Gopher's budget (section 3.3, Figure 1). Reproduced by the unrounded (TeX) exponents only.
    assert round(CHINCHILLA_TEX.exponent_a, 2) == 0.46
    assert round(CHINCHILLA_TEX.exponent_b, 2) == 0.54
    n_opt, d_opt = CHINCHILLA_TEX.optimal_allocation(GOPHER_BUDGET)
    assert round(n_opt / 1e9) == 40
    assert 6 * n_opt * d_opt == pytest.approx(GOPHER_BUDGET, rel=1e-12)


def test_chinchilla_rounded_constants_do_not_reproduce_40b():
    # Documented limitation (Besiroglu et al. 2024, section 3): rounding alpha, beta to two digits
    # moves a to 0.4516 and N_opt(Gopher budget) to 32.2B.
    assert CHINCHILLA.exponent_a == pytest.approx(0.28 / 0.62, rel=1e-15)
    assert round(CHINCHILLA.exponent_a, 2) == 0.45
    n_opt, d_opt = CHINCHILLA.optimal_allocation(GOPHER_BUDGET)
    assert n_opt / 1e9 == pytest.approx(32.19, abs=0.01)
    assert 6 * n_opt * d_opt == pytest.approx(GOPHER_BUDGET, rel=1e-12)


def test_epoch_exponent_and_allocation():
    # Besiroglu et al. 2024 print a = beta/(alpha+beta) = 0.5126 for their fit, "compatible with"
    # Hoffmann's approaches 1-2 (N_opt ~ 67-70B, ~20 tokens/parameter at the Gopher budget).
    assert round(EPOCH.exponent_a, 4) == 0.5126
    n_opt, d_opt = EPOCH.optimal_allocation(GOPHER_BUDGET)
    assert 60e9 < n_opt < 80e9
    assert 15 < d_opt / n_opt < 25


def test_kaplan_special_point():
    # Kaplan et al. eq. 6.8: the compute frontier reaches L* ~ 1.7 nats at C* ~ 1e4 PF-days
    # ("highly uncertain, varying by an order of magnitude"). Rounded constants: 7.6e3 PF-days.
    # C_min in PF-days: actual compute / (batch_factor * 8.64e19), batch_factor = 2 by default.
    c_pf = KAPLAN.compute_for_loss(1.7) / FLOPS_PER_PF_DAY / KAPLAN.batch_factor
    assert c_pf == pytest.approx(3.1e8 * 1.7 ** (-1 / 0.05), rel=1e-12)
    assert round(math.log10(c_pf)) == 4
    # and the frontier at C_min = 1 PF-day is (3.1e8)**0.05
    assert KAPLAN.optimal_loss(2 * FLOPS_PER_PF_DAY) == pytest.approx(3.1e8**0.05, rel=1e-12)
    kaplan_one = replace(KAPLAN, batch_factor=1.0)
    assert kaplan_one.optimal_loss(FLOPS_PER_PF_DAY) == pytest.approx(3.1e8**0.05, rel=1e-12)


def test_kaplan_loss_limits():
    # eq. 1.5 reduces to L(N) = (N_c/N)**alpha_N as D -> inf and to (D_c/D)**alpha_D as N -> inf
    n = 1e9
    assert KAPLAN.loss(n, 1e40) == pytest.approx((8.8e13 / n) ** 0.076, rel=1e-9)
    assert KAPLAN.loss(1e60, 1e10) == pytest.approx((5.4e13 / 1e10) ** 0.095, rel=1e-9)
    n_opt, d_opt = replace(KAPLAN, batch_factor=1.0).optimal_allocation(FLOPS_PER_PF_DAY)
    assert n_opt == pytest.approx(1.3e9, rel=1e-12)  # N_opt = 1.3e9 C_min**0.73 at 1 PF-day
    assert d_opt == pytest.approx(2e10, rel=1e-12)  # D_opt = 2e10 C_min**0.27 (Table 6)
    # Table 6's allocation spends 6 N D = 1.56e20 FLOPs per PF-day of C_min (0.90 of 2 C_min)
    n2, d2 = KAPLAN.optimal_allocation(2 * 10 * FLOPS_PER_PF_DAY)  # C_min = 10 PF-days
    assert d2 == pytest.approx(2e10 * 10**0.27, rel=1e-12)
    spent = 6 * n2 * d2 / (2 * 10 * FLOPS_PER_PF_DAY)
    assert spent == pytest.approx(6 * 1.3e9 * 2e10 / (2 * FLOPS_PER_PF_DAY), rel=1e-12)


def test_kaplan_optimal_size_at_1e21_with_hoffmann_factor():
    # Hoffmann et al. 2022 appendix D.4 compare with Kaplan at actual compute = 2 C_min:
    # the Kaplan-optimal model at 1e21 FLOPs has 4.68B parameters there.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExtrapolationWarning)
        n_opt, _ = KAPLAN.optimal_allocation(1e21)
        n_one, _ = replace(KAPLAN, batch_factor=1.0).optimal_allocation(1e21)
    assert n_opt == pytest.approx(4.68e9, rel=0.02)
    assert n_one == pytest.approx(7.77e9, rel=0.01)  # reading C_min as actual compute


@pytest.mark.refuses(
    "Kaplan law with batch_factor < 1", "actual compute is batch_factor x C_min, never less than C_min"
)
def test_kaplan_batch_factor_below_one_refused():
    with pytest.raises(ValueError, match="batch_factor"):
        replace(KAPLAN, batch_factor=0.5)


# --- frontier and inverses ----------------------------------------------------------------


@pytest.mark.parametrize("law", [CHINCHILLA, CHINCHILLA_TEX, EPOCH])
def test_allocation_minimises_loss_on_isoflop(law):
    c = 1e21
    n_opt, d_opt = law.optimal_allocation(c)
    assert law.loss(n_opt, d_opt) == pytest.approx(law.optimal_loss(c), rel=1e-12)
    for factor in (0.9, 1.1, 0.5, 2.0):
        n = n_opt * factor
        assert law.loss(n, c / (6 * n)) > law.loss(n_opt, d_opt)


@pytest.mark.parametrize("law", [CHINCHILLA, EPOCH, KAPLAN])
def test_compute_for_loss_inverts_frontier(law):
    losses = np.array([1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0])
    losses = losses[losses > law.irreducible_loss + 1e-3]
    c = law.compute_for_loss(losses)
    np.testing.assert_allclose(law.optimal_loss(c), losses, rtol=1e-9)


def test_compute_for_loss_matches_brentq_on_the_frontier():
    # closed form vs a 1-D root find of min_N L(N, C/(6N)) = target, in log space
    law = EPOCH
    target = 2.3
    c = law.compute_for_loss(target)
    logc = brentq(lambda lc: law.optimal_loss(math.exp(lc)) - target, 20.0, 120.0, xtol=1e-14)
    assert math.log(c) == pytest.approx(logc, rel=1e-10)


@pytest.mark.parametrize("law", [CHINCHILLA, EPOCH, KAPLAN])
def test_params_for_loss_inverts_loss(law):
    d = 3e11
    floor = law.loss_floor(d)
    losses = floor + np.array([1e-3, 0.01, 0.1, 0.5, 1.0, 2.0])
    n = law.params_for_loss(losses, d)
    np.testing.assert_allclose(law.loss(n, d), losses, rtol=1e-9)


def test_scalar_in_scalar_out_array_in_array_out():
    assert isinstance(CHINCHILLA.loss(1e9, 1e10), float)
    assert isinstance(CHINCHILLA.compute_for_loss(2.5), float)
    out = CHINCHILLA.loss(np.array([1e9, 2e9]), 1e10)
    assert isinstance(out, np.ndarray) and out.shape == (2,)


# --- JSON ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "law",
    [CHINCHILLA, CHINCHILLA_TEX, EPOCH, KAPLAN, ComputeLaw(E=1.0, A=50.0, alpha=0.1, compute_unit="PF-days")],
)
def test_json_round_trip(law):
    d = json.loads(json.dumps(law.to_dict()))
    back = law_from_dict(d)
    assert back == law
    assert type(back).from_dict(d) == law


def test_from_dict_rejects_unknown_kind_and_wrong_class():
    with pytest.raises(ValueError, match="unknown scaling-law kind"):
        law_from_dict({"kind": "nope", "params": {}})
    with pytest.raises(TypeError):
        KaplanLaw.from_dict(CHINCHILLA.to_dict())


# --- bad input and range warnings ---------------------------------------------------------


@pytest.mark.parametrize("bad", [1.69, 1.0, 0.0, -2.0, float("nan"), float("inf")])
def test_unreachable_or_invalid_loss_raises_naming_e(bad):
    with pytest.raises(ScalingLawRangeError, match=r"E=1\.69"):
        CHINCHILLA.compute_for_loss(bad)


def test_loss_below_floor_at_d_raises():
    floor = CHINCHILLA.loss_floor(1e10)
    assert floor == pytest.approx(1.69 + 410.7 / 1e10**0.28)
    with pytest.raises(ScalingLawRangeError, match="floor"):
        CHINCHILLA.params_for_loss(floor, 1e10)
    with pytest.raises(ScalingLawRangeError, match="floor"):
        CHINCHILLA.params_for_loss(np.array([floor + 0.1, floor - 0.01]), 1e10)


def test_scaling_law_range_error_is_a_value_error():
    assert issubclass(ScalingLawRangeError, ValueError)


def test_bad_n_d_c_raise():
    with pytest.raises(ScalingLawRangeError, match="positive"):
        CHINCHILLA.loss(-1.0, 1e10)
    with pytest.raises(ScalingLawRangeError, match="finite"):
        CHINCHILLA.optimal_allocation(float("nan"))


def test_invalid_constants_rejected():
    with pytest.raises(ValueError):
        ChinchillaLaw(E=1.0, A=-1.0, B=1.0, alpha=0.3, beta=0.3)


@pytest.mark.filterwarnings("error::wdecomp.scaling.ExtrapolationWarning")
def test_outside_fitted_range_warns_inside_does_not():
    law = ChinchillaLaw(
        E=1.7,
        A=400.0,
        B=400.0,
        alpha=0.34,
        beta=0.28,
        fitted_range=FittedRange(n_min=1e7, n_max=1e9, d_min=1e9, d_max=1e11),
    )
    law.loss(1e8, 1e10)  # inside: no warning (warnings are errors here)
    with pytest.warns(ExtrapolationWarning, match="above the range"):
        law.loss(1e10, 1e10)
    with pytest.warns(ExtrapolationWarning, match="below the range"):
        law.loss(1e8, 1e8)


def test_warning_points_at_caller():
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        CHINCHILLA.compute_for_loss(1.75)  # C_eq ~ 1e33 FLOPs, far above the fitted range
    assert rec and all(issubclass(w.category, ExtrapolationWarning) for w in rec)
    assert rec[0].filename == __file__
