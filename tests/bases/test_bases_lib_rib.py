"""LIB's default equals rib's formulas, re-implemented independently in numpy (tests/_rib_reference.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _rib_reference import (
    THR,
    SeqMix,
    _ones,
    eigendecompose,
    m_dash,
    rib_layer_uncentred,
    rib_mlp,
    rib_mlp_attribution,
    rib_quadrature,
    rib_seq,
    rib_seq_attribution,
    tanh_mlp,
    to_np,
)

from wdecomp import hooks
from wdecomp.bases import interaction_basis
from wdecomp.bases.base import LayerBasis
from wdecomp.errors import ArgumentError, ShapeError

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


# ----------------------------------------------------------------------------- rib's center: false
def _mlp_data():
    model = tanh_mlp()
    x = torch.randn(30, 4, dtype=DT, generator=torch.Generator().manual_seed(1))
    return model, x


def _seq_data():
    model = SeqMix().to(DT).eval()
    return model, torch.randint(0, 7, (20, 3), generator=torch.Generator().manual_seed(2))


def _mlp_acts(model, x):
    f1 = model[1](model[0](x))
    return {"1": f1.detach(), "3": model[3](model[2](f1)).detach()}


def _seq_acts(model, t):
    e = model.embed(t)
    return {"embed": e.detach(), "act": model.act(torch.einsum("pq,bqd->bpd", model.K, model.lin1(e))).detach()}


def assert_same_folded(lb, layer) -> None:
    """rib's ``C`` (``(d+1, k)``, ``f_hat = [f, 1] @ C``) and ``C_pinv`` equal the folded maps ``[C | b]``
    and ``[A; r]`` of the general form, up to the sign of each direction, direction by direction relative
    to its largest entry: to 1e-10, or to ``1e-14 Lambda_max / gap_j`` where that is larger. The second
    bound is round-off: without the constant masked, ``M`` keeps the constant's large entries, so a
    direction of small ``Lambda_j`` next to a small gap ``gap_j = min_k |Lambda_j - Lambda_k|`` is fixed
    only to about ``eps ||M|| / gap_j`` (on the duplicated-neuron MLP, ``Lambda = 3.4e-9`` with a gap of
    ``5.2e-6``: its ``C^+`` column agrees to 3.6e-11, and to 1.0e-10 when the same data come in three
    batches; bound 9.4e-10). For the attribution formulas (``layer.cond`` given) the directions are ``M``'s
    eigenvectors but ``Lambda`` is not ``M``'s eigenvalue, so ``gap_j`` is ``M``'s: ``1e-14 ||M|| / gap_j``
    (on the duplicated-neuron MLP uncentred, ``||M|| / gap`` reaches 1e7 at the smallest kept direction; the
    reference against itself on the same data in another order differs there by 2.2e-9, relative to
    ``C^+``'s largest entry)."""
    C = to_np(torch.cat([lb.transform, lb.const_column[:, None]], 1)).T  # (d+1, k), rib's layout
    A = to_np(torch.cat([lb.inverse, lb.const_row[None]], 0)).T  # (k, d+1)
    lam = layer.Lambda
    gap = np.array([np.abs(np.delete(lam, j) - lam[j]).min() if len(lam) > 1 else lam[j] for j in range(len(lam))])
    # the attribution formulas' directions are M's eigenvectors (Lambda is not M's eigenvalue): their gaps
    tol = np.maximum(1e-10, 1e-14 * (lam.max() / gap if layer.cond is None else layer.cond))
    signs = np.sign(np.sum(C * layer.C, 0))
    for got, ref in ((C * signs[None], layer.C), (A.T * signs[None], layer.C_pinv.T)):
        err = np.abs(got - ref).max(0) / np.abs(ref).max(0)
        assert (err < tol).all(), (err, tol)


@pytest.mark.parametrize("duplicate", [False, True])
def test_rib_uncentred_equals_rib_on_mlp(duplicate):
    """variant='rib-uncentred' is rib's center=false: coordinates, Lambda, C and C+ of the numpy
    reference (rib_layer_uncentred) to 1e-10; no node is constant."""
    model = tanh_mlp(duplicate=duplicate)
    x = torch.randn(30, 4, dtype=DT, generator=torch.Generator().manual_seed(1))
    basis = interaction_basis(model, (x, None), ["1", "3", "4"], variant="rib-uncentred")
    assert basis.info["center"] is False and basis.info["constant"] is True
    ref, _, _ = rib_mlp(model, x, center=False)
    for point, f in _mlp_acts(model, x).items():
        layer, xr = ref[point]
        lb = basis[point]
        assert lb.constant is None and lb.center is None and lb.folded and lb.size == len(layer.Lambda)
        assert_same_coordinates(lb.to_coordinates(f), xr @ layer.C, lb.eigenvalues, layer.Lambda)
        assert_same_folded(lb, layer)
    assert basis["1"].size == 6  # of the 7 folded directions: M' has rank 6 (5 tanh rows + the constant's)
    assert not basis["4"].folded and torch.equal(basis["4"].transform, torch.eye(3, dtype=DT))


def test_rib_uncentred_equals_rib_on_sequence_model():
    model, t = _seq_data()
    basis = interaction_basis(model, [(t[:12],), (t[12:],)], ["embed", "act", "lin2"], variant="rib-uncentred")
    ref, _, _ = rib_seq(model, t, center=False)
    for point, f in _seq_acts(model, t).items():
        layer, xr = ref[point]
        lb = basis[point]
        assert lb.constant is None and lb.folded
        assert_same_coordinates(lb.to_coordinates(f), xr.reshape(-1, xr.shape[-1]) @ layer.C, lb.eigenvalues,
                                layer.Lambda)
        assert_same_folded(lb, layer)


def test_rib_uncentred_last_layer_is_ribs_identity_on_the_folded_activation():
    """A last node layer that is not the output: rib's C = None on [f, 1], so c = [f; s] (the constant
    last, no node marked constant); the layer before it is LIB of M' = E J^T J, J = d[f3; s]/d[f1; s]."""
    model, x = _mlp_data()
    basis = interaction_basis(model, x, ["1", "3"], variant="rib-uncentred")
    acts = _mlp_acts(model, x)
    lb = basis["3"]
    assert lb.folded and lb.constant is None
    assert np.array_equal(to_np(lb.to_coordinates(acts["3"])), _ones(to_np(acts["3"])))
    _, J13x, _ = rib_mlp(model, x, center=False)
    x1 = _ones(to_np(acts["1"]))
    layer = rib_layer_uncentred(x1, m_dash(J13x(1.0)), THR)
    assert_same_coordinates(basis["1"].to_coordinates(acts["1"]), x1 @ layer.C, basis["1"].eigenvalues, layer.Lambda)
    assert_same_folded(basis["1"], layer)


def test_rib_uncentred_pca_is_ribs_uncentred_svd():
    """method='pca' in this mode is rib's basis_formula='svd' with center=false: C = U, the eigenvectors
    of the Gram matrix of [f, 1], eigenvalues D."""
    model, x = _mlp_data()
    basis = interaction_basis(model, x, ["1", "3", "4"], method="pca", variant="rib-uncentred")
    x1 = _ones(to_np(_mlp_acts(model, x)["1"]))
    D, U = eigendecompose(x1.T @ x1 / len(x1))
    assert_same_coordinates(basis["1"].to_coordinates(_mlp_acts(model, x)["1"]), x1 @ U, basis["1"].eigenvalues, D)
    # rotate_final=True: the last node layer (not the output) is rotated the same way
    last = interaction_basis(model, x, ["1", "3"], variant="rib-uncentred", rotate_final=True)["3"]
    x3 = _ones(to_np(_mlp_acts(model, x)["3"]))
    D, U = eigendecompose(x3.T @ x3 / len(x3))
    assert last.folded and last.constant is None
    assert_same_coordinates(last.to_coordinates(_mlp_acts(model, x)["3"]), x3 @ U, last.eigenvalues, D)


@pytest.mark.parametrize("seq", [False, True])
def test_rib_uncentred_rewrites_exactly(seq, tmp_path):
    """Through the basis and back at every layer, and as rewritten components (the folded producers, the
    MLP's Linear '2' and the sequence model's embedding, included), the model computes the same outputs
    (1e-10); s = r . c is 1 on the data; the components save and load unchanged."""
    from wdecomp.components import decompose, load_components

    model, x = _seq_data() if seq else _mlp_data()
    layers = ["embed", "act", "lin2"] if seq else ["1", "2", "3", "4"]
    basis = interaction_basis(model, x, layers, variant="rib-uncentred", drop_noninteracting=False)
    ref = model(x)
    acts = hooks.run(model, x, read=layers)[1]
    for point in layers[:-1]:
        lb = basis[point]
        assert float((lb.scale_of(lb.to_coordinates(acts[point])) - 1).abs().max()) < 1e-10
        out, _ = hooks.run(model, x, write={point: lambda f, lb=lb: lb.from_coordinates(lb.to_coordinates(f))})
        assert float((out - ref).abs().max()) < 1e-10
    comps = decompose(model, basis, [(x, None)])
    assert comps.verify(model, [(x, None)]) < 1e-10
    loaded = load_components(comps.save(tmp_path / "c.safetensors"), model)
    for point in layers:
        a, b = basis[point], loaded.basis[point]
        for name in ("transform", "inverse", "const_column", "const_row"):
            u, v = getattr(a, name), getattr(b, name)
            assert (u is None and v is None) or torch.equal(u, v)
    assert loaded.verify(model, [(x, None)]) < 1e-10


@pytest.mark.parametrize("seq, point", [(False, "1"), (False, "2"), (True, "embed")])
def test_rib_uncentred_pieces_remove_the_folded_coordinate(seq, point):
    """Removing components S from the weights takes ``A_S c_S = A_S (C_S f + b_S)`` out of the activation:
    on the consuming Linear (the MLP's '1'), the producing Linear with its bias (the MLP's '2') or the
    producing Embedding (the sequence model's 'embed')."""
    from wdecomp.components import decompose

    model, x = _seq_data() if seq else _mlp_data()
    layers = ["embed", "act", "lin2"] if seq else ["1", "2", "3", "4"]
    basis = interaction_basis(model, x, layers, variant="rib-uncentred", drop_noninteracting=False)
    comps = decompose(model, basis, [(x, None)])
    assert comps.adjacency[point]["producer" if point != "1" else "consumers"]
    idx = [0, 2]
    projected = comps.projected_model(model, keep=lambda c: not (c.layer == point and c.index in idx))
    lb = basis[point]
    i = torch.tensor(idx)

    def removed(f):
        return f - (f @ lb.transform[i].T + lb.const_column[i]) @ lb.inverse[:, i].T

    expected, _ = hooks.run(model, x, write={point: removed})
    assert float((projected(x) - expected).abs().max()) < 1e-10
    assert float((expected - model(x)).abs().max()) > 1e-3  # the removal changes the outputs


def test_rib_uncentred_activation_ablation_and_truncation():
    """An activation edit of a folded basis is ``f - A_S (c_S(f) - c_S(f~))`` on ``f`` (the folded constant
    stays 1 at the hook); compare's LIB-k keeps ``A_S (C_S f + b_S)``."""
    from wdecomp.ablation.edits import BatchContext, activation_edit
    from wdecomp.ablation.methods import get_method
    from wdecomp.compare import truncation

    model, x = _mlp_data()
    basis = interaction_basis(model, x, ["1", "3", "4"], variant="rib-uncentred", drop_noninteracting=False)
    lb, f = basis["1"], _mlp_acts(model, x)["1"]
    idx = torch.tensor([1, 3, 4])
    c = lb.to_coordinates(f)
    mean = f.mean(0)
    for name, stand in (("zero", torch.zeros_like(f)), ("mean", mean.expand_as(f))):
        edit = activation_edit(lb, idx, get_method(name), mean, BatchContext(), DT, f.device)
        c_new = c.clone()
        c_new[:, idx] = lb.to_coordinates(stand)[:, idx]
        assert float((edit(f) - lb.from_coordinates(c_new)).abs().max()) < 1e-12
    keep = torch.argsort(lb.eigenvalues, descending=True)[:3]
    c_k = torch.zeros_like(c)
    c_k[:, keep] = c[:, keep]
    assert float((truncation(lb, 3)(f) - lb.from_coordinates(c_k)).abs().max()) < 1e-12


@pytest.mark.refuses("method='jacobian' with the constant folded in uncentred (variant='rib-uncentred', "
                     "constant=True)", "the Jacobian control has no constant node and no folded form: "
                     "ArgumentError says to pass constant=False")
def test_jacobian_control_has_no_uncentred_folded_form():
    model, x = _mlp_data()
    with pytest.raises(ArgumentError, match="rib-uncentred"):
        interaction_basis(model, x, ["1", "3", "4"], method="jacobian", variant="rib-uncentred", constant=True)
    ctrl = interaction_basis(model, x, ["1", "3", "4"], method="jacobian", variant="rib-uncentred")
    assert not any(ctrl[p].folded for p in ("1", "3"))  # without constant=True: the control, no constant


@pytest.mark.refuses("a LayerBasis with only one of const_column / const_row, or with them and a centre",
                     "the general folded form needs both (c = C f + b s, s = r . c) and has no centre: ShapeError")
def test_general_folded_form_needs_both_maps():
    eye, ones = torch.eye(2, dtype=DT), torch.ones(2, dtype=DT)
    with pytest.raises(ShapeError, match="together"):
        LayerBasis("x", eye, eye, ones, const_column=ones)
    with pytest.raises(ShapeError, match="no constant node and no centre"):
        LayerBasis("x", eye, eye, ones, center=ones, const_column=ones, const_row=ones)
    with pytest.raises(ShapeError, match="expected"):
        LayerBasis("x", eye, eye, ones, const_column=torch.ones(3, dtype=DT), const_row=ones)


def _conv_net(pad: int) -> torch.nn.Module:
    """Conv2d -> ReLU -> Conv2d -> ReLU -> Flatten -> Linear, float64, on 1 x 6 x 6 images; the second
    convolution 3 x 3 with zero padding (``pad=1``) or 1 x 1 without (the positions kept either way, so
    the folded constant scales its bias pixel by pixel)."""
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 1 + 2 * pad, padding=pad),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).to(DT).eval()


