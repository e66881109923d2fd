"""An independent numpy re-implementation of rib's LIB formulas (float64), for the tests.

Written from the formulas of Bushnaq et al. 2024 (arXiv 2405.10928, sec. 2) as Apollo Research's
``rib`` (commit 7a6199f) computes them, in rib's row-vector convention (``f_hat = x @ C``), never
from wdecomp's code: activations carry the folded bias ``x = [f, 1]``; ``centering_matrix``;
``move_const_dir_first``; ``masked_eigendecompose``; the ``jacobian`` basis formula with
``M' = 1/(N P) sum_x sum_s sum_{t,i} J_{ti,sj} J_{ti,sj'}``; ``build_sorted_lambda_matrices``;
squared edges ``E_ij = 1/(N P_in) sum_x sum_t (sum_s Jhat_{ti,sj} f_hat_{sj})^2`` with
``Jhat`` the gradient (``integration_method="gradient"``) or the integrated gradient along
``alpha x``. Models supply per-example analytic Jacobians of ``x^{l+1}`` w.r.t. ``x^l``
(``(P_out, d_out[+1], P_in, d_in+1)``) as numpy arrays.

``center=False`` (rib's uncentred mode, ``rib_layer_uncentred``): the Gram matrix of ``x = [f, 1]``
itself (no centring matrix, ``W = U``), no direction masked (``n_masked = 0``), ``R = U D^{-1/2}``,
``M = R^+ M' R^{+T}``, ``V`` the full eigendecomposition, ``C = R V L``, ``C^+ = L^{-1} V^T R^+``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class RibLayer:
    C: np.ndarray  # (orig, rib): f_hat = x @ C
    C_pinv: np.ndarray  # (rib, orig)
    Lambda: np.ndarray  # (rib,)
    # attribution formulas: ||M|| / (gap of M's eigenvalue) per direction, which sets how far round-off moves
    # its eigenvector (0 for a masked direction)
    cond: np.ndarray | None = None


def centering_matrix(mean: np.ndarray, inverse: bool = False) -> np.ndarray:
    S = np.eye(len(mean))
    S[-1, :-1] = mean[:-1] if inverse else -mean[:-1]
    return S


def eigendecompose(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vals, vecs = np.linalg.eigh(A)
    vals = np.abs(vals)
    order = np.argsort(-vals, kind="stable")
    return vals[order], vecs[:, order]


def move_const_dir_first(D: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    is_const = (np.abs(U[-1, :]) > 1e-6) & (np.abs(D) > 1e-6)
    assert is_const.sum() == 1
    i = int(np.nonzero(is_const)[0][0])
    order = [i] + [j for j in range(len(D)) if j != i]
    return D[order], U[:, order]


def whitening(x: np.ndarray, rel_threshold: float, center: bool) -> tuple[np.ndarray, np.ndarray]:
    """rib's ``R = W D^{-1/2}`` and ``R^+ = D^{1/2} W^+`` (``W = Y U``) from rows ``x = [f, 1]``: centred, ``Y`` the
    centring matrix and the constant direction first (always kept); uncentred ``Y = I``. Gram eigenvalues at or
    below ``rel_threshold`` times the largest are dropped."""
    n = x.shape[1]
    Y, Y_inv = ((centering_matrix(x.mean(0)), centering_matrix(x.mean(0), inverse=True)) if center
                else (np.eye(n), np.eye(n)))
    D, U = eigendecompose((x @ Y).T @ (x @ Y) / len(x))
    if center:
        D, U = move_const_dir_first(D, U)
    kept = D > rel_threshold * D.max()
    kept[0] |= center
    s = np.sqrt(D[kept])
    return Y @ U[:, kept] / s, s[:, None] * (U[:, kept].T @ Y_inv)


def rib_layer(x: np.ndarray, M_dash: np.ndarray, rel_threshold: float) -> RibLayer:
    """One centred ``jacobian``-formula layer from activation rows ``x = [f, 1]`` ``(n, d+1)`` and ``M'``.

    ``rel_threshold`` plays rib's ``truncation_threshold``, taken relative to the largest eigenvalue.
    """
    R, R_pinv = whitening(x, rel_threshold, True)
    M = R_pinv @ M_dash @ R_pinv.T
    sub_vals, sub_vecs = eigendecompose(M[1:, 1:])
    V = np.zeros_like(M)
    V[0, 0] = 1.0
    V[1:, 1:] = sub_vecs
    Lam = np.concatenate([[M[0, 0]], sub_vals])
    keep = np.abs(Lam) > rel_threshold * np.abs(Lam).max()
    keep[0] = True
    L = np.diag(np.sqrt(Lam))[:, keep]
    L_inv = np.diag(1 / np.sqrt(Lam))[keep, :]
    return RibLayer(R @ V @ L, L_inv @ V.T @ R_pinv, Lam[keep])


def rib_layer_uncentred(x: np.ndarray, M_dash: np.ndarray, rel_threshold: float) -> RibLayer:
    """One uncentred (``center=False``) ``jacobian``-formula layer from ``x = [f, 1]`` ``(n, d+1)`` and ``M'``."""
    R, R_pinv = whitening(x, rel_threshold, False)
    M = R_pinv @ M_dash @ R_pinv.T
    Lam, V = eigendecompose(M)
    keep = Lam > rel_threshold * Lam.max()
    L = np.diag(np.sqrt(Lam))[:, keep]
    L_inv = np.diag(1 / np.sqrt(Lam))[keep, :]
    return RibLayer(R @ V @ L, L_inv @ V.T @ R_pinv, Lam[keep])


