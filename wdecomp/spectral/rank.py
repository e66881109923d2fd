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
  Saad 2016, ICML, "Fast methods for estimating the numerical rank of large matrices"): the point
  estimate ``p * mean_l sum_j w_{lj} [|theta_{lj}| > tau]`` and a 95% interval that combines
  the sampling error over starts with rigorous per-start bounds from Gauss-Radau rules at
  ``+-tau`` (:meth:`SpectralDensity.count_interval`): ``L`` Lanczos steps cannot tell an
  eigenvalue just below ``tau`` from one just above, and the interval says how much that
  matters. When the interval is wider than a tenth of ``p`` (or ``tau`` lies below the
  round-off floor ``sqrt(eps) ||H||``, where Ritz values move by ``L eps ||H||``) the result
  is marked ``estimable=False``: the quantity cannot be estimated at this size and threshold.

**One threshold convention for every method.** ``tau = max(atol, rtol * ||H||_2)`` with the
default ``rtol = p * eps`` whatever the method, so ``"auto"`` changes how the count is
obtained, never which count it is; the result names the quantity (``RankResult.quantity``).
At the default threshold the density method is not estimable (it is below the round-off
floor); ask for a coarser threshold (``rtol >= sqrt(eps)``) to count "directions that
matter" on large operators.

``"auto"`` picks dense when the dense matrix fits ``dense_bytes``, else gram for factored
operators, else density; per group it picks again by the group's size, so small groups are
counted exactly even when the whole operator is estimated.

Per-group ranks (``groups=``) are ranks of principal sub-blocks ``H[g, g]`` — the operator
restricted to a parameter group (``op.restrict``) — computed in the same call: sub-blocks of
the dense matrix, column slices of the streamed chunks, or a restricted operator per group.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from wdecomp.errors import ArgumentError
from wdecomp.linop import LinOp, OperatorCapabilityError, aslinop, to_dense
from wdecomp.progress import progress_bar
from wdecomp.spectral._table import table, to_jsonable
from wdecomp.spectral.density import SpectralDensity, slq_density

__all__ = ["RankResult", "rank"]

_METHODS = ("auto", "dense", "gram", "density")
QUANTITY = "#{i : |mu_i| > tau}"


