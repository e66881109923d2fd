"""Numerical rank and nullity of a symmetric (curvature) operator, globally and per group.

The numerical rank of a symmetric ``H`` with eigenvalues ``mu_i`` is
``#{i : |mu_i| > tau}``, ``tau = max(atol, rtol * max_i |mu_i|)``; the nullity is
``p - rank``. The default ``rtol = p * eps`` (``eps`` of the operator's dtype) is the
convention of ``torch.linalg.matrix_rank``, so the dense path reproduces it.

Three ways to get the ``mu_i`` (``method=``):

* ``"dense"``: materialise ``H`` and ``eigvalsh`` (exact; ``p^2`` memory, ``p`` products).
* ``"gram"``: for factored operators ``H = sum_j A_j^T A_j`` (GGN, Fisher, per-sample
  gradients; ``op.factor_chunks``), ``rank(H) = rank(A)`` and the nonzero eigenvalues of
  ``A^T A`` equal those of the Gram ``A A^T`` (``n x n``, ``n = sum_j m_j`` rows). The smaller
  of the two (``min(n, p)`` squared) is accumulated in float64 while streaming the chunks.
  When ``n < p`` the off-diagonal Gram blocks ``A_i A_j^T`` need two chunks at once: if all
  of ``A`` fits ``gram_memory`` bytes (float64, CPU) it is held; otherwise chunks are
  recomputed pairwise (``n_chunks + 1`` passes over the data, no extra memory). Exact.
* ``"density"``: stochastic Lanczos quadrature (:mod:`wdecomp.spectral.density`; Ubaru &
  Saad 2016, ICML, "Fast methods for estimating the numerical rank of large matrices"):
  ``rank ~= p * mean_l sum_j tau_{lj} [|theta_{lj}| > tau]``, with ``tau`` relative to the
  largest Ritz value, and uncertainty the standard error across starts. An estimate: the
  quadrature cannot split eigenvalues closer to ``tau`` than its resolution, so the default
  ``rtol`` here is ``1e-3``.

``"auto"`` picks dense when the dense matrix fits ``dense_bytes``, else gram for factored
operators, else density.

Per-group ranks (``groups=``) are ranks of principal sub-blocks ``H[g, g]`` — the operator
restricted to a parameter group (``op.restrict``) — computed in the same call: sub-blocks of
the dense matrix, column slices of the streamed chunks, or a restricted operator per group.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from wdecomp.progress import progress_bar
from wdecomp.spectral._table import table, to_jsonable
from wdecomp.spectral.operator import OperatorCapabilityError, SpectralOperator, as_operator, to_dense

__all__ = ["RankResult", "rank"]

_METHODS = ("auto", "dense", "gram", "density")


@dataclass(frozen=True, eq=False)
class RankResult:
    """Numerical rank with the evidence behind it.

    Attributes:
        rank: The numerical rank (rounded estimate for ``"density"``).
        nullity: ``p - rank``.
        p: Operator size.
        threshold: Absolute eigenvalue threshold ``tau`` used.
        rtol: Relative tolerance used (``tau = max(atol, rtol * scale)``).
        scale: Largest ``|eigenvalue|`` (the estimate's largest Ritz value for density).
        method: ``"dense"``, ``"gram"`` or ``"density"``.
        uncertainty: Standard error of the rank (0 for exact methods).
        estimate: Unrounded rank estimate (equals ``rank`` for exact methods).
        eigenvalues: Eigenvalues (descending magnitude) for exact methods, else ``None``.
        margin: For exact methods, ``min |log10(|mu_i| / tau)|`` over eigenvalues: how many
            decades the nearest eigenvalue sits from the threshold (a rank is trustworthy
            when this is large).
        groups: Per-group results (name -> RankResult).
    """

    rank: int
    nullity: int
    p: int
    threshold: float
    rtol: float
    scale: float
    method: str
    uncertainty: float = 0.0
    estimate: float = 0.0
    eigenvalues: Tensor | None = None
    margin: float = float("inf")
    groups: Mapping[str, RankResult] = field(default_factory=dict)

    def __int__(self) -> int:
        return self.rank

    def __str__(self) -> str:
        def row(name: str, r: RankResult) -> tuple:
            unc = f"+- {r.uncertainty:.2g}" if r.method == "density" else "exact"
            return (name, r.rank, r.nullity, r.p, unc, r.threshold, r.margin)

        rows = [row("all", self)] + [row(n, g) for n, g in self.groups.items()]
        head = f"Numerical rank ({self.method}; tau = max(atol, {self.rtol:.2g} * {self.scale:.4g}))"
        return table(["group", "rank", "nullity", "p", "uncertainty", "threshold", "margin (dec)"], rows, head)

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(
            {
                "rank": self.rank,
                "nullity": self.nullity,
                "p": self.p,
                "threshold": self.threshold,
                "rtol": self.rtol,
                "scale": self.scale,
                "method": self.method,
                "uncertainty": self.uncertainty,
                "estimate": self.estimate,
                "margin": self.margin,
                "groups": {n: g.to_dict() for n, g in self.groups.items()},
            }
        )


def _exact(mu: Tensor, p: int, rtol: float, atol: float, method: str) -> RankResult:
    mu = mu.double().cpu()
    mags = mu.abs().sort(descending=True).values
    scale = float(mags[0]) if len(mags) else 0.0
    tau = max(atol, rtol * scale)
    r = int((mags > tau).sum())
    pos = mags[mags > 0]
    margin = float((pos / tau).log10().abs().min()) if tau > 0 and len(pos) else float("inf")
    return RankResult(r, p - r, p, tau, rtol, scale, method, 0.0, float(r), mags, margin)


def _group_indices(A: SpectralOperator, groups: Any) -> dict[str, Tensor]:
    """Map group name -> LongTensor of flat indices."""
    if groups is None:
        return {}
    params = A.params
    if isinstance(groups, str):
        if params is None:
            raise OperatorCapabilityError("groups='parameter'/'module' need an operator with params")
        groups = params.groups(groups)
    out = {}
    for name, spec in dict(groups).items():
        out[name] = _indices(spec, params, A.shape[0])
    return out


def _indices(spec: Any, params: Any, p: int) -> Tensor:
    if isinstance(spec, slice):
        return torch.arange(p)[spec]
    if isinstance(spec, Tensor):
        return torch.arange(p)[spec] if spec.dtype == torch.bool else spec.long().cpu()
    if isinstance(spec, str):
        spec = [spec]
    spec = list(spec)
    if spec and isinstance(spec[0], str):
        if params is None:
            raise OperatorCapabilityError("groups given by parameter names need an operator with params")
        sl = params.slices
        missing = [s for s in spec if s not in sl]
        if missing:
            raise KeyError(f"unknown parameter names in group: {missing}")
        return torch.cat([torch.arange(p)[sl[s]] for s in spec])
    return torch.as_tensor(spec, dtype=torch.long)


def _names_of(spec: Any, params: Any) -> list[str] | None:
    if isinstance(spec, str):
        return [spec]
    if isinstance(spec, (list, tuple)) and spec and all(isinstance(s, str) for s in spec):
        return list(spec)
    return None


def _gram_eigenvalues(
    A: SpectralOperator, idx: dict[str, Tensor], chunk_size: int, gram_memory: int, progress: bool | None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Eigenvalues of ``A^T A`` (or the Gram ``A A^T``) for the whole set and each group."""
    p = A.shape[0]
    keys = ["__all__"] + list(idx)
    cols = {"__all__": None, **idx}

    def chunks() -> Iterator[Tensor]:
        for c in A.factor_chunks(chunk_size):
            yield c.detach().to(device="cpu", dtype=torch.float64)

    def sub(c: Tensor, key: str) -> Tensor:
        return c if cols[key] is None else c[:, cols[key]]

    # One pass: accumulate p_g x p_g normal matrices (small when groups are small) and count rows.
    held: list[Tensor] = []
    normal = {k: None for k in keys}
    n_rows, fits = 0, True
    with progress_bar(total=None, desc="gram", enabled=progress) as bar:
        for c in chunks():
            n_rows += c.shape[0]
            for k in keys:
                s = sub(c, k)
                if s.shape[1] ** 2 * 8 <= gram_memory:
                    normal[k] = s.T @ s if normal[k] is None else normal[k] + s.T @ s
            if fits and n_rows * p * 8 <= gram_memory:
                held.append(c)
            else:
                fits, held = False, []
            bar.update(1)
    out: dict[str, Tensor] = {}
    need_gram = []
    for k in keys:
        pk = p if cols[k] is None else len(cols[k])
        if normal[k] is not None and pk <= n_rows:
            out[k] = torch.linalg.eigvalsh(normal[k])
        else:
            need_gram.append(k)
    if not need_gram:
        return out.pop("__all__"), out
    if fits:
        full = torch.cat(held)
        for k in need_gram:
            s = sub(full, k)
            out[k] = torch.linalg.eigvalsh(s @ s.T)
        return out.pop("__all__"), out
    # pairwise recomputation: G[i, j] = A_i A_j^T for j >= i, one pass over the chunks per i
    grams = {k: torch.zeros(n_rows, n_rows, dtype=torch.float64) for k in need_gram}
    r0 = 0
    for i, ci in enumerate(chunks()):
        r1 = r0 + ci.shape[0]
        s0 = 0
        for j, cj in enumerate(chunks()):
            s1 = s0 + cj.shape[0]
            if j >= i:
                for k in need_gram:
                    blk = sub(ci, k) @ sub(cj, k).T
                    grams[k][r0:r1, s0:s1] = blk
                    grams[k][s0:s1, r0:r1] = blk.T
            s0 = s1
        r0 = r1
    for k in need_gram:
        out[k] = torch.linalg.eigvalsh(grams[k])
    return out.pop("__all__"), out


def rank(
    op: Any,
    method: str = "auto",
    *,
    rtol: float | None = None,
    atol: float = 0.0,
    groups: str | Mapping[str, Any] | None = None,
    dense_bytes: int = 2**28,
    gram_memory: int = 2**30,
    chunk_size: int = 64,
    steps: int = 80,
    num_starts: int = 20,
    seed: int = 0,
    progress: bool | None = None,
) -> RankResult:
    """Numerical rank and nullity of a symmetric operator (see the module docstring).

    Args:
        op: Operator (see :func:`wdecomp.spectral.as_operator`).
        method: ``"auto"``, ``"dense"``, ``"gram"`` or ``"density"``.
        rtol: Relative threshold; default ``p * eps`` for exact methods, ``1e-3`` for density.
        atol: Absolute threshold floor.
        groups: Per-group ranks: ``"parameter"`` or ``"module"`` (from ``op.params``), or a
            mapping name -> parameter names / slice / index tensor into the flat vector.
        dense_bytes: Largest dense matrix ``"auto"`` builds.
        gram_memory: Bytes of float64 factor rows the gram method may hold on the CPU before
            it switches to pairwise recomputation.
        chunk_size: Rows per factor chunk (gram).
        steps, num_starts, seed: SLQ settings (density).
        progress: tqdm bars (default: only on a TTY).

    Returns:
        A :class:`RankResult` with the threshold, the uncertainty and per-group results.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    A = as_operator(op)
    p = A.shape[0]
    eps = torch.finfo(A.dtype).eps
    idx = _group_indices(A, groups)
    if method == "auto":
        itemsize = torch.empty((), dtype=A.dtype).element_size()
        if p * p * itemsize <= dense_bytes:
            method = "dense"
        elif A.has_factors:
            method = "gram"
        else:
            method = "density"

    if method == "dense":
        M = to_dense(A, max_bytes=max(dense_bytes, 2**28))
        r = rtol if rtol is not None else p * eps
        res = _exact(torch.linalg.eigvalsh(M), p, r, atol, "dense")
        sub = {}
        for name, ix in idx.items():
            ix = ix.to(M.device)
            rg = rtol if rtol is not None else len(ix) * eps
            sub[name] = _exact(torch.linalg.eigvalsh(M[ix][:, ix]), len(ix), rg, atol, "dense")
        return _with_groups(res, sub)

    if method == "gram":
        mu, mus = _gram_eigenvalues(A, idx, chunk_size, gram_memory, progress)
        r = rtol if rtol is not None else p * eps
        res = _exact(mu, p, r, atol, "gram")
        sub = {}
        for name, ix in idx.items():
            rg = rtol if rtol is not None else len(ix) * eps
            sub[name] = _exact(mus[name], len(ix), rg, atol, "gram")
        return _with_groups(res, sub)

    # density
    from wdecomp.spectral.density import slq_density

    r = rtol if rtol is not None else 1e-3

    def est(B: Any) -> RankResult:
        d = slq_density(B, steps=steps, num_starts=num_starts, seed=seed, grid=2, progress=progress)
        scale = float(d.nodes.abs().max())
        tau = max(atol, r * scale)
        e, se = d.count_above(tau)
        q = d.p
        rk = int(round(min(max(e, 0.0), q)))
        return RankResult(rk, q - rk, q, tau, r, scale, "density", se, e)

    res = est(A)
    sub = {}
    for name, spec in (groups.items() if isinstance(groups, Mapping) else []):
        names = _names_of(spec, A.params)
        sub[name] = est(A.restrict(names)) if names is not None else est(_SubOperator(A, idx[name]))
    if isinstance(groups, str):
        for name, names in A.params.groups(groups).items():
            sub[name] = est(A.restrict(names))
    return _with_groups(res, sub)


def _with_groups(res: RankResult, sub: dict[str, RankResult]) -> RankResult:
    from dataclasses import replace

    return replace(res, groups=sub)


class _SubOperator:
    """Principal sub-block ``P^T H P`` of an operator on the index set ``idx`` (by zero-padding)."""

    def __init__(self, A: SpectralOperator, idx: Tensor):
        self.A, self.idx = A, idx.to(A.device)
        self.shape = (len(idx), len(idx))
        self.dtype, self.device = A.dtype, A.device

    def __matmul__(self, V: Tensor) -> Tensor:
        V2 = V if V.dim() == 2 else V[:, None]
        full = torch.zeros(self.A.shape[0], V2.shape[1], dtype=V.dtype, device=V.device)
        full[self.idx] = V2
        out = self.A.matmat(full)[self.idx]
        return out if V.dim() == 2 else out[:, 0]

