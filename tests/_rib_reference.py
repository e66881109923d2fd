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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RibLayer:
    C: np.ndarray  # (orig, rib): f_hat = x @ C
    C_pinv: np.ndarray  # (rib, orig)
    Lambda: np.ndarray  # (rib,)


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


def rib_layer(x: np.ndarray, M_dash: np.ndarray, rel_threshold: float) -> RibLayer:
    """One centred ``jacobian``-formula layer from activation rows ``x = [f, 1]`` ``(n, d+1)`` and ``M'``.

    ``rel_threshold`` plays rib's ``truncation_threshold``, taken relative to the largest eigenvalue.
    """
    mean = x.mean(0)
    xc = x @ centering_matrix(mean)
    G = xc.T @ xc / len(x)
    D, U = move_const_dir_first(*eigendecompose(G))
    keep = D > rel_threshold * D.max()
    keep[0] = True
    D, U = D[keep], U[:, keep]
    Y, Y_inv = centering_matrix(mean), centering_matrix(mean, inverse=True)
    W, W_pinv = Y @ U, U.T @ Y_inv
    R = W @ np.diag(1 / np.sqrt(D))
    R_pinv = np.diag(np.sqrt(D)) @ W_pinv
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