@pytest.mark.parametrize("point", ["0", "1", "3"])
def test_rib_uncentred_channel_components_rewrite_and_remove_exactly(point):
    """A channel basis (every pixel a position) of a conv net: the rewrite (the producing convolution
    folded to C W, C b + b_c) computes the same outputs (1e-10); removing component i in weight space
    (producer conv '0', unpadded 1 x 1 consuming conv '1', Flatten -> Linear '3') equals writing
    ``f - A_i (C_i f + b_i)`` at every pixel."""
    from wdecomp.components import decompose

    m = _conv_net(pad=0)
    X = torch.randn(12, 1, 6, 6, dtype=DT, generator=torch.Generator().manual_seed(1))
    basis = interaction_basis(m, [(X, None)], ["0", "1", "3", "5"], variant="rib-uncentred",
                              drop_noninteracting=False)
    comps = decompose(m, basis, [(X, None)])
    assert comps.verify(m, [(X, None)]) < 1e-10
    lb, i = basis[point], 1
    projected = comps.projected_model(m, keep=lambda c: (c.layer, c.index) != (point, i))
    _, acts = hooks.run(m, X, read=[point])
    f = acts[point]
    coord = torch.einsum("c,bchw->bhw", lb.transform[i], f) + lb.const_column[i]
    ref, _ = hooks.run(m, X, write={point: f - torch.einsum("c,bhw->bchw", lb.inverse[:, i], coord)})
    assert float(coord.abs().max()) > 1e-3
    assert float((projected(X) - ref).detach().abs().max()) < 1e-10 * float(ref.detach().abs().max())