def m_dash(J: np.ndarray) -> np.ndarray:
    """``M' = 1/(N P_in) sum_x sum_s sum_{t,i} J_{ti,sj} J_{ti,sj'}`` from ``J`` ``(N, P_out, k, P_in, D)``."""
    N, _, _, P, _ = J.shape
    out = np.zeros((J.shape[-1], J.shape[-1]))
    for n in range(N):
        for s in range(P):
            Js = J[n, :, :, s, :].reshape(-1, J.shape[-1])
            out += Js.T @ Js
    return out / (N * P)


def squared_edges(Jhat: np.ndarray, f_hat: np.ndarray) -> np.ndarray:
    """``E_ij = 1/(N P_in) sum_x sum_t (sum_s Jhat_{ti,sj} f_hat_{sj})^2``.

    ``Jhat`` ``(N, P_out, k_out, P_in, k_in)`` (the gradient or integrated gradient in LIB
    coordinates), ``f_hat`` ``(N, P_in, k_in)``.
    """
    N, P_out, k_out, P_in, k_in = Jhat.shape
    E = np.zeros((k_out, k_in))
    for n in range(N):
        for t in range(P_out):
            for i in range(k_out):
                for j in range(k_in):
                    E[i, j] += sum(Jhat[n, t, i, s, j] * f_hat[n, s, j] for s in range(P_in)) ** 2
    return E / (N * P_in)


def hat_jacobian(Jx: np.ndarray, C_in_pinv: np.ndarray, C_out: np.ndarray | None) -> np.ndarray:
    """``d f_hat_out / d f_hat_in`` per example from ``d x_out / d x_in`` ``(N, P_o, D_o, P_i, D_i)``.

    Row convention: ``x_in = f_hat_in @ C_in_pinv`` and ``f_hat_out = x_out @ C_out``.
    """
    J = np.einsum("ntapb,kb->ntapk", Jx, C_in_pinv)
    return J if C_out is None else np.einsum("ntapk,al->ntlpk", J, C_out)


