"""Graph edges of the default LIB basis equal rib's squared (and functional) edges, from the
independent numpy reference in tests/_rib_reference.py (gradient and integrated gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _rib_reference import (
    DT,
    SeqMix,
    gauss_legendre,
    hat_jacobian,
    rib_mlp,
    rib_seq,
    squared_edges,
    tanh_mlp,
    to_np,
)

from wdecomp.bases import interaction_basis
from wdecomp.graph import interaction_graph


def _close(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-10 * np.abs(ref).max(), np.abs(got - ref).max() / np.abs(ref).max()


def _integrated(Jfn, C_in_pinv, C_out, steps):
    nodes, w = gauss_legendre(steps)
    return sum(wm * hat_jacobian(Jfn(a), C_in_pinv, C_out) for a, wm in zip(nodes, w))


@pytest.mark.parametrize("variant", ["rib", "rib-uncentred"])
@pytest.mark.parametrize("duplicate", [False, True])
@pytest.mark.parametrize("steps", [None, 3])
def test_squared_edges_equal_rib_on_mlp(duplicate, steps, variant):
    """Squared edges (gradient, and integrated gradients along rib's alpha [f; 1]) equal the reference's,
    for rib's default and its center=false (variant='rib-uncentred', where no node is constant)."""
    model = tanh_mlp(duplicate=duplicate)
    x = torch.randn(25, 4, dtype=DT, generator=torch.Generator().manual_seed(3))
    basis = interaction_basis(model, x, ["1", "3", "4"], variant=variant)
    kw = {} if steps is None else {"method": "integrated_gradients", "steps": steps}
    g = interaction_graph(model, x, basis, **kw)
    ref, J13x, J34 = rib_mlp(model, x, center=variant == "rib")
    (L1, x1), (L3, x3) = ref["1"], ref["3"]
    J13 = hat_jacobian(J13x(1.0), L1.C_pinv, L3.C) if steps is None else _integrated(J13x, L1.C_pinv, L3.C, steps)
    J34h = hat_jacobian(J34, L3.C_pinv, None)  # affine in [f; s]: its integral is itself
    _close(g.attribution_matrix(0), squared_edges(J13, (x1 @ L1.C)[:, None]))
    _close(g.attribution_matrix(1), squared_edges(J34h, (x3 @ L3.C)[:, None]))
    # the constant node is marked; weight and attribution agree
    const = [n for n, c in g.nx.nodes(data="constant") if c]
    assert const == (["L0_0", "L1_0"] if variant == "rib" else [])
    assert all(d["weight"] == d["attribution"] for _, _, d in g.nx.edges(data=True))


@pytest.mark.parametrize("variant", ["rib", "rib-uncentred"])
def test_squared_edges_equal_rib_on_sequence_model(variant):
    model = SeqMix().to(DT).eval()
    t = torch.randint(0, 7, (16, 3), generator=torch.Generator().manual_seed(4))
    basis = interaction_basis(model, t, ["embed", "act", "lin2"], variant=variant)
    ref, J1x, J2 = rib_seq(model, t, center=variant == "rib")
    (Le, xe), (La, xa) = ref["embed"], ref["act"]
    for steps in (None, 2):
        kw = {} if steps is None else {"method": "integrated_gradients", "steps": steps}
        g = interaction_graph(model, [(t[:9],), (t[9:],)], basis, **kw)
        J1 = hat_jacobian(J1x(1.0), Le.C_pinv, La.C) if steps is None else _integrated(J1x, Le.C_pinv, La.C, steps)
        _close(g.attribution_matrix(0), squared_edges(J1, xe @ Le.C))
        _close(g.attribution_matrix(1), squared_edges(hat_jacobian(J2, La.C_pinv, None), xa @ La.C))


def test_functional_edges_equal_rib_on_mlp():
    """rib's calc_edge_functional: E_ij = 2/N sum_x sum_m w_m c_j sum_i (h(c) - h(alpha c))_i J_ij(alpha c)."""
    model = tanh_mlp()
    x = torch.randn(20, 4, dtype=DT, generator=torch.Generator().manual_seed(5))
    basis = interaction_basis(model, x, ["1", "3", "4"])
    g = interaction_graph(model, x, basis, method="integrated_gradients", formula="functional", steps=4)
    ref, J13x, _ = rib_mlp(model, x)
    (L1, x1), (L3, _) = ref["1"], ref["3"]
    W2, b2 = to_np(model[2].weight), to_np(model[2].bias)
    f1 = x1[:, :-1]
    c = x1 @ L1.C

    def h(a: float) -> np.ndarray:
        return np.concatenate([np.tanh(a * (f1 @ W2.T + b2)), np.full((len(x), 1), a)], 1) @ L3.C

    E = np.zeros((L3.C.shape[1], L1.C.shape[1]))
    nodes, w = gauss_legendre(4)
    for a, wm in zip(nodes, w):
        J = hat_jacobian(J13x(a), L1.C_pinv, L3.C)[:, 0, :, 0, :]  # (N, k3, k1)
        E += 2 * wm * np.einsum("ni,nij,nj->ij", h(1.0) - h(a), J, c)
    _close(g.attribution_matrix(0), E / len(x))


# ----------------------------------------------------------------------------- rib's center: false

def test_rib_uncentred_edge_ablation_keeps_no_edge_for_free():
    """rib's always_keep_const_dir = center: False here, so keep_constant_edges frees no edge; with every
    edge kept, the section through the folded basis (s = r . c carried) gives the original loss (1e-10)."""
    import torch.nn.functional as F

    from wdecomp.ablation.edges import _PairEval, edge_ablation
    from wdecomp.bases.section import build_section
    from wdecomp.objective import resolve_loss

    model = tanh_mlp()
    x = torch.randn(30, 4, dtype=DT, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(-1).detach()
    basis = interaction_basis(model, x, ["1", "3", "4"], variant="rib-uncentred", drop_noninteracting=False)
    res = edge_ablation(model, (x, y), basis, keep_constant_edges=True, metric="loss", tolerance=0.01,
                        curve_points=0)
    for pair, (s, t) in zip(res.pairs, (("1", "3"), ("3", "4"))):
        assert pair.total_edges == basis[s].size * basis[t].size
    original = float(F.cross_entropy(model(x), y).detach())
    sec = build_section(model, x[:1], "1", "3", constant=True)
    ev = _PairEval(model, basis["1"], basis["3"], sec, sec.target_axis, resolve_loss("cross_entropy"))
    full = np.ones((basis["3"].size, basis["1"].size), dtype=bool)
    assert abs(ev.score([(x, y)], full, all_kept=False)[0] - original) < 1e-10
