"""An independent numpy re-implementation of rib's layer-norm variance node (float64), for the tests.

Written from rib's formulas (commit 7a6199f), in rib's row-vector convention (``f_hat = x @ C``),
never from wdecomp's code. rib splits a LayerNorm into ``LayerNormIn`` (``var = mean_i (x_i -
mean x)^2``, rib's ``variance``) and ``LayerNormOut`` (``(x - mean x) / sqrt(var + eps)``, rib's
``layer_norm``); its node layers ``ln1_out.N`` / ``ln2_out.N`` carry ``[var, residual, 1]`` (the
folded bias last). With ``isolate_ln_var`` (``_calculate_one_interaction_rotation``): the Gram matrix
of the centred activations is decomposed with coordinate 0 (the variance) masked
(``masked_eigendecompose(G, 1)``), the constant moved first (``move_const_dir_first``), and ``M`` with
``n_masked = 2`` (constant and variance) masked; ``build_sorted_lambda_matrices`` sorts and truncates
the rest (rib's ``eigendecompose``, ``move_const_dir_first`` and ``centering_matrix`` are taken from
``tests/_rib_reference.py``). The model is a residual MLP with LayerNorms (``LnResMLP``) whose per-example Jacobians
``d x^{l+1} / d x^l`` between the variance points are written out by hand below.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from _rib_reference import centering_matrix, eigendecompose, move_const_dir_first, to_np
from torch import nn

from wdecomp.models.transformer import Transformer, TransformerConfig

DT = torch.float64
THR = 1e-10


@dataclass
class RibLayer:
    C: np.ndarray  # (orig, rib): f_hat = x @ C
    C_pinv: np.ndarray  # (rib, orig)
    Lambda: np.ndarray  # (rib,)


def masked_eigendecompose(A: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """rib's ``masked_eigendecompose``: the first ``n`` rows/columns kept apart."""
    sub_vals, sub_vecs = eigendecompose(A[n:, n:])
    vecs = np.zeros_like(A)
    vecs[:n, :n] = np.eye(n)
    vecs[n:, n:] = sub_vecs
    return np.concatenate([np.diag(A)[:n], sub_vals]), vecs


def rib_layer_ln(x: np.ndarray, M_dash: np.ndarray, isolate: bool, center: bool = True,
                 rel_threshold: float = THR) -> RibLayer:
    """One ``jacobian``-formula layer at a ``ln*_out`` node layer from rows ``x = [var, f, 1]``
    (``center``: rib's option; without it no centring matrix, no constant moved first, and only the
    variance masked).

    ``rel_threshold`` plays rib's ``truncation_threshold``, relative to the largest eigenvalue.
    """
    mean = x.mean(0)
    Y = centering_matrix(mean) if center else np.eye(len(mean))
    Y_inv = centering_matrix(mean, inverse=True) if center else np.eye(len(mean))
    xc = x @ Y
    G = xc.T @ xc / len(x)
    D, U = masked_eigendecompose(G, 1) if isolate else eigendecompose(G)
    if center:
        D, U = move_const_dir_first(D, U)
    keep = D > rel_threshold * D.max()
    D, U = D[keep], U[:, keep]
    R = Y @ U @ np.diag(1 / np.sqrt(D))
    R_pinv = np.diag(np.sqrt(D)) @ U.T @ Y_inv
    M = R_pinv @ M_dash @ R_pinv.T
    n_masked = int(center) + int(isolate)
    Lam, V = masked_eigendecompose(M, n_masked)
    # build_sorted_lambda_matrices(ignore_first_n=n_masked): the rest is already sorted; truncate it
    keep = np.abs(Lam) > rel_threshold * np.abs(Lam).max()
    keep[:n_masked] = True
    L = np.diag(np.sqrt(Lam))[:, keep]
    L_inv = np.diag(1 / np.sqrt(Lam))[keep, :]
    return RibLayer(R @ V @ L, L_inv @ V.T @ R_pinv, Lam[keep])


