"""Metrics of a parameter decomposition: ground truth, aliveness, sparsity, masking quality.

* :func:`mmcs_ml2r` — mean max cosine similarity and mean L2 ratio (SPD paper, arXiv 2506.20790,
  Sec. 3.1, equations for MMCS and ML2R; Sharkey et al. 2022): for each column ``W_{:,j}`` (input
  feature ``j``), the subcomponent column ``U_{:,c} V_{c,j}`` with the largest cosine similarity,
  and the ratio of its norm to ``||W_{:,j}||`` (reference: ``TMSAnalyzer.compute_cosine_similarities``
  and ``print_analysis_summary`` in ``spd/experiments/tms/plotting.py``, branch ``spd-paper``).
* :func:`hungarian_identity` — the one-hot causal-importance matrix (inputs x subcomponents) matched
  to subcomponents by a maximum-weight assignment (Hungarian algorithm, ``scipy``'s
  ``linear_sum_assignment``) and compared with ``[I | 0]``.
* :func:`alive` — subcomponents with a rank-one piece of norm above 5% of the layer's largest and
  an importance above a threshold on some input.
* :func:`ci_l0` — mean number of subcomponents per example with importance above a cutoff (the
  reference's ``calc_ci_l_zero``, cutoff 0.01).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from wdecomp.errors import ArgumentError, ShapeError

__all__ = ["GroundTruth", "HungarianResult", "hungarian_identity", "mmcs_ml2r", "piece_norms"]


@dataclass(frozen=True)
class GroundTruth:
    """MMCS and ML2R of one layer against its target weight.

    Attributes:
        mmcs: ``mean_j max_c cos(U_{:,c} V_{c,j}, W_{:,j})``.
        ml2r: ``mean_j ||U_{:,m(j)} V_{m(j),j}|| / ||W_{:,j}||`` with ``m(j)`` the argmax above.
        cosines: ``(d_in,)`` the maxima.
        ratios: ``(d_in,)`` the norm ratios.
        match: ``(d_in,)`` ``m(j)``.
    """

    mmcs: float
    ml2r: float
    cosines: tuple[float, ...]
    ratios: tuple[float, ...]
    match: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"mmcs": self.mmcs, "ml2r": self.ml2r, "cosines": list(self.cosines), "ratios": list(self.ratios),
                "match": list(self.match)}


def mmcs_ml2r(W: Tensor, U: Tensor, V: Tensor, eps: float = 1e-12) -> GroundTruth:
    """MMCS and ML2R of the subcomponents ``U_{:,c} V_{c,:}`` against ``W`` (``d_out x d_in``).

    Args:
        W: Target weight ``(d_out, d_in)``; its columns are the ground-truth directions.
        U: ``(d_out, C)``.
        V: ``(C, d_in)``.
        eps: Added to norms (a zero column has cosine 0).
    """
    if W.dim() != 2 or U.shape != (W.shape[0], U.shape[1]) or V.shape != (U.shape[1], W.shape[1]):
        raise ShapeError(f"W {tuple(W.shape)}, U {tuple(U.shape)}, V {tuple(V.shape)}: "
                         "need W (o, i), U (o, C), V (C, i)")
    W, U, V = W.detach().double(), U.detach().double(), V.detach().double()
    pieces = U.T[:, :, None] * V[:, None, :]  # (C, d_out, d_in): column j of piece c
    pn = pieces.norm(dim=1)  # (C, d_in)
    wn = W.norm(dim=0)  # (d_in,)
    cos = (pieces * W[None]).sum(dim=1) / (pn * wn[None] + eps)
    best, match = cos.max(dim=0)
    ratios = pn[match, torch.arange(W.shape[1])] / (wn + eps)
    return GroundTruth(float(best.mean()), float(ratios.mean()), tuple(best.tolist()), tuple(ratios.tolist()),
                       tuple(int(m) for m in match))


def piece_norms(U: Tensor, V: Tensor) -> Tensor:
    """Frobenius norms ``||U_{:,c} V_{c,:}||_F = ||U_{:,c}|| ||V_{c,:}||`` ``(C,)``."""
    return U.detach().norm(dim=0) * V.detach().norm(dim=1)


@dataclass(frozen=True)
class HungarianResult:
    """Outcome of :func:`hungarian_identity`.

    Attributes:
        passed: At most ``max_errors`` entries off ``[I | 0]`` by more than ``tol``.
        errors: Entries of the permuted matrix farther than ``tol`` from ``[I | 0]``.
        matched: ``(n,)`` subcomponent matched to each input.
        diagonal: ``(n,)`` importance of each input's matched subcomponent.
        max_off: Largest off-diagonal importance after matching.
        tol: The tolerance.
        max_errors: The allowed number of errors.
    """

    passed: bool
    errors: int
    matched: tuple[int, ...]
    diagonal: tuple[float, ...]
    max_off: float
    tol: float
    max_errors: int

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "errors": self.errors, "matched": list(self.matched),
                "diagonal": list(self.diagonal), "max_off": self.max_off, "tol": self.tol,
                "max_errors": self.max_errors}


def hungarian_identity(matrix: Tensor | np.ndarray, tol: float = 0.1, max_errors: int = 1) -> HungarianResult:
    """Is the importance matrix a permutation of the identity (padded with zero columns)?

    ``matrix`` is ``(n_inputs, C)``: row ``i`` holds the importances on one-hot input ``i``. The
    columns are matched to the rows by the assignment maximising the matched importances; the
    permuted matrix ``P`` (matched columns first, in row order, then the rest) is compared with
    ``[I_n | 0]`` entry by entry.

    Args:
        matrix: ``(n, C)`` with ``C >= n``.
        tol: Largest allowed ``|P_{ij} - [I | 0]_{ij}|``.
        max_errors: Entries allowed beyond ``tol``.

    Raises:
        ShapeError: fewer columns than rows.
    """
    M = np.asarray(matrix.detach().cpu().double() if isinstance(matrix, Tensor) else matrix, dtype=float)
    if M.ndim != 2 or M.shape[1] < M.shape[0]:
        raise ShapeError(f"need an (inputs x subcomponents) matrix with at least as many columns as rows, "
                         f"got {M.shape}")
    if tol < 0:
        raise ArgumentError(f"tol must be >= 0, got {tol}")
    n = M.shape[0]
    rows, cols = linear_sum_assignment(-M)
    order = np.empty(n, dtype=int)
    order[rows] = cols
    rest = [c for c in range(M.shape[1]) if c not in set(order.tolist())]
    P = M[:, list(order) + rest]
    expect = np.zeros_like(P)
    expect[np.arange(n), np.arange(n)] = 1.0
    errors = int((np.abs(P - expect) > tol).sum())
    off = P.copy()
    off[np.arange(n), np.arange(n)] = -np.inf
    return HungarianResult(errors <= max_errors, errors, tuple(int(c) for c in order),
                           tuple(float(v) for v in P[np.arange(n), np.arange(n)]), float(off.max()), tol, max_errors)


def count_alive(norms: Tensor, max_importance: Tensor, threshold: float = 0.1, norm_fraction: float = 0.05) -> Tensor:
    """Boolean ``(C,)``: piece norm above ``norm_fraction`` of the layer's largest and importance above
    ``threshold`` on some input."""
    return (norms > norm_fraction * norms.max()) & (max_importance > threshold)


def layer_ci_l0(g: Tensor, cutoff: float = 0.01) -> float:
    """Mean over examples (and positions) of ``#{c : g_c > cutoff}``."""
    return float((g > cutoff).to(torch.float64).sum(dim=-1).mean())
