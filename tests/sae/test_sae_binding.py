"""The planted binding benchmark's data, the R error's orientation, and the report's bookkeeping.

Not asserted here, because it does not hold: recovery of a planted R* from a random start (see
docs/concepts/sae.md, "matrix binding", for the measured errors)."""

from __future__ import annotations

import pytest
import torch

from wdecomp.errors import ShapeError
from wdecomp.sae.binding import binding_report, planted_binding, r_error
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
    assert rep.supported == (rep.fit_ratio <= rep.threshold)  # m = 6 > d = 4: the test is informative
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