@dataclass(frozen=True, eq=False)
class RankResult:
    """Numerical rank with the evidence behind it.

    Attributes:
        rank: The count ``#{i : |mu_i| > threshold}`` (rounded point estimate for ``"density"``).
        nullity: ``p - rank``.
        p: Operator size.
        threshold: Absolute eigenvalue threshold ``tau`` used.
        rtol: Relative tolerance used (``tau = max(atol, rtol * scale)``).
        scale: Largest ``|eigenvalue|`` (the largest Ritz value for density).
        method: ``"dense"``, ``"gram"`` or ``"density"``.
        uncertainty: Standard error of the point estimate over random starts (0 when exact).
        estimate: Unrounded point estimate (equals ``rank`` for exact methods).
        eigenvalues: Eigenvalues (descending magnitude) for exact methods, else ``None``.
        margin: For exact methods, ``min |log10(|mu_i| / tau)|`` over nonzero eigenvalues: how
            many decades the nearest eigenvalue sits from the threshold (a rank is trustworthy
            when this is large); ``nan`` where it does not apply (density, or no nonzero
            eigenvalue).
        groups: Per-group results (name -> RankResult).
        interval: 95% interval for the count (``(rank, rank)`` when exact).
        estimable: ``False`` when the density interval is wider than ``p / 10`` or the threshold
            is below SLQ's round-off floor: the count is then not estimable at this size.
        quantity: What is counted, in words (the same for every method).
        note: Why a density result is or is not estimable.
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
    margin: float = float("nan")
    groups: Mapping[str, RankResult] = field(default_factory=dict)
    interval: tuple[float, float] = (float("nan"), float("nan"))
    estimable: bool = True
    quantity: str = QUANTITY
    note: str = ""

    def __int__(self) -> int:
        return self.rank

    def __str__(self) -> str:
        def row(name: str, r: RankResult) -> tuple:
            if r.method == "density":
                lo, hi = r.interval
                unc = f"95% [{lo:.1f}, {hi:.1f}]" + ("" if r.estimable else " not estimable")
            else:
                unc = "exact"
            margin = "n/a" if not math.isfinite(r.margin) else f"{r.margin:.3g}"
            return (name, r.method, r.rank, r.nullity, r.p, unc, r.threshold, margin)

        rows = [row("all", self)] + [row(n, g) for n, g in self.groups.items()]
        head = (
            f"Numerical rank: {self.quantity}, tau = max(atol, {self.rtol:.2g} * {self.scale:.4g})"
        )
        text = table(["group", "method", "rank", "nullity", "p", "uncertainty", "threshold", "margin (dec)"], rows,
                     head)
        notes = [f"{n}: {g.note}" for n, g in [("all", self), *self.groups.items()] if g.note]
        return text + ("\n" + "\n".join(notes) if notes else "")

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
                "interval": list(self.interval),
                "estimable": self.estimable,
                "quantity": self.quantity,
                "note": self.note,
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
    margin = float((pos / tau).log10().abs().min()) if tau > 0 and len(pos) else float("nan")
    return RankResult(r, p - r, p, tau, rtol, scale, method, 0.0, float(r), mags, margin, interval=(r, r))


def _group_indices(A: LinOp, groups: Any) -> dict[str, Tensor]:
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
    A: LinOp, idx: dict[str, Tensor], chunk_size: int, gram_memory: int, progress: bool | None
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

    Counts ``#{i : |mu_i| > tau}``, ``tau = max(atol, rtol * ||H||_2)``: the same quantity for
    every method, so ``method`` only says how it is obtained.

    Args:
        op: Operator (see :func:`wdecomp.linop.aslinop`), or a :class:`SpectralDensity` from
            :func:`slq_density` (``num_starts >= 2``): the density count is then read off that
            run with no further products (``method``, ``steps``, ``num_starts`` ignored), so a
            density plot and its rank share one Lanczos run.
        method: ``"auto"``, ``"dense"``, ``"gram"`` or ``"density"``.
        rtol: Relative threshold; default ``q * eps`` for an operator (or group) of size ``q``,
            for every method (the ``torch.linalg.matrix_rank`` convention).
        atol: Absolute threshold floor.
        groups: Per-group ranks: ``"parameter"`` or ``"module"`` (from ``op.params``), or a
            mapping name -> parameter names / slice / index tensor into the flat vector.
        dense_bytes: Largest dense matrix ``"auto"`` builds (for the whole and for each group).
        gram_memory: Bytes of float64 factor rows the gram method may hold on the CPU before
            it switches to pairwise recomputation.
        chunk_size: Rows per factor chunk (gram).
        steps, num_starts, seed: SLQ settings (density; ``num_starts >= 2`` for an interval).
        progress: tqdm bars (default: only on a TTY).

    Returns:
        A :class:`RankResult` with the threshold, the interval, whether the count is estimable,
        and per-group results.

    Raises:
        ArgumentError: An unknown method, a negative or non-finite ``rtol``/``atol``, or SLQ
            settings below one.
    """
    if method not in _METHODS:
        raise ArgumentError(f"method must be one of {_METHODS}, got {method!r}")
    for name, value in (("rtol", rtol), ("atol", atol)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ArgumentError(f"{name} must be a finite number >= 0, got {value}")
    if steps < 1 or num_starts < 2 or chunk_size < 1:
        raise ArgumentError(
            f"rank needs steps >= 1, num_starts >= 2 and chunk_size >= 1 "
            f"(got steps={steps}, num_starts={num_starts}, chunk_size={chunk_size})"
        )
    if isinstance(op, SpectralDensity):  # an SLQ run already made: count on it, no products
        if groups is not None:
            raise ArgumentError("groups need the operator: pass op itself, not a spectral density, for per-group ranks")
        eps = op.tridiagonals.eps if op.tridiagonals is not None else 0.0
        return _rank_of_density(op, rtol if rtol is not None else op.p * eps, atol)
    A = aslinop(op)
    p = A.shape[0]
    eps = torch.finfo(A.dtype).eps
    itemsize = torch.empty((), dtype=A.dtype).element_size()
    idx = _group_indices(A, groups)
    fits = p * p * itemsize <= dense_bytes
    chosen = method if method != "auto" else "dense" if fits else "gram" if A.has_factors else "density"

    def rel(q: int) -> float:
        return rtol if rtol is not None else q * eps

    if chosen == "dense":
        M = to_dense(A, max_bytes=max(dense_bytes, 2**28))
        res = _exact(torch.linalg.eigvalsh(M), p, rel(p), atol, "dense")
        sub = {}
        for name, ix in idx.items():
            ix = ix.to(M.device)
            sub[name] = _exact(torch.linalg.eigvalsh(M[ix][:, ix]), len(ix), rel(len(ix)), atol, "dense")
        return _with_groups(res, sub)

    if chosen == "gram":
        mu, mus = _gram_eigenvalues(A, idx, chunk_size, gram_memory, progress)
        res = _exact(mu, p, rel(p), atol, "gram")
        sub = {name: _exact(mus[name], len(ix), rel(len(ix)), atol, "gram") for name, ix in idx.items()}
        return _with_groups(res, sub)

    def density(B: Any) -> RankResult:
        return _density_rank(B, rel(B.shape[0]), atol, steps, num_starts, seed, progress)

    res = density(A)
    sub = {}
    for name, B in _group_operators(A, groups, idx):
        small = B.shape[0] ** 2 * itemsize <= dense_bytes
        if method == "auto" and small:
            sub[name] = _exact(torch.linalg.eigvalsh(to_dense(B, max_bytes=dense_bytes)), B.shape[0],
                               rel(B.shape[0]), atol, "dense")
        else:
            sub[name] = density(B)
    return _with_groups(res, sub)


def _group_operators(A: LinOp, groups: Any, idx: dict[str, Tensor]) -> Iterator[tuple[str, LinOp]]:
    """The operator restricted to each group: ``A.restrict`` by parameter names where the
    operator can (products only over that group's parameters), else a zero-padded sub-block."""
    if isinstance(groups, str):
        for name, names in A.params.groups(groups).items():
            yield name, aslinop(A.restrict(names))
        return
    for name, spec in (groups.items() if isinstance(groups, Mapping) else []):
        names = _names_of(spec, A.params)
        yield name, aslinop(A.restrict(names)) if names is not None else _SubOperator(A, idx[name])


def _density_rank(
    B: LinOp, rtol: float, atol: float, steps: int, num_starts: int, seed: int, progress: bool | None
) -> RankResult:
    """SLQ count of ``|mu| > tau`` with its interval and the estimability verdict."""
    d = slq_density(B, steps=steps, num_starts=num_starts, seed=seed, grid=2, progress=progress)
    return _rank_of_density(d, rtol, atol)


def _rank_of_density(d: SpectralDensity, rtol: float, atol: float) -> RankResult:
    """The count of :func:`_density_rank` read off an SLQ run already made (no products)."""
    if d.tridiagonals is None or d.nodes.shape[0] < 2:
        raise ArgumentError(
            "a rank from a spectral density needs the Lanczos tridiagonals of at least 2 starts "
            "(a density from wd.slq_density(op, num_starts >= 2)); this one "
            + ("was built by hand" if d.tridiagonals is None else "has 1 start")
        )
    num_starts, steps = d.nodes.shape
    q = d.p
    eps = d.tridiagonals.eps
    scale = float(d.nodes.abs().max())
    tau = max(atol, rtol * scale)
    e, se = d.count_above(tau)
    rk = int(round(min(max(e, 0.0), q)))
    floor = math.sqrt(eps) * scale
    if tau < floor:
        interval, estimable = (0.0, float(q)), False
        note = (
            f"not estimable: tau = {tau:.3g} is below SLQ's round-off floor sqrt(eps) ||H|| = {floor:.3g} "
            f"(Ritz values move by about steps * eps * ||H||); pass rtol >= {math.sqrt(eps):.2g} "
            "to count directions above a coarser threshold, or use method='dense' / 'gram' for the exact rank"
        )
    else:
        interval = d.count_interval(tau)
        width = interval[1] - interval[0]
        estimable = width <= 0.1 * q
        note = (
            f"95% interval width {width:.1f} of p = {q}"
            + ("" if estimable else f": not estimable with {steps} Lanczos steps x {num_starts} starts at this "
               "threshold (eigenvalues near tau are not resolved); raise steps, or count above a threshold "
               "that lies in a spectral gap")
        )
    return RankResult(rk, q - rk, q, tau, rtol, scale, "density", se, e,
                      interval=interval, estimable=estimable, note=note)


def _with_groups(res: RankResult, sub: dict[str, RankResult]) -> RankResult:
    return replace(res, groups=sub)


class _SubOperator(LinOp):
    """Principal sub-block ``P^T H P`` of an operator on the index set ``idx`` (by zero-padding)."""

    def __init__(self, A: LinOp, idx: Tensor):
        self.A, self.idx = A, idx.to(A.device)
        self.shape = (len(idx), len(idx))
        self.dtype, self.device = A.dtype, A.device

    def _matmat(self, V: Tensor) -> Tensor:
        full = torch.zeros(self.A.shape[0], V.shape[1], dtype=V.dtype, device=V.device)
        full[self.idx] = V
        return self.A.matmat(full)[self.idx]

