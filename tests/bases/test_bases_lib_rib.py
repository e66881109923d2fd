"""LIB's default equals rib's formulas, re-implemented independently in numpy (tests/_rib_reference.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _rib_reference import SeqMix, rib_mlp, rib_seq, tanh_mlp, to_np

from wdecomp.bases import interaction_basis

DT = torch.float64


def assert_same_coordinates(got: torch.Tensor, ref: np.ndarray, lam_got: torch.Tensor, lam_ref: np.ndarray) -> None:
    """Coordinates on the data (``(n, k)``) equal up to the sign of each direction; Lambdas equal."""
    got = to_np(got).reshape(-1, got.shape[-1])
    ref = ref.reshape(-1, ref.shape[-1])
    assert got.shape == ref.shape
    np.testing.assert_allclose(to_np(lam_got), lam_ref, rtol=1e-10, atol=1e-14 * abs(lam_ref).max())
    signs = np.sign(np.sum(got * ref, 0))
    signs[signs == 0] = 1
    err = np.abs(got * signs - ref).max() / np.abs(ref).max()
    assert err < 1e-10, err


def assert_same_inverse(lb, layer, d: int) -> None:
    """``C^+``: rib's rows of ``C_pinv`` equal wdecomp's inverse (up to sign), the constant's row too."""
    Cp = layer.C_pinv.copy()  # (k, d+1)
    Cp[0] *= np.sign(Cp[0, d])  # the constant direction's sign is arbitrary in rib too
    np.testing.assert_allclose(Cp[0, d], 1 / lb.constant, rtol=1e-10)
    np.testing.assert_allclose(Cp[0, :d], to_np(lb.center) / lb.constant, rtol=1e-10, atol=1e-14)
    ours = to_np(lb.inverse).T[1:]  # (k-1, d)
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


@pytest.mark.parametrize("seq", [False, True])
def test_components_of_the_default_basis_rewrite_exactly(seq):
    """Components built on a basis with a constant node compute the same function (1e-10)."""
    from wdecomp.components import decompose

    if seq:
        model = SeqMix().to(DT).eval()
        x = torch.randint(0, 7, (16, 3), generator=torch.Generator().manual_seed(2))
        layers = ["embed", "act", "lin2"]
    else:
        model = tanh_mlp()
        x = torch.randn(30, 4, dtype=DT, generator=torch.Generator().manual_seed(1))
        layers = ["1", "3", "4"]
    basis = interaction_basis(model, x, layers, drop_noninteracting=False)
    assert basis[layers[0]].constant is not None
    comps = decompose(model, basis, [(x, None)])
    assert comps.verify(model, [(x, None)]) < 1e-10


def test_stochastic_sources_exact_without_positions_and_close_with_them():
    """rib's stochastic sources: exact when the target has one position (phi^2 = 1), an unbiased
    estimate otherwise (512 sources on 3 positions: within 10% here)."""
    model = tanh_mlp()
    x = torch.randn(30, 4, dtype=DT, generator=torch.Generator().manual_seed(1))
    exact = interaction_basis(model, x, ["1", "3", "4"])
    est = interaction_basis(model, x, ["1", "3", "4"], stochastic_sources=3)
    for p in ("1", "3"):
        assert torch.allclose(est[p].eigenvalues, exact[p].eigenvalues, rtol=1e-10)
    seq = SeqMix().to(DT).eval()
    t = torch.randint(0, 7, (20, 3), generator=torch.Generator().manual_seed(2))
    exact = interaction_basis(seq, t, ["embed", "act", "lin2"])["embed"].eigenvalues
    est = interaction_basis(seq, t, ["embed", "act", "lin2"], stochastic_sources=512)["embed"].eigenvalues
    assert float((est - exact).abs().max() / exact.max()) < 0.1


def test_truncation_rib_keeps_by_absolute_value_as_ribs_eigendecompose():
    """``truncation="rib"``: eigenvalues taken by absolute value, sorted descending, kept above the
    absolute threshold (rib's ``eigendecompose`` + ``truncation_threshold``); a round-off-negative
    eigenvalue above the threshold in magnitude is kept, where ``"absolute"`` drops it."""
    from wdecomp.bases.interaction import _keep, _rib_abs

    evals = torch.tensor([3.0, 1e-16, -2e-12, -5.0], dtype=DT)
    evecs = torch.eye(4, dtype=DT)
    lam, vec = _rib_abs(evals, evecs, "rib")
    assert lam.tolist() == [5.0, 3.0, 2e-12, 1e-16] and vec[:, 0].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert _keep(lam, 1e-15, "rib").tolist() == [True, True, True, False]
    assert _keep(evals, 1e-15, "absolute").tolist() == [True, False, False, False]
    # end to end on the duplicated-neuron MLP (a singular Gram): every kept Lambda non-negative, above
    # the threshold, and descending after the constant node
    model = tanh_mlp(duplicate=True)
    x = torch.randn(30, 4, dtype=DT, generator=torch.Generator().manual_seed(1))
    rib = interaction_basis(model, (x, None), ["1", "3", "4"], truncation="rib", gram_threshold=1e-15,
                            interaction_threshold=1e-15)
    for point in ("1", "3"):
        lam = rib[point].eigenvalues
        assert bool((lam >= 0).all()) and bool((lam[1:].diff() <= 0).all())
        assert bool((lam > 1e-15).all())