@pytest.mark.refuses("weight-space pieces of a rib-uncentred channel basis read by a zero-padded convolution",
                     "the folded constant's contribution differs at the border and is no bias: ShapeError names "
                     "the mode; the rewrite itself stays exact")
def test_rib_uncentred_zero_padded_consumer_refuses_pieces_but_rewrites():
    from wdecomp.components import decompose

    m = _conv_net(pad=1)
    X = torch.randn(12, 1, 6, 6, dtype=DT, generator=torch.Generator().manual_seed(1))
    basis = interaction_basis(m, [(X, None)], ["0", "1", "3", "5"], variant="rib-uncentred")
    comps = decompose(m, basis, [(X, None)])
    assert comps.verify(m, [(X, None)]) < 1e-10
    with pytest.raises(ShapeError, match="rib-uncentred"):
        comps.project(m)


# ----------------------------------------------------------------------------- rib's attribution formulas
ATTRIBUTION_RULES = [("gauss-legendre", 1), ("gauss-legendre", 3), ("trapezoidal", 3)]  # (rule, rib n_intervals+1)


def _rules(formula):
    """rib's integration settings: its defaults (``gradient``, ``n_intervals=0``) where the formula allows
    them, Gauss-Legendre with ``n_intervals`` 0 and 2, trapezoidal with 2."""
    return ATTRIBUTION_RULES + ([("gradient", 1)] if formula == "(1-0)*alpha" else [])


