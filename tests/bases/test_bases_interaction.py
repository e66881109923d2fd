"""LIB and its controls: dense references, block structure, exactness, bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from wdecomp.activations import run_with_hooks
from wdecomp.bases import gram_matrices, interaction_basis, interaction_jacobians, interaction_matrix
from wdecomp.errors import NonFiniteError, SelectionError

DT = torch.float64


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT).eval()


def _data(seed: int = 1, n: int = 40) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=DT)
    return [(x[:25], torch.zeros(25)), (x[25:], torch.zeros(n - 25))]


class Embedder(nn.Module):
    """Two tokens, shared embedding (a 'position' axis), then an MLP: tests position handling."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.embed = nn.Embedding(7, 3)
        self.hidden = nn.Linear(6, 5)
        self.act = nn.Tanh()
        self.out = nn.Linear(5, 4)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.hidden(self.embed(t).flatten(1))))


def _roundtrip_error(model, data, basis) -> float:
    worst = 0.0
    for x, _ in data:
        ref = model(x)
        for point in basis:
            lb = basis[point]
            _, acts = run_with_hooks(model, x, read=[point])
            f = acts[point]
            out, _ = run_with_hooks(model, x, write={point: lb.from_coordinates(lb.to_coordinates(f))})
            worst = max(worst, float((out - ref).abs().max()))
    return worst


def test_gram_matches_dense():
    model, data = _mlp(), _data()
    grams = gram_matrices(model, data, ["1", "3"])
    grams_c = gram_matrices(model, data, ["1"], constant=True)
    cov = gram_matrices(model, data, ["1"], center=True)
    x = torch.cat([b[0] for b in data])
    f = torch.relu(model[0](x)).detach()
    G = f.T @ f / len(f)
    assert torch.allclose(grams["1"].gram, G, rtol=1e-12, atol=1e-14)
    ext = torch.cat([f, torch.ones(len(f), 1, dtype=DT)], 1)
    assert torch.allclose(grams_c["1"].gram, ext.T @ ext / len(f), rtol=1e-12, atol=1e-14)
    fc = f - f.mean(0)
    assert torch.allclose(cov["1"].gram, fc.T @ fc / len(f), rtol=1e-10, atol=1e-13)
    assert grams["1"].count == 40 and grams["1"].examples == 40


def _dense_jacobians(model, x, source_fn, target_fn, T):
    """Per-example loop with torch.autograd.functional.jacobian (no vmap, no hooks)."""
    out = []
    for i in range(len(x)):
        a = source_fn(x[i : i + 1]).detach()[0]
        J = torch.autograd.functional.jacobian(lambda a_: target_fn(a_.unsqueeze(0))[0] @ T.T, a)
        out.append(J)
    return torch.stack(out)


def test_jacobian_and_interaction_matrix_match_dense():
    model, data = _mlp(), _data()
    x = torch.cat([b[0] for b in data])
    T = torch.randn(4, 5, dtype=DT, generator=torch.Generator().manual_seed(5))
    ref = _dense_jacobians(model, x, lambda z: model[1](model[0](z)), lambda a: model[3](model[2](a)), T)
    got = torch.cat(list(interaction_jacobians(model, data, "1", "3", T, chunk_size=16)))
    assert got.shape == (40, 1, 4, 1, 6)  # (examples, target positions, k_t, source positions, d_s)
    got = got.reshape(40, 4, 6)
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-13)
    for mode in ("forward", "reverse"):
        M = interaction_matrix(model, data, "1", "3", T, mode=mode, chunk_size=7)
        assert torch.allclose(M, torch.einsum("bki,bkj->ij", ref, ref) / 40, rtol=1e-11, atol=1e-13)


