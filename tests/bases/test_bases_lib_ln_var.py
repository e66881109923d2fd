"""rib's layer-norm variance node (``isolate_ln_var``) at variance points equals rib's formulas,
re-implemented independently in numpy (``tests/_rib_reference_ln.py``), on a residual MLP with
LayerNorms (float64, nonzero biases and LayerNorm gains/biases)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _rib_reference_ln import DT, POINTS, LnResMLP, ln_transformer, rib_ln_edges, rib_ln_model, to_np

from wdecomp import hooks
from wdecomp.bases import interaction_basis
from wdecomp.graph import interaction_graph


def _inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)  # per-example scales, so the variance varies
    return torch.randn(40, 4, dtype=DT, generator=g) * torch.exp(0.7 * torch.randn(40, 1, dtype=DT, generator=g)) + 0.3


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _compare(lb, layer, X: np.ndarray, f: torch.Tensor) -> dict[str, float]:
    """Relative differences of wdecomp's layer ``lb`` against rib's ``layer`` (rows ``X = [v, f, 1]``):
    Lambdas, coordinates on the data and ``C^+`` (each direction up to sign)."""
    d = X.shape[1] - 1
    assert lb.size == len(layer.Lambda)
    got = to_np(lb.to_coordinates(f.detach()))
    ref = X @ layer.C
    signs = np.sign(np.sum(got * ref, 0))
    signs[signs == 0] = 1
    Cp = layer.C_pinv * signs[:, None]  # (k, d+1)
    ours = to_np(lb.inverse).T  # (k, d)
    return {
        "lambda": _rel(to_np(lb.eigenvalues), layer.Lambda),
        "coordinates": _rel(got * signs, ref),
        # C^+: the non-constant rows map coordinates back to [v, f]; the constant's row is 1 / constant
        "inverse": _rel(ours[1:], Cp[1:, :d]),
        "constant": abs(Cp[0, d] - 1 / lb.constant) * lb.constant,
        "constant row": _rel(Cp[0, :d], to_np(lb.center) / lb.constant),
    }


@pytest.mark.parametrize("affine", [True, False])
def test_variance_node_equals_rib(affine):
    model = LnResMLP(affine=affine)
    x = _inputs()
    basis = interaction_basis(model, (x, None), POINTS)
    ref = rib_ln_model(model, x, isolate=True)
    acts = hooks.run(model, x, read=POINTS[:3])[1]
    assert basis.info["isolate_ln_var"] is True
    assert basis.info["ln_variance_nodes"] == dict.fromkeys(POINTS[:3], 1)
    for p in POINTS[:3]:
        layer, X = ref[p]
        lb = basis[p]
        err = _compare(lb, layer, X, acts[p])
        assert max(err.values()) < 1e-10, (p, err)
        # the variance node (1, after the constant) reads the variance alone, and only it reads it:
        # c_1 = Lambda_v^{1/2} (v - mu_v) / Cov_vv^{1/2}, rib's C[:, 1] = (that, 0, ..., 0)
        T, Ci = to_np(lb.transform), to_np(lb.inverse)
        assert not T[1, 1:].any() and not T[2:, 0].any()
        assert not Ci[1:, 1].any() and not Ci[0, 2:].any()
        np.testing.assert_allclose(T[1, 0], layer.C[0, 1], rtol=1e-10)
        np.testing.assert_allclose(to_np(lb.eigenvalues)[1], layer.Lambda[1], rtol=1e-10)
        cov_vv = X[:, 0].var()
        np.testing.assert_allclose(T[1, 0], np.sqrt(layer.Lambda[1] / cov_vv), rtol=1e-10)
    # the read-out is the model's output: its neurons, no constant node
    assert basis["unembed"].constant is None


def test_squared_edges_equal_rib():
    """rib's squared edges (gradient) through the variance nodes: the graph built on the basis equals
    the reference's, the variance node's edges included."""
    model = LnResMLP(affine=True)
    x = _inputs()
    basis = interaction_basis(model, (x, None), POINTS)
    g = interaction_graph(model, (x, None), basis)
    ref = rib_ln_edges(model, x, rib_ln_model(model, x, isolate=True))
    for i, E in enumerate(ref):
        got = to_np(torch.as_tensor(g.attribution_matrix(i)))
        assert got.shape == E.shape
        assert _rel(got, E) < 1e-10, (i, _rel(got, E))
        assert (E[:, 1] > 0).any()  # the variance node interacts


def test_pca_keeps_the_variance_apart():
    """``method="pca"`` (rib's ``svd`` basis, whose PCA is masked the same way): node 1 is ``v - mu_v``."""
    model = LnResMLP(affine=True)
    x = _inputs()
    basis = interaction_basis(model, (x, None), POINTS, method="pca")
    acts = hooks.run(model, x, read=POINTS[:3])[1]
    assert basis.info["ln_variance_nodes"] == dict.fromkeys(POINTS[:3], 1)
    for p in POINTS[:3]:
        v = to_np(acts[p].detach())[:, 0]
        c = to_np(basis[p].to_coordinates(acts[p].detach()))
        assert _rel(c[:, 1], v - v.mean()) < 1e-12
        assert not to_np(basis[p].transform)[2:, 0].any()
    # the last layer rotated to PCA (rib's svd for the final node layer) keeps it apart too
    last = interaction_basis(model, (x, None), POINTS[:3], rotate_final=True)["ln_f:variance"]
    c = to_np(last.to_coordinates(acts["ln_f:variance"].detach()))
    v = to_np(acts["ln_f:variance"].detach())[:, 0]
    assert _rel(c[:, 1], v - v.mean()) < 1e-12


def test_without_isolation_equals_rib_and_mixes_the_variance():
    model = LnResMLP(affine=True)
    x = _inputs()
    basis = interaction_basis(model, (x, None), POINTS, isolate_ln_var=False)
    ref = rib_ln_model(model, x, isolate=False)
    acts = hooks.run(model, x, read=POINTS[:3])[1]
    assert basis.info["ln_variance_nodes"] == {}
    for p in POINTS[:3]:
        layer, X = ref[p]
        err = _compare(basis[p], layer, X, acts[p])
        assert max(err.values()) < 1e-10, (p, err)
        assert np.count_nonzero(to_np(basis[p].transform)[1:, 0]) > 1  # the variance is mixed in


def test_uncentred_variance_node_equals_rib():
    """rib's ``center: false`` (``variant="rib-uncentred"``) with ``isolate_ln_var``: only the variance is
    masked (node 0; the constant mixed into the others): coordinates, Lambdas, ``C^+`` and the row
    that recovers ``s`` equal rib's."""
    model = LnResMLP(affine=True)
    x = _inputs()
    basis = interaction_basis(model, (x, None), POINTS, variant="rib-uncentred")
    ref = rib_ln_model(model, x, isolate=True, center=False)
    acts = hooks.run(model, x, read=POINTS[:3])[1]
    assert basis.info["ln_variance_nodes"] == dict.fromkeys(POINTS[:3], 0)
    for p in POINTS[:3]:
        layer, X = ref[p]
        lb = basis[p]
        d = X.shape[1] - 1
        got = to_np(lb.to_coordinates(acts[p].detach()))
        want = X @ layer.C
        signs = np.sign(np.sum(got * want, 0))
        Cp = layer.C_pinv * signs[:, None]
        assert _rel(to_np(lb.eigenvalues), layer.Lambda) < 1e-10
        assert _rel(got * signs, want) < 1e-10
        assert _rel(to_np(lb.inverse).T, Cp[:, :d]) < 1e-10
        assert _rel(to_np(lb.const_row), Cp[:, d]) < 1e-10
        T = to_np(lb.transform)
        assert not T[0, 1:].any() and not T[1:, 0].any() and lb.const_column[0] == 0  # node 0 reads v alone


def test_rewriting_at_variance_points_leaves_the_outputs():
    """``[v; f] -> C^+ C [v; f]`` at every variance point (the variance written back through the
    split) changes the outputs only by the directions LIB dropped (the all-ones shift, which every
    LayerNorm removes): to round-off."""
    model = LnResMLP(affine=True)
    x = _inputs()
    basis = interaction_basis(model, (x, None), POINTS)
    with torch.no_grad():
        y = model(x)
        write = {p: (lambda a, lb=basis[p]: lb.from_coordinates(lb.to_coordinates(a))) for p in POINTS[:3]}
        out, _ = hooks.run(model, x, write=write)
    assert float((out - y).abs().max() / y.abs().max()) < 1e-10


def test_transformer_with_layer_norms_has_a_variance_node_per_point():
    m = ln_transformer(n_layers=1, d_model=6)
    t = torch.randint(0, 7, (12, 4), generator=torch.Generator().manual_seed(2))
    points = ["blocks.0.ln1:variance@blocks.0:input", "blocks.0.ln2:variance@blocks.0.resid_mid", "ln_f:variance",
              "unembed"]
    basis = interaction_basis(m, t, points)
    assert basis.info["ln_variance_nodes"] == dict.fromkeys(points[:3], 1)
    with torch.no_grad():
        y = m(t)
        write = {p: (lambda a, lb=basis[p]: lb.from_coordinates(lb.to_coordinates(a))) for p in points[:3]}
        out, acts = hooks.run(m, t, read=points[:3], write=write)
    for p in points[:3]:
        T, Ci = to_np(basis[p].transform), to_np(basis[p].inverse)
        assert T[1, 0] > 0 and not T[1, 1:].any() and not T[2:, 0].any() and not Ci[0, 2:].any()
    assert float((out - y).abs().max() / y.abs().max()) < 1e-10