def assert_same_centred_C(lb, layer, d: int) -> None:
    """rib's ``C`` (``(d+1, k)``) of a centred layer: the constant's column is ``Lambda_0^{1/2}`` on the folded
    ``1`` only; the others are wdecomp's transform rows, with ``-mu . C`` on the ``1`` (up to sign)."""
    C = layer.C.copy()
    C[:, 0] *= np.sign(C[d, 0])
    np.testing.assert_allclose(C[d, 0], lb.constant, rtol=1e-10)
    assert np.abs(C[:d, 0]).max() < 1e-14 * lb.constant
    ours = to_np(lb.transform).T[:, 1:]  # (d, k-1)
    ours = np.concatenate([ours, -to_np(lb.center)[None] @ ours])  # the folded 1's row: -mu . C
    theirs = C[:, 1:]
    signs = np.sign(np.sum(ours * theirs, 0))[None]
    assert np.abs(ours * signs - theirs).max() < 1e-10 * np.abs(theirs).max()


def _assert_attribution_layer(lb, layer, f, xr, center: bool) -> None:
    d = f.shape[-1]
    assert lb.size == len(layer.Lambda)
    assert_same_coordinates(lb.to_coordinates(f), xr.reshape(-1, xr.shape[-1]) @ layer.C, lb.eigenvalues,
                            layer.Lambda)
    if center:
        assert lb.constant is not None
        assert_same_inverse(lb, layer, d)
        assert_same_centred_C(lb, layer, d)
    else:
        assert lb.constant is None and lb.folded
        assert_same_folded(lb, layer)
    assert not (lb.eigenvalues.requires_grad or lb.transform.requires_grad or lb.inverse.requires_grad)


