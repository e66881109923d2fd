"""The planted binding benchmark: its data, the R error's orientation, the report's bookkeeping,
recovery of a general planted R* and the flagged control.

Not asserted, because it does not hold: the 0.05 target (measured 0.078), and recovery of the
orthogonal R* at seed 0 (the plain SAE that seeds the search misses features; see
docs/concepts/sae.md, "matrix binding")."""

from __future__ import annotations

import pytest
import torch

from wdecomp.errors import ShapeError
from wdecomp.sae.binding import binding_report, planted_binding, r_error, refit_binding
from wdecomp.sae.model import BindingSAE


@pytest.mark.parametrize("kind", ["orthogonal", "general"])
def test_planted_data_hold_the_planted_structure(kind: str) -> None:
    P = planted_binding(500, 6, 9, R=kind, singular_values=(0.5, 2.0), noise=0.0, seed=3)
    assert torch.allclose(P.E, P.R @ P.D, rtol=0, atol=1e-15) and P.bound
    sv = torch.linalg.svdvals(P.R)
    if kind == "orthogonal":
        assert torch.allclose(sv, torch.ones(6, dtype=torch.float64), atol=1e-12)
    else:
        assert torch.allclose(sv, torch.linspace(2.0, 0.5, 6, dtype=torch.float64), atol=1e-12)
    # noise-free: every sample is a_i d_i + b_j R* d_j with a, b in [0.8, 1.2]; find (i, j) by search
    X = P.X.double()
    for x in X[:20]:
        best = min(float(torch.linalg.lstsq(torch.stack([P.D[:, i], P.E[:, j]], 1), x[:, None]).residuals.sum())
                   for i in range(9) for j in range(9))
        assert best < 1e-9
    X2 = planted_binding(500, 6, 9, R=kind, singular_values=(0.5, 2.0), noise=0.0, seed=3).X
    assert torch.equal(P.X, X2)  # seeded
    C = planted_binding(500, 6, 9, R=kind, bound=False, seed=3)
    assert not C.bound and torch.allclose(C.E.norm(dim=0), torch.ones(9, dtype=torch.float64))
    assert (C.E - C.R @ C.D).norm() > 1.0


def test_planted_stream_is_independent_of_the_sae_initialisation() -> None:
    P = planted_binding(10, 6, 9, seed=0)
    sae = BindingSAE(6, 9, slots=2, k=2, seed=0, dtype=torch.float64)
    assert r_error(sae.R, P.R)[0] > 0.5  # the SAE does not start at the planted answer


def test_r_error_orientation() -> None:
    g = torch.Generator().manual_seed(0)
    R = torch.randn(5, 5, generator=g, dtype=torch.float64) + 3 * torch.eye(5, dtype=torch.float64)
    assert r_error(R, R) == (0.0, "R")
    err, orient = r_error(torch.linalg.inv(R), R)
    assert orient == "R^-1" and err < 1e-14
    E = 0.01 * torch.randn(5, 5, generator=g, dtype=torch.float64)
    assert r_error(R + E, R)[0] == pytest.approx(float(E.norm() / R.norm()), rel=1e-12)


def test_report_bookkeeping() -> None:
    P = planted_binding(2048, 4, 6, seed=1)
    rep = binding_report(P.X, n_free=6, k=2, steps=5, batch_size=128, R_true=P.R)
    assert rep.decoder_params_binding == 6 * 4 + 16 and rep.decoder_params_plain == 2 * 6 * 4
    assert rep.budget_saved == 48 - 40
    assert sum(rep.slot_usage) == pytest.approx(1.0) and len(rep.slot_usage) == 2
    assert rep.fit_ratio == pytest.approx(rep.fvu_binding / rep.fvu_plain)
    assert rep.l0_binding <= 2 and rep.l0_plain <= 2
    assert rep.r_error == r_error(rep.binding.R, P.R)[0]
    # m = 6 > d = 4: the test is informative
    assert rep.dict_residual is not None
    assert rep.supported == (rep.fit_ratio <= rep.threshold and rep.dict_residual <= 1e-3)
    text = str(rep)
    assert "fit ratio" in text and "relative error vs planted R*" in text
    small = binding_report(P.X, n_free=3, k=2, steps=2, batch_size=128)
    assert not small.supported and "m = 3 <= d = 4" in small.notes[0]


@pytest.mark.refuses("a binding SAE warm start whose shape differs from the requested one",
                     "n_free, slots, k and the width must match the report's")
def test_init_mismatch_refused() -> None:
    P = planted_binding(512, 4, 6, seed=1)
    with pytest.raises(ShapeError, match="init has n_free=5"):
        binding_report(P.X, n_free=6, k=2, steps=2, init=BindingSAE(4, 5, k=2))


def test_refit_binding_returns_to_the_planted_map() -> None:
    P = planted_binding(20000, 16, 24, R="general", noise=0.0, seed=4)
    bind = BindingSAE(16, 24, k=2, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        bind.D.copy_(P.D)
        bind.R.copy_(P.R + 0.05 * torch.randn(16, 16, generator=g, dtype=torch.float64))
        W = torch.cat([P.D, P.E], 1)
        # an encoder that picks the right latents: the dual frame restricted to one slot at a time
        bind.W_enc.copy_(torch.linalg.pinv(W))
    before = r_error(bind.R, P.R)[0]
    hist = refit_binding(bind, P.X.double(), rounds=4)
    after = r_error(bind.R, P.R)[0]
    # measured: 0.194 -> 0.068 (the pseudo-inverse encoder picks some rows' latents wrongly)
    assert before > 0.15 and after < 0.08 and hist[-1] <= hist[0] + 1e-12


@pytest.fixture(scope="module")
def general_reports():
    """The planted benchmark at d = 16, m = 24 (40,000 activations, 6000 steps, seed 0): ~20 s each
    under load."""
    out = {}
    for bound in (True, False):
        P = planted_binding(40000, 16, 24, R="general", bound=bound, seed=0)
        out[bound] = (P, binding_report(P.X, n_free=24, k=2, steps=6000, batch_size=256, lr=3e-3, seed=0,
                                        R_true=P.R))
    return out


def test_general_planted_map_is_recovered(general_reports) -> None:
    P, rep = general_reports[True]
    assert rep.r_error is not None and rep.r_error < 0.10  # measured 0.078 (target 0.05: not met)
    assert rep.dict_residual is not None and rep.dict_residual < 1e-3  # measured 1.3e-4
    assert rep.fit_ratio < 1.05  # measured 1.016: as good as a plain SAE with twice the latents
    assert rep.l0_binding <= 2 and rep.l0_plain <= 2 and rep.supported


def test_no_binding_control_is_flagged(general_reports) -> None:
    _, rep = general_reports[False]
    assert rep.dict_residual is not None and rep.dict_residual > 1e-3  # measured 3.3e-3
    assert rep.fit_ratio > rep.threshold  # measured 1.64 against 1.5
    assert not rep.supported and "NOT supported" in str(rep)