def test_jacobian_per_source_position():
    model = Embedder().to(DT).eval()
    t = torch.randint(0, 7, (9, 2), generator=torch.Generator().manual_seed(0))
    got = next(interaction_jacobians(model, [t], "embed", "hidden"))
    assert got.shape == (9, 1, 5, 2, 3)  # per source position (rib), not summed
    for i in range(9):
        e = model.embed(t[i : i + 1]).detach()[0]  # (2, 3)
        J = torch.autograd.functional.jacobian(lambda e_: model.hidden(e_.reshape(1, 6))[0], e)  # (5, 2, 3)
        assert torch.allclose(got[i, 0], J, rtol=1e-12, atol=1e-13)
    g = gram_matrices(model, [t], ["embed"])["embed"]
    f = model.embed(t).detach().reshape(-1, 3)
    assert g.count == 18 and torch.allclose(g.gram, f.T @ f / 18, rtol=1e-12)


@pytest.mark.parametrize("method", ["lib", "pca", "neuron", "jacobian"])
def test_basis_roundtrip_is_exact(method):
    model, data = _mlp(), _data()
    basis = interaction_basis(model, data, ["1", "3", "4"], method=method)
    assert basis.method == method and list(basis) == ["1", "3", "4"]
    for point in basis:
        lb = basis[point]
        assert lb.transform.shape == (lb.size, lb.dim) and lb.inverse.shape == (lb.dim, lb.size)
    assert _roundtrip_error(model, data, basis) < 1e-10


def test_lib_matches_definition():
    """C = Lambda^{1/2} V^T D^{-1/2} U^T with M built from the next layer's LIB coordinates."""
    model, data = _mlp(), _data()
    basis = interaction_basis(model, data, ["3", "4"], method="lib", variant="wdecomp-uncentred",
                              drop_noninteracting=False)
    x = torch.cat([b[0] for b in data])
    f3 = torch.tanh(model[2](torch.relu(model[0](x)))).detach()
    G = f3.T @ f3 / len(x)
    D, U = torch.linalg.eigh(G)
    Wf = basis["4"].transform @ model[4].weight.detach()  # d c_4 / d f_3 (linear layer)
    Mw = torch.diag(D.sqrt()) @ U.T @ (Wf.T @ Wf) @ U @ torch.diag(D.sqrt())
    lam = torch.linalg.eigvalsh(Mw).flip(0)
    got = basis["3"].eigenvalues
    assert torch.allclose(got[: len(lam)], lam[: len(got)], rtol=1e-9, atol=1e-12)
    # whitened and scaled: E[c c^T] = diag(Lambda) on the interacting directions
    c = basis["3"].to_coordinates(f3)
    second = c.T @ c / len(x)
    live = got > 1e-10 * got[0]
    assert torch.allclose(second[live][:, live], torch.diag(got[live]), rtol=1e-8, atol=1e-12)


class TwoBlocks(nn.Module):
    """Two independent sub-networks side by side; the middle layer is randomly rotated by R."""

    def __init__(self, R: torch.Tensor) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(11)

        def bd(a, b, c, d):
            W = torch.zeros(a + c, b + d, dtype=DT)
            W[:a, :b] = torch.randn(a, b, generator=g, dtype=DT)
            W[a:, b:] = torch.randn(c, d, generator=g, dtype=DT)
            return W

        self.l1, self.act1 = nn.Linear(4, 6).to(DT), nn.ReLU()
        self.l2, self.l3, self.act2 = nn.Linear(6, 6).to(DT), nn.Linear(6, 6).to(DT), nn.Tanh()
        self.l4 = nn.Linear(6, 4).to(DT)
        with torch.no_grad():
            self.l1.weight.copy_(bd(3, 2, 3, 2))
            self.l2.weight.copy_(R @ bd(3, 3, 3, 3))
            self.l2.bias.copy_(R @ torch.randn(6, generator=g, dtype=DT))
            self.l3.weight.copy_(bd(3, 3, 3, 3) @ R.T)
            self.l4.weight.copy_(bd(2, 3, 2, 3))

    def forward(self, x):
        return self.l4(self.act2(self.l3(self.l2(self.act1(self.l1(x))))))