def gauss_legendre(points: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(points)
    return (x + 1) / 2, w / 2


# ----------------------------------------------------------------------------- test models
DT = torch.float64
THR = 1e-10


def tanh_mlp(seed: int = 0, duplicate: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT).eval()
    if duplicate:  # neuron 5 copies neuron 4: the covariance at "1" is singular
        with torch.no_grad():
            m[0].weight[5] = m[0].weight[4]
            m[0].bias[5] = m[0].bias[4]
    return m


class SeqMix(nn.Module):
    """Embedding, a position-wise Linear, fixed mixing over 3 positions, tanh, Linear (3 positions)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.embed = nn.Embedding(7, 4)
        self.lin1 = nn.Linear(4, 5)
        self.register_buffer("K", torch.randn(3, 3))
        self.act = nn.Tanh()
        self.lin2 = nn.Linear(5, 3)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        u = self.lin1(self.embed(t))
        return self.lin2(self.act(torch.einsum("pq,bqd->bpd", self.K, u)))


def to_np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().astype(np.float64)


def _ones(f: np.ndarray) -> np.ndarray:
    return np.concatenate([f, np.ones(f.shape[:-1] + (1,))], -1)


def _mlp_sections(model: nn.Module, x: torch.Tensor):
    """A tanh MLP's rows ``[f, 1]`` at '1' and '3' and, for the sections '1' -> '3' and '3' -> '4', the x-space
    Jacobian ``d x_out / d x_in`` at ``alpha x_in`` and the output ``x_out(alpha x_in)`` (the folded constant
    scaled by ``alpha`` too and passed on, as in rib's folded-bias layers)."""
    W2, b2, W4, b4 = (to_np(p) for p in (model[2].weight, model[2].bias, model[4].weight, model[4].bias))
    f1 = np.tanh(to_np(model[0](x)))
    pre = f1 @ W2.T + b2
    f3 = np.tanh(pre)
    N = len(x)
    J34 = np.broadcast_to(np.concatenate([W4, b4[:, None]], 1)[None, None, :, None, :], (N, 1, 3, 1, 6)).copy()

    def J13x(a: float) -> np.ndarray:
        g = 1 - np.tanh(a * pre) ** 2  # (N, 5)
        J = np.zeros((N, 1, 6, 1, 7))
        J[:, 0, :5, 0, :6] = g[:, :, None] * W2
        J[:, 0, :5, 0, 6] = g * b2
        J[:, 0, 5, 0, 6] = 1.0
        return J

    def out13(a: float) -> np.ndarray:
        return np.concatenate([np.tanh(a * pre), np.full((N, 1), a)], 1)[:, None]

    def out34(a: float) -> np.ndarray:
        return (a * (f3 @ W4.T + b4))[:, None]

    return _ones(f1), _ones(f3), (J13x, out13), (J34, out34)


def rib_mlp(model: nn.Module, x: torch.Tensor, center: bool = True):
    """rib's layers at '1' and '3' of a tanh MLP (``center``: rib's option), and the x-space
    Jacobians at ``alpha x``."""
    layer = rib_layer if center else rib_layer_uncentred
    x1, x3, (J13x, _), (J34, _) = _mlp_sections(model, x)
    L3 = layer(x3, m_dash(J34), THR)
    J13 = np.einsum("ntapb,al->ntlpb", J13x(1.0), L3.C)
    L1 = layer(x1, m_dash(J13), THR)
    return {"1": (L1, x1), "3": (L3, x3)}, J13x, J34


def _seq_sections(model: SeqMix, t: torch.Tensor):
    """:class:`SeqMix`'s rows ``[f, 1]`` ``(N, 3, d+1)`` at 'embed' and 'act' and, per section, the x-space
    Jacobian at ``alpha x_in`` and ``x_out(alpha x_in)`` (as :func:`_mlp_sections`)."""
    K, W1, b1, W2, b2 = (to_np(p) for p in (model.K, model.lin1.weight, model.lin1.bias, model.lin2.weight,
                                          model.lin2.bias))
    e = to_np(model.embed(t))  # (N, 3, 4)
    m = np.einsum("pq,nqd->npd", K, e @ W1.T + b1)
    act = np.tanh(m)
    N = len(t)
    J2 = np.zeros((N, 3, 3, 3, 6))
    for p in range(3):
        J2[:, p, :, p, :5] = W2
        J2[:, p, :, p, 5] = b2

    def J1x(a: float) -> np.ndarray:
        g = 1 - np.tanh(a * m) ** 2  # (N, 3, 5)
        J = np.zeros((N, 3, 6, 3, 5))
        for p in range(3):
            for q in range(3):
                J[:, p, :5, q, :4] = g[:, p, :, None] * K[p, q] * W1
                J[:, p, :5, q, 4] = g[:, p] * K[p, q] * b1
            J[:, p, 5, p, 4] = 1.0
        return J

    def out1(a: float) -> np.ndarray:
        return np.concatenate([np.tanh(a * m), np.full((N, 3, 1), a)], -1)

    def out2(a: float) -> np.ndarray:
        return a * (act @ W2.T + b2)

    return _ones(e), _ones(act), (J1x, out1), (J2, out2)


def rib_seq(model: SeqMix, t: torch.Tensor, center: bool = True):
    layer = rib_layer if center else rib_layer_uncentred
    xe, xa, (J1x, _), (J2, _) = _seq_sections(model, t)
    L_act = layer(xa.reshape(-1, 6), m_dash(J2), THR)
    J1 = np.einsum("ntapb,al->ntlpb", J1x(1.0), L_act.C)
    L_e = layer(xe.reshape(-1, 5), m_dash(J1), THR)
    return {"embed": (L_e, xe), "act": (L_act, xa)}, J1x, J2


# ----------------------------------------------------------------------------- rib's attribution formulas
# Written from rib's ``calc_basis_integrated_gradient`` (rib/linalg.py), ``M_dash_and_Lambda_dash_pre_forward_
# hook_fn`` (rib/hook_fns.py) and ``_calculate_one_interaction_rotation`` / ``build_sorted_lambda_matrices``
# (rib/interaction_algos.py), rib commit 7a6199f. With ``x`` the section's input (the folded constant included
# and scaled by alpha too), ``c(x) = x_out(x) @ C_out`` (``C_out = None``: the raw output) and the quadrature
# ``(alpha_m, w_m)``:
#   "(1-0)*alpha":  g_{sj} = sum_m w_m d/dy_{sj} [sum_{t,i} c_{ti}(y) c_{ti}(x)] at y = alpha_m x
#                          = sum_m w_m sum_{t,i} Jhat_{ti,sj}(alpha_m x) c_{ti}(x)
#   "(1-alpha)^2":  g_{sj} = sum_m w_m d/dy_{sj} [-sum_{t,i} (c_{ti}(x) - c_{ti}(y))^2] at y = alpha_m x
#                          = sum_m w_m 2 sum_{t,i} Jhat_{ti,sj}(alpha_m x) (c_{ti}(x) - c_{ti}(alpha_m x))
#   M'_{jj'} = 1/(N P) sum_x sum_s g_{sj} g_{sj'},   Lambda'_{jJ} = 1/(N P) sum_x sum_s g_{sj} x_{sJ}
# (P the input positions, 1 without). The basis: M = R^+ M' R^{+T}, V its (masked) eigenvectors,
# Lambda = |diag(V^T R^+ Lambda' R V)| (not M's eigenvalues), the directions after the masked ones sorted by
# Lambda descending, those below the threshold dropped; C = R V L, C^+ = L^{-1} V^T R^+ with L = diag(Lambda)^1/2.


def rib_quadrature(n_intervals: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """rib's ``_calc_integration_points``: ``(alphas, weights)``."""
    if method == "gradient":
        assert n_intervals == 0
        return np.ones(1), np.ones(1)
    if method == "gauss-legendre":
        x, w = np.polynomial.legendre.leggauss(n_intervals + 1)
        return (x + 1) / 2, w / 2
    assert method == "trapezoidal"
    if n_intervals == 0:
        return np.array([0.5]), np.ones(1)
    eps = 1e-3 / (n_intervals + 1)
    w = np.full(n_intervals + 1, 1.0 / n_intervals)
    w[[0, -1]] /= 2
    return np.linspace(eps, 1 - eps, n_intervals + 1), w


def attribution_moments(formula: str, Jx, out, C_out: np.ndarray | None, x_in: np.ndarray, alphas: np.ndarray,
                        weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(M', Lambda')`` of ``formula``: ``Jx(a)`` ``(N, P_o, D_o, P_i, D_i)`` is ``d x_out / d x_in`` at
    ``a x_in``, ``out(a)`` ``(N, P_o, D_o)`` is ``x_out(a x_in)``, ``x_in`` ``(N, P_i, D_i)``."""
    def hat(v: np.ndarray) -> np.ndarray:
        return v if C_out is None else v @ C_out

    c1 = hat(out(1.0))
    g = np.zeros(x_in.shape)
    for a, w in zip(alphas, weights):
        J = Jx(a) if C_out is None else np.einsum("ntapb,al->ntlpb", Jx(a), C_out)
        coef = c1 if formula == "(1-0)*alpha" else 2 * (c1 - hat(out(a)))
        g += w * np.einsum("ntlpb,ntl->npb", J, coef)
    N, P = x_in.shape[:2]
    return np.einsum("npj,npk->jk", g, g) / (N * P), np.einsum("npj,npk->jk", g, x_in) / (N * P)


def rib_layer_attribution(x: np.ndarray, M_dash: np.ndarray, Lambda_dash: np.ndarray, rel_threshold: float,
                          center: bool = True) -> RibLayer:
    """One layer of an attribution formula from rows ``x = [f, 1]`` ``(n, d+1)``, ``M'`` and ``Lambda'``.

    ``rel_threshold`` plays ``truncation_threshold`` relative to the largest Gram eigenvalue and the largest
    ``Lambda``; centred, the constant direction is masked (first, unsorted, kept)."""
    R, R_pinv = whitening(x, rel_threshold, center)
    M = R_pinv @ M_dash @ R_pinv.T
    n = 1 if center else 0
    m, sub = eigendecompose(M[n:, n:])
    gaps = np.array([np.abs(np.delete(m, j) - m[j]).min() if len(m) > 1 else np.inf for j in range(len(m))])
    cond = np.concatenate([np.zeros(n), m.max() / gaps])
    V = np.eye(len(M))
    V[n:, n:] = sub
    Lam = np.abs(np.diag(V.T @ R_pinv @ Lambda_dash @ R @ V))
    order = np.concatenate([np.arange(n), n + np.argsort(-Lam[n:], kind="stable")])
    keep = Lam[order] > rel_threshold * Lam.max()
    keep[:n] = True
    idx = order[keep]
    L = np.diag(np.sqrt(Lam))[:, idx]
    L_inv = np.diag(1 / np.sqrt(Lam))[idx, :]
    return RibLayer(R @ V @ L, L_inv @ V.T @ R_pinv, Lam[idx], cond[idx])


def rib_mlp_attribution(model: nn.Module, x: torch.Tensor, formula: str, alphas: np.ndarray, weights: np.ndarray,
                        center: bool = True) -> dict[str, tuple[RibLayer, np.ndarray]]:
    """rib's layers at '1' and '3' of a tanh MLP with an attribution ``formula``."""
    x1, x3, (J13x, out13), (J34, out34) = _mlp_sections(model, x)
    L3 = rib_layer_attribution(x3, *attribution_moments(formula, lambda a: J34, out34, None, x3[:, None], alphas,
                                                        weights), THR, center)
    L1 = rib_layer_attribution(x1, *attribution_moments(formula, J13x, out13, L3.C, x1[:, None], alphas, weights),
                               THR, center)
    return {"1": (L1, x1), "3": (L3, x3)}


def rib_seq_attribution(model: SeqMix, t: torch.Tensor, formula: str, alphas: np.ndarray, weights: np.ndarray,
                        center: bool = True) -> dict[str, tuple[RibLayer, np.ndarray]]:
    """rib's layers at 'embed' and 'act' of :class:`SeqMix` (3 positions) with an attribution ``formula``."""
    xe, xa, (J1x, out1), (J2, out2) = _seq_sections(model, t)
    L_act = rib_layer_attribution(xa.reshape(-1, 6), *attribution_moments(formula, lambda a: J2, out2, None, xa,
                                                                          alphas, weights), THR, center)
    L_e = rib_layer_attribution(xe.reshape(-1, 5), *attribution_moments(formula, J1x, out1, L_act.C, xe, alphas,
                                                                        weights), THR, center)
    return {"embed": (L_e, xe), "act": (L_act, xa)}