def m_dash(J: np.ndarray) -> np.ndarray:
    """``M' = 1/N sum_x J(x)^T J(x)`` from per-example Jacobians ``J`` ``(N, k, D)`` (one position)."""
    return np.einsum("nki,nkj->ij", J, J) / len(J)


# ----------------------------------------------------------------------------- the model
class LnBlock(nn.Module):
    """``x + W_o tanh(W_h LN(x) + b_h) + b_o``."""

    def __init__(self, d: int, h: int, affine: bool) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d, elementwise_affine=affine)
        self.hidden = nn.Linear(d, h)
        self.act = nn.Tanh()
        self.out = nn.Linear(h, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.out(self.act(self.hidden(self.ln(x))))


class LnResMLP(nn.Module):
    """Two pre-LayerNorm residual blocks, a final LayerNorm and a linear read-out (float64)."""

    def __init__(self, d: int = 4, h: int = 5, out: int = 3, affine: bool = True, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.blocks = nn.ModuleList(LnBlock(d, h, affine) for _ in range(2))
        self.ln_f = nn.LayerNorm(d, elementwise_affine=affine)
        self.unembed = nn.Linear(d, out)
        with torch.no_grad():  # gains and biases of the LayerNorms away from 1 and 0
            for ln in (self.blocks[0].ln, self.blocks[1].ln, self.ln_f):
                if affine:
                    ln.weight.copy_(1 + 0.5 * torch.randn(d))
                    ln.bias.copy_(0.5 * torch.randn(d))
        self.to(DT).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return self.unembed(self.ln_f(x))


def ln_transformer(n_layers: int = 2, d_model: int = 8) -> Transformer:
    """wdecomp's ``Transformer`` with LayerNorms (float64), gains and biases moved off 1 and 0."""
    torch.manual_seed(0)
    m = Transformer(TransformerConfig(d_vocab=7, d_model=d_model, n_layers=n_layers, n_heads=2, context=4))
    m = m.to(DT).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "ln" in name:
                p.add_(0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
    return m


POINTS = ["blocks.0.ln:variance@blocks.0:input", "blocks.1.ln:variance@blocks.1:input", "ln_f:variance", "unembed"]


def _ln_params(ln: nn.LayerNorm, d: int) -> tuple[np.ndarray, np.ndarray, float]:
    g = to_np(ln.weight) if ln.weight is not None else np.ones(d)
    b = to_np(ln.bias) if ln.bias is not None else np.zeros(d)
    return g, b, float(ln.eps)


def _var(x: np.ndarray) -> np.ndarray:
    return ((x - x.mean(-1, keepdims=True)) ** 2).mean(-1)


def _ln_out_jacobian(x: np.ndarray, v: np.ndarray, g: np.ndarray, be: np.ndarray, eps: float):
    """``u = g * (x - mean x) / sqrt(v + eps) + be s`` (rib's LayerNormOut, LN weights folded on):
    ``u`` ``(N, d)`` and ``du / d[v, x, s]`` ``(N, d, d + 2)``."""
    N, d = x.shape
    xc = x - x.mean(-1, keepdims=True)
    r = 1 / np.sqrt(v + eps)  # (N,)
    u = g * xc * r[:, None] + be
    J = np.zeros((N, d, d + 2))
    J[:, :, 0] = g * xc * (-0.5 * r[:, None] ** 3)
    J[:, :, 1:d + 1] = (g[:, None] * (np.eye(d) - 1 / d))[None] * r[:, None, None]
    J[:, :, d + 1] = be
    return u, J


def _block_jacobian(block: LnBlock, x: np.ndarray, v: np.ndarray):
    """``[v, x, 1] -> [v', x', 1]`` through one block: the next activation rows and the Jacobian
    ``(N, d + 2, d + 2)``."""
    N, d = x.shape
    g, be, eps = _ln_params(block.ln, d)
    Wh, bh, Wo, bo = (to_np(p) for p in (block.hidden.weight, block.hidden.bias, block.out.weight, block.out.bias))
    u, Ju = _ln_out_jacobian(x, v, g, be, eps)
    z = u @ Wh.T + bh
    a = np.tanh(z)
    Jz = np.einsum("hd,ndk->nhk", Wh, Ju)
    Jz[:, :, d + 1] += bh
    Ja = (1 - a ** 2)[:, :, None] * Jz
    x2 = x + a @ Wo.T + bo
    Jx = np.einsum("dh,nhk->ndk", Wo, Ja)
    Jx[:, :, 1:d + 1] += np.eye(d)
    Jx[:, :, d + 1] += bo
    dv = 2 * (x2 - x2.mean(-1, keepdims=True)) / d  # d var(x') / d x'
    J = np.zeros((N, d + 2, d + 2))
    J[:, 0] = np.einsum("nd,ndk->nk", dv, Jx)
    J[:, 1:d + 1] = Jx
    J[:, d + 1, d + 1] = 1.0
    return x2, _var(x2), J


def _rows(v: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.concatenate([v[:, None], x, np.ones((len(x), 1))], 1)


def _activations_and_jacobians(model: LnResMLP, x: torch.Tensor) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Rows ``[var, f, 1]`` at the three variance points and the Jacobians between them (the last to
    the read-out's output)."""
    x0 = to_np(x)
    d = x0.shape[1]
    v0 = _var(x0)
    x1, v1, J01 = _block_jacobian(model.blocks[0], x0, v0)
    x2, v2, J12 = _block_jacobian(model.blocks[1], x1, v1)
    g, be, eps = _ln_params(model.ln_f, d)
    Wu, bu = to_np(model.unembed.weight), to_np(model.unembed.bias)
    _, Ju = _ln_out_jacobian(x2, v2, g, be, eps)
    J2o = np.einsum("od,ndk->nok", Wu, Ju)
    J2o[:, :, d + 1] += bu
    return [_rows(v0, x0), _rows(v1, x1), _rows(v2, x2)], [J01, J12, J2o]


def rib_ln_model(model: LnResMLP, x: torch.Tensor, isolate: bool = True,
                 center: bool = True) -> dict[str, tuple[RibLayer, np.ndarray]]:
    """rib's layers at the three variance points of ``model`` on inputs ``x`` ``(N, d)``: point ->
    (layer, activation rows ``[var, f, 1]``). The read-out is the last node layer (not rotated)."""
    X, J = _activations_and_jacobians(model, x)
    L2 = rib_layer_ln(X[2], m_dash(J[2]), isolate, center)
    L1 = rib_layer_ln(X[1], m_dash(np.einsum("nak,al->nlk", J[1], L2.C)), isolate, center)
    L0 = rib_layer_ln(X[0], m_dash(np.einsum("nak,al->nlk", J[0], L1.C)), isolate, center)
    return {POINTS[0]: (L0, X[0]), POINTS[1]: (L1, X[1]), POINTS[2]: (L2, X[2])}


def rib_ln_edges(model: LnResMLP, x: torch.Tensor, layers: dict[str, tuple[RibLayer, np.ndarray]]) -> list[np.ndarray]:
    """rib's squared edges (``calc_edge_squared``, ``integration_method="gradient"``) between the
    variance points and to the output: ``E_ij = 1/N sum_x (d f_hat_i / d f_hat_j  f_hat_j)^2``."""
    X, J = _activations_and_jacobians(model, x)
    Ls = [layers[p][0] for p in POINTS[:3]]
    out = []
    for i in range(3):
        Jhat = np.einsum("nab,kb->nak", J[i], Ls[i].C_pinv)  # d x_out / d f_hat_in
        if i < 2:
            Jhat = np.einsum("nak,al->nlk", Jhat, Ls[i + 1].C)
        f_hat = X[i] @ Ls[i].C
        out.append(np.mean((Jhat * f_hat[:, None, :]) ** 2, 0))
    return out