def _block_mass_outside(rows: torch.Tensor, blocks=((0, 3), (3, 6))) -> float:
    """For each row, the fraction of its squared norm outside the block where most of it lives."""
    worst = 0.0
    for r in rows:
        tot = float(r.pow(2).sum())
        if tot == 0:  # the constant node's row
            continue
        inside = max(float(r[a:b].pow(2).sum()) for a, b in blocks)
        worst = max(worst, 1 - inside / tot)
    return worst


def test_lib_finds_hidden_block_structure():
    g = torch.Generator().manual_seed(2)
    R, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=DT))
    model = TwoBlocks(R).eval()
    xa, xb = torch.randn(6, 2, generator=g, dtype=DT), torch.randn(6, 2, generator=g, dtype=DT)
    # every pairing of sub-network inputs (a product set): the blocks are exactly uncorrelated
    x = torch.cat([xa.repeat_interleave(6, 0), xb.repeat(6, 1)], 1)
    data = [(x, torch.zeros(len(x)))]
    basis = interaction_basis(model, data, ["act1", "l2", "act2", "l4"], method="lib", center=True)
    assert _block_mass_outside(basis["l2"].transform @ R) < 1e-8
    assert _block_mass_outside(basis["act1"].transform) < 1e-8
    assert _block_mass_outside(basis["act2"].transform) < 1e-8
    assert basis["l2"].size == 7 and basis["l2"].constant is not None  # 6 directions and the constant node
    neuron = interaction_basis(model, data, ["l2"], method="neuron")
    assert _block_mass_outside(neuron["l2"].transform @ R) > 0.05  # neurons hide the blocks


def test_bad_inputs():
    model, data = _mlp(), _data()
    with pytest.raises(SelectionError, match="no module named"):
        interaction_basis(model, data, ["1", "nope"])
    with pytest.raises(SelectionError, match="forward order"):
        interaction_basis(model, data, ["3", "1"])
    with pytest.raises(ValueError, match="unknown method"):
        interaction_basis(model, data, ["1"], method="sae")
    bad = _mlp()
    with torch.no_grad():
        bad[2].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        interaction_basis(bad, data, ["1", "3"])


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), method=st.sampled_from(["lib", "pca", "jacobian"]), n=st.integers(3, 30))
def test_property_rotate_and_back_is_identity(seed, method, n):
    """Rotating into the basis and back at any layer leaves the outputs unchanged (even n < d)."""
    model = _mlp(seed)
    g = torch.Generator().manual_seed(seed + 1)
    data = [(torch.randn(n, 4, generator=g, dtype=DT), torch.zeros(n))]
    # exact only when non-interacting directions are kept (dropping one with Lambda = 1e-11 max
    # changes the output by about sqrt(Lambda))
    basis = interaction_basis(model, data, ["1", "3", "4"], method=method, drop_noninteracting=False)
    assert _roundtrip_error(model, data, basis) < 1e-10


class _TLStyleLinear(nn.Module):
    """A TransformerLens-style layer: weights ``W_in`` and a bias named ``b_in`` (no 'bias' in the name)."""

    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.W_in = nn.Parameter(torch.randn(d, h, generator=g, dtype=torch.float64))
        self.b_in = nn.Parameter(torch.randn(h, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W_in + self.b_in


@pytest.mark.refuses("a TransformerLens-style bias (b_in, b_O, ...) inside a LIB section with a constant node",
                     "the constant cannot scale it; it used to be left out silently")
def test_transformer_lens_style_biases_are_refused_not_skipped():
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), _TLStyleLinear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(32, 4, dtype=torch.float64)
    with pytest.raises(SelectionError, match=r"b_in"):
        interaction_basis(model, [(x, None)], ["1", "3"])
    basis = interaction_basis(model, [(x, None)], ["1", "3"], constant=False)  # the way out it names
    assert basis["1"].constant is None and basis["1"].size > 0
