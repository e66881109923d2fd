"""Numerical rank: dense, Gram (streamed factors), SLQ estimate; closed forms; bootstrap."""

import json

import pytest
import torch
from torch import nn

from wdecomp.curvature import ggn, hessian
from wdecomp.objective import Objective
from wdecomp.spectral import OperatorCapabilityError, bootstrap_eigenvalues, bootstrap_rank, rank

F64 = torch.float64


def low_rank(p, r, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(p, r, generator=g, dtype=F64)
    return B @ B.T


def test_dense_rank_matches_matrix_rank_and_groups():
    A = low_rank(120, 17)
    A[100:, :] = 0
    A[:, 100:] = 0
    res = rank(A, groups={"head": slice(0, 10), "tail": slice(100, 120)})
    assert res.rank == int(torch.linalg.matrix_rank(A)) == 17
    assert res.nullity == 103 and res.method == "dense" and res.uncertainty == 0
    assert res.margin > 1  # the nearest eigenvalue sits over a decade from the threshold
    assert res.groups["head"].rank == 10 and res.groups["tail"].rank == 0
    assert "nullity" in str(res) and json.loads(json.dumps(res.to_dict()))["rank"] == 17


def test_density_rank_estimate_with_uncertainty():
    g = torch.Generator().manual_seed(1)
    p, r = 600, 150
    Q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=F64))
    lams = torch.zeros(p, dtype=F64)
    lams[:r] = torch.logspace(0, -2, r, dtype=F64)
    A = (Q * lams) @ Q.T
    est = rank(A, method="density", rtol=1e-3, num_starts=20, steps=60)
    assert est.method == "density" and est.uncertainty > 0
    assert abs(est.estimate - r) <= 4 * est.uncertainty + 2, (est.estimate, est.uncertainty)
    with pytest.raises(OperatorCapabilityError):
        rank(A, method="gram")


class Linear2(nn.Module):
    def __init__(self, d, h, c):
        super().__init__()
        self.w1 = nn.Linear(d, h, bias=False)
        self.w2 = nn.Linear(h, c, bias=False)

    def forward(self, x):
        return self.w2(self.w1(x))


def test_deep_linear_ggn_rank_closed_form():
    """Two-layer linear network ``f(x) = W2 W1 x``, ``W1 (h x d)``, ``W2 (c x h)``, MSE loss.

    The GGN is ``J^T (2/N) J`` (positive definite output Hessian), so its rank is that of the
    Jacobian ``(dW1, dW2) -> (W2 dW1 + dW2 W1) X``. With data ``X (d x n)`` of full row rank the
    factor ``X`` drops out and the rank is ``dim{W2 A + B W1}``: ``W2 A`` spans the ``h d``
    matrices with column space in ``col(W2)`` (``W2`` has full column rank for ``h <= c``),
    ``B W1`` spans the ``c h`` with row space in ``row(W1)`` (full row rank for ``h <= d``),
    and they intersect in the ``h^2`` matrices with both; so

        rank = h d + c h - h^2 = h (c + d - h),

    nullity ``h^2`` — the ``GL(h)`` symmetry ``(W1, W2) -> (M W1, W2 M^{-1})``.
    Here d=5, h=3, c=4: rank 18 of p = 27.
    """
    torch.manual_seed(0)
    d, h, c = 5, 3, 4
    model = Linear2(d, h, c).double().eval()
    x = torch.randn(30, d, dtype=F64)
    y = torch.randn(30, c, dtype=F64)
    G = ggn(Objective(model, [(x[:16], y[:16]), (x[16:], y[16:])], loss="mse"))
    want = h * (c + d - h)
    dense = rank(G, method="dense", groups="parameter")
    gram = rank(G, method="gram", groups="parameter", chunk_size=7)
    pairwise = rank(G, method="gram", chunk_size=20, gram_memory=1)  # forces pairwise recomputation
    assert dense.rank == gram.rank == pairwise.rank == want == int(torch.linalg.matrix_rank(G.dense()))
    # per layer: each weight alone has a full-rank diagonal block (J restricted is injective)
    assert dense.groups["w1.weight"].rank == gram.groups["w1.weight"].rank == h * d
    assert dense.groups["w2.weight"].rank == gram.groups["w2.weight"].rank == c * h


class DeadMLP(nn.Module):
    def __init__(self, d, h, c, dead):
        super().__init__()
        self.a = nn.Linear(d, h)
        self.b = nn.Linear(h, c)
        with torch.no_grad():
            self.a.bias[:dead] = -1e3  # these units never activate on the data

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_dead_relu_ggn_rank_closed_form():
    """ReLU MLP ``x -> W2 relu(W1 x + b1) + b2`` with ``k`` dead hidden units, MSE loss.

    A dead unit's input row of ``W1`` (``d``), its bias (1) and its output column of ``W2``
    (``c``) get zero Jacobian: ``k (d + 1 + c)`` null directions. Each live unit ``j`` adds one
    more, the rescaling symmetry ``(w_j, b_j, W2[:, j]) -> (a w_j, a b_j, W2[:, j] / a)`` of a
    positively homogeneous unit, whose tangent ``(w_j, b_j, -W2[:, j])`` is in the kernel of
    ``J``. With enough data crossing every live unit's kink, nothing else is degenerate:

        rank = p - k (d + 1 + c) - (h - k).

    Here d=4, h=6, c=3, k=2: p = 51, rank = 51 - 16 - 4 = 31.
    """
    torch.manual_seed(1)
    d, h, c, k = 4, 6, 3, 2
    model = DeadMLP(d, h, c, k).double().eval()
    x = torch.randn(80, d, dtype=F64)
    y = torch.randn(80, c, dtype=F64)
    G = ggn(Objective(model, [(x[:40], y[:40]), (x[40:], y[40:])], loss="mse"))
    want = G.shape[0] - k * (d + 1 + c) - (h - k)
    assert want == 31
    dense = rank(G, method="dense")
    gram = rank(G, method="gram", chunk_size=16)
    assert dense.rank == gram.rank == want == int(torch.linalg.matrix_rank(G.dense()))


def test_hessian_rank_equals_matrix_rank_and_bootstrap():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double().eval()
    x = torch.randn(48, 4, dtype=F64)
    y = torch.randint(0, 3, (48,))
    H = hessian(Objective(model, [(x[i : i + 12], y[i : i + 12]) for i in range(0, 48, 12)]))
    res = rank(H, groups="module")
    assert res.rank == int(torch.linalg.matrix_rank(H.dense()))
    assert set(res.groups) == {"0", "2"}
    b = bootstrap_eigenvalues(H, k=2, n_resamples=3, block_size=2, tol=1e-9)
    assert b.samples.shape == (3, 2) and (b.std > 0).all() and (b.low <= b.high).all()
    assert torch.allclose(b.estimate, torch.linalg.eigvalsh(H.dense()).flip(0)[:2], rtol=1e-8)
    assert "Bootstrap" in str(b) and json.loads(json.dumps(b.to_dict()))["num_batches"] == 4
    br = bootstrap_rank(H, n_resamples=2)
    assert br.samples.shape == (2, 1)
    with pytest.raises(OperatorCapabilityError):
        bootstrap_eigenvalues(torch.eye(3, dtype=F64), k=1)