@pytest.mark.parametrize("variant", ["rib", "rib-uncentred"])
@pytest.mark.parametrize("duplicate", [False, True])
@pytest.mark.parametrize("formula", ["(1-0)*alpha", "(1-alpha)^2"])
def test_attribution_formulas_equal_rib_on_mlp(formula, duplicate, variant):
    """formula='(1-0)*alpha' / '(1-alpha)^2' are rib's basis_formulas of those names (calc_basis_integrated_
    gradient, M_dash_and_Lambda_dash_pre_forward_hook_fn, Lambda = |diag(V^T R^+ Lambda' R V)| sorted and
    truncated by build_sorted_lambda_matrices): Lambda, coordinates, C and C+ of the numpy reference
    (rib_layer_attribution) to 1e-10, centred and uncentred, for each of rib's integration rules."""
    model = tanh_mlp(duplicate=duplicate)
    x = torch.randn(30, 4, dtype=DT, generator=torch.Generator().manual_seed(1))
    center = variant == "rib"
    acts = _mlp_acts(model, x)
    for rule, steps in _rules(formula):
        basis = interaction_basis(model, (x, None), ["1", "3", "4"], variant=variant, formula=formula,
                                  integration=rule, steps=steps)
        ref = rib_mlp_attribution(model, x, formula, *rib_quadrature(steps - 1, rule), center=center)
        for point, f in acts.items():
            layer, xr = ref[point]
            _assert_attribution_layer(basis[point], layer, f, xr, center)


@pytest.mark.parametrize("variant", ["rib", "rib-uncentred"])
@pytest.mark.parametrize("formula", ["(1-0)*alpha", "(1-alpha)^2"])
def test_attribution_formulas_equal_rib_on_sequence_model(formula, variant):
    """As on the MLP, on the 3-position sequence model (M' and Lambda' averaged over the N P input
    positions, the gradient summed over the output positions), in two batches."""
    model, t = _seq_data()
    center = variant == "rib"
    acts = _seq_acts(model, t)
    for rule, steps in _rules(formula):
        basis = interaction_basis(model, [(t[:12],), (t[12:],)], ["embed", "act", "lin2"], variant=variant,
                                  formula=formula, integration=rule, steps=steps)
        ref = rib_seq_attribution(model, t, formula, *rib_quadrature(steps - 1, rule), center=center)
        for point, f in acts.items():
            layer, xr = ref[point]
            _assert_attribution_layer(basis[point], layer, f, xr, center)


def test_attribution_formulas_differ():
    """The three basis formulas give different Lambdas here, some by more than 10% (so the tests above tell
    them apart)."""
    model, x = _mlp_data()
    lam = {f: interaction_basis(model, x, ["1", "3", "4"], formula=f, integration="gauss-legendre", steps=3)[
        "1"].eigenvalues for f in ("jacobian", "(1-0)*alpha", "(1-alpha)^2")}
    for a, b in (("jacobian", "(1-0)*alpha"), ("(1-0)*alpha", "(1-alpha)^2"), ("jacobian", "(1-alpha)^2")):
        n = min(len(lam[a]), len(lam[b]))
        assert float(((lam[a][:n] - lam[b][:n]) / lam[b][:n]).abs().max()) > 0.1


@pytest.mark.refuses("formula='(1-alpha)^2' with integration='gradient'",
                     "the one node alpha = 1 makes c(a) - c(alpha a) = 0, so M' = Lambda' = 0 (rib asserts "
                     "Lambda' != 0): ArgumentError asks for a quadrature rule")
def test_one_minus_alpha_squared_needs_a_quadrature_rule():
    model, x = _mlp_data()
    with pytest.raises(ArgumentError, match="gauss-legendre"):
        interaction_basis(model, x, ["1", "3", "4"], formula="(1-alpha)^2")
