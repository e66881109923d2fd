"""Extreme eigenpairs of a symmetric operator by thick-restart block Lanczos.

The block Lanczos recurrence (Golub & Underwood 1977, "The block Lanczos method for computing
eigenvalues", Mathematical Software III) builds an orthonormal basis ``V = [Q_1, ..., Q_j]``
of the block Krylov space ``span{X, AX, ..., A^{j-1} X}`` for a start block ``X`` of ``b``
columns, with

    A Q_j = Q_{j-1} B_{j-1}^T + Q_j A_j + Q_{j+1} B_j,      A_j = Q_j^T A Q_j,

so that ``V^T A V = T`` is block tridiagonal and ``A V = V T + Q_{j+1} B_j E_j^T``. A Ritz
pair ``(theta, y = V u)`` of ``T u = theta u`` has the residual
``||A y - theta y|| = ||B_j E_j^T u||`` (the Ritz estimate), computable without a product.
A block of ``b`` columns resolves eigenvalues of multiplicity up to ``b`` in exact
arithmetic and uses the operator's batched product ``A @ Q_j``.

**Thick restart** (Wu & Simon 2000, "Thick-restart Lanczos method for large symmetric
eigenvalue problems", SIAM J. Matrix Anal. Appl. 22(2):602-616; Stathopoulos & Saad 1998 for
the block form) bounds memory: when the basis reaches ``m`` columns, keep the ``l`` best
Ritz vectors ``Y = V U_l`` and the next block ``Q_{j+1}``; then

    A Y = Y Theta_l + Q_{j+1} S,   S = B_j E_j^T U_l,

so the projected matrix of ``[Y, Q_{j+1}]`` is an arrowhead ``[[Theta_l, S^T], [S, *]]``
and the recurrence continues from ``Q_{j+1}`` (its first step couples to all of ``Y``).

**Reorthogonalisation.** ``"full"``: every new block is orthogonalised against the whole
basis by classical Gram-Schmidt applied twice ("twice is enough", Giraud et al. 2005), and
the projection coefficients fill ``T``. ``"selective"`` (Parlett & Scott 1979, "The Lanczos
algorithm with selective orthogonalization", Math. Comp. 33:217-238): a new block is
orthogonalised only against the previous two blocks, the thick-restart vectors, and the
Ritz vectors that converged to ``sqrt(eps) ||A||`` in the current cycle (those are where
orthogonality is lost, Paige 1971); cheaper per step when ``m`` is large. Two safeguards keep it
from being silently wrong or unboundedly slow: the real residuals are checked once before it
stops, and a run still unconverged after two thick-restart cycles finishes with full
reorthogonalisation from its current Ritz vectors. In float32 (``sqrt(eps) ~ 3e-4``) orthogonality
is lost long before the wanted pairs converge: on the top-20 Hessian eigenpairs of an 85k-parameter
MLP, selective needed 1010 matvecs (block 2) without the cycle limit and 89-112 with it, against
50 for ``"full"`` — use ``"full"`` (the default) unless ``m`` is large and the arithmetic is float64.

**Memory.** The iteration holds the basis ``V`` (``m x p``, one vector per row, so every
projection is one contiguous GEMM) and one work block ``W`` (``b x p``): the product's own
row-major output (curvature operators return ``A V`` as a transposed view of a ``(b, p)``
buffer), projected and then orthonormalised in place into the next block before it is copied
into ``V``; restarts rotate ``V`` in place in column chunks. So an ``m``-column run holds
``m + b`` parameter-sized vectors, plus the converged Ritz vectors in selective mode;
``EigenResult.peak_vectors`` reports this count (the operator's own temporaries inside a product
are not in it). At the end the ``k`` eigenvectors are copied out of the basis (briefly ``m + k``
vectors) and the basis is released before the residual check.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from wdecomp.errors import ArgumentError, DtypeError, NonFiniteError, NotSymmetricError, ShapeError
from wdecomp.linop import LinOp, aslinop
from wdecomp.progress import progress_bar
from wdecomp.spectral._table import table, to_jsonable

__all__ = ["EigenResult", "eigh"]

_WHICH = ("largest", "smallest", "magnitude")
#: Thick-restart cycles selective orthogonalisation gets before the run falls back to full
#: reorthogonalisation (float32 Hessians: without it, 448-1010 matvecs where full needs 50; see eigh).
_SELECTIVE_CYCLES = 2
_DGKS = 2**-0.5  # keep-fraction above which one Gram-Schmidt pass suffices
_ASYMMETRY = ("raise", "warn", "ignore")
#: Operators stored in these dtypes are iterated in float32 (their own round-off, ~1e-3 to 1e-2,
#: would otherwise set the convergence floor at 0.1-0.8 ||A||).
_LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass(frozen=True, eq=False)
class EigenResult:
    """Eigenpairs with their evidence.

    Attributes:
        eigenvalues: ``(k,)``, ordered by ``which`` (largest first, smallest first, or largest
            magnitude first).
        eigenvectors: ``(p, k)``, orthonormal columns.
        residuals: ``(k,)`` ``||A v - lambda v||``: with ``verify=True`` (the default) the actual
            residual from one product per vector after convergence; with ``verify=False`` the
            Ritz estimate ``||B_j E_j^T u||``, equal to it up to round-off under full
            reorthogonalisation (see ``residual_kind``).
        relative_residuals: ``residuals / |lambda|``.
        converged: ``(k,)`` bool: residual ``<= max(tol |lambda|, min(100 eps, tol) ||A||)``
            (``eps`` of the operator's dtype; ``100 eps ||A||`` is a margin over the round-off of
            a product, measured below ``eps ||A||`` for float32 Hessian products of an
            85k-parameter MLP and a 117k-parameter transformer). A pair is never marked
            converged with a residual above ``tol`` times ``|lambda|`` or ``||A||``.
        matvecs: Operator-vector products used, including the residual check.
        restarts: Thick restarts performed.
        which, tol, block_size, basis_size, reorth: The settings used.
        peak_vectors: Most parameter-sized vectors the iteration held at once.
        params: The operator's ParamSet (or ``None``), for :meth:`named`.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    residuals: Tensor
    relative_residuals: Tensor
    converged: Tensor
    matvecs: int
    restarts: int
    which: str
    tol: float
    block_size: int
    basis_size: int
    reorth: str
    peak_vectors: int
    params: Any = None
    residual_kind: str = "product"

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())

    def named(self, i: int) -> dict[str, Tensor]:
        """Eigenvector ``i`` as named parameter tensors (needs an operator with ``params``)."""
        if self.params is None:
            raise ValueError("this operator has no parameter set; use eigenvectors[:, i]")
        return self.params.unflatten(self.eigenvectors[:, i])

    def named_all(self) -> dict[str, Tensor]:
        """All eigenvectors as named tensors of shape ``(k, *param_shape)``."""
        if self.params is None:
            raise ValueError("this operator has no parameter set; use eigenvectors")
        return self.params.unflatten(self.eigenvectors.T)

    def __str__(self) -> str:
        rows = [
            (i, float(lam), float(r), float(rr), bool(c))
            for i, (lam, r, rr, c) in enumerate(
                zip(self.eigenvalues, self.residuals, self.relative_residuals, self.converged)
            )
        ]
        head = (
            f"Lanczos eigenpairs ({self.which}): {int(self.converged.sum())}/{len(rows)} converged, "
            f"{self.matvecs} matvecs, {self.restarts} restarts, block {self.block_size}, "
            f"basis {self.basis_size}, reorth {self.reorth}, tol {self.tol:.1e}, residuals "
            + ("from products" if self.residual_kind == "product" else "are Ritz estimates")
        )
        return table(["#", "eigenvalue", "||Hv-lv||", "rel. residual", "converged"], rows, head)

    def to_dict(self, vectors: bool = False) -> dict[str, Any]:
        """JSON-ready summary (eigenvectors only when ``vectors=True``)."""
        out = {
            "eigenvalues": self.eigenvalues,
            "residuals": self.residuals,
            "relative_residuals": self.relative_residuals,
            "converged": self.converged,
            "matvecs": self.matvecs,
            "restarts": self.restarts,
            "which": self.which,
            "tol": self.tol,
            "block_size": self.block_size,
            "basis_size": self.basis_size,
            "reorth": self.reorth,
            "peak_vectors": self.peak_vectors,
            "residual_kind": self.residual_kind,
        }
        if vectors:
            out["eigenvectors"] = self.eigenvectors.T
        return to_jsonable(out)


def _order(theta: Tensor, which: str) -> Tensor:
    if which == "largest":
        return torch.argsort(theta, descending=True)
    if which == "smallest":
        return torch.argsort(theta)
    return torch.argsort(theta.abs(), descending=True)


def _project_out(
    W: Tensor,
    V: Tensor,
    ranges: list[tuple[int, int]],
    extra: Tensor | None,
    local: tuple[int, int] | None = None,
) -> Tensor:
    """Classical Gram-Schmidt of the rows of ``W`` against ``V[a:b]`` for each range (and ``extra``).

    ``W`` ``(nb, p)`` and ``V`` ``(m, p)`` hold vectors as rows, so every projection is one
    contiguous GEMM. The recurrence's own terms ``V[local]`` (the current and previous blocks,
    where almost all of ``A Q_j`` lies) are removed first, at the cost of ``2b`` vectors; the full
    pass then only meets round-off, and a second full pass is made only when the DGKS test fails
    (Daniel, Gragg, Kaufman & Stewart 1976, "Reorthogonalization and stable algorithms for
    updating the Gram-Schmidt QR factorization", Math. Comp. 30:772-795: a full pass that leaves
    every row more than ``1/sqrt(2)`` of its norm cannot have left a component along ``V``);
    twice is enough (Giraud et al. 2005). On a memory-bound CPU this halves the reads of the basis.

    Returns the coefficients ``C`` ``(total, nb)`` with ``C[a:b] = V[a:b] W^T`` summed over the
    passes; ``W`` is modified in place.
    """
    total = max((b for _, b in ranges), default=0)
    C = torch.zeros(total, W.shape[0], dtype=W.dtype, device=W.device)

    def sweep(spans: list[tuple[int, int]]) -> None:
        for a, b in spans:
            if b > a:
                c = V[a:b] @ W.T
                W.addmm_(c.T, V[a:b], alpha=-1)
                C[a:b] += c

    if local is not None:
        sweep([local])
    for _ in range(2):
        before = W.norm(dim=1)
        sweep(ranges)
        if extra is not None and extra.shape[0]:
            W.addmm_((extra @ W.T).T, extra, alpha=-1)
        if bool((W.norm(dim=1) > _DGKS * before).all()):
            break
    return C


def _next_block(
    W: Tensor, V: Tensor, cols: int, scale: float, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Orthonormalise the rows of ``W`` (already orthogonal to ``V[:cols]``) one by one, in place.

    Returns ``Q`` ``(r, p)`` (the first ``r`` rows of ``W``, no copy) and ``R`` ``(r, nb)`` (float64,
    CPU) with ``W_in^T ~= Q^T R``. A row whose remainder is at round-off level (an invariant
    subspace was found: Lanczos breakdown) gets a zero row in ``R`` and is replaced by a random
    unit vector orthogonal to the basis, so the iteration can go on into the rest of the space; if
    the space is exhausted the block shrinks. Row ``j`` is only ever written to row ``n <= j``, so
    no unread row is overwritten and no ``b x p`` copy is needed.
    """
    nb, p = W.shape
    eps = torch.finfo(W.dtype).eps
    thr = 100 * eps * max(scale, float(W.norm()) if W.numel() else 0.0, 1e-300)
    R = torch.zeros(nb, nb, dtype=torch.float64)
    n = 0
    for j in range(nb):
        w = W[j]
        if n:
            for _ in range(2):
                c = W[:n] @ w
                w.addmv_(W[:n].T, c, alpha=-1)
                R[:n, j] += c.to(device="cpu", dtype=torch.float64)
        nrm = float(w.norm())
        refill = nrm <= thr
        if refill:
            w = torch.randn(p, generator=gen, dtype=W.dtype).to(W.device)
            for _ in range(2):
                if cols:
                    w -= (V[:cols] @ w) @ V[:cols]
                if n:
                    w -= (W[:n] @ w) @ W[:n]
            nrm = float(w.norm())
            if nrm <= 1e-8 or cols + n >= p:  # the whole space is spanned: the block shrinks
                continue
        w.div_(nrm)
        if w.data_ptr() != W[n].data_ptr():
            W[n].copy_(w)
        R[n, j] = 0.0 if refill else nrm
        n += 1
    return W[:n], R[:n]


def _ritz_rows(U: Tensor, idx: Tensor, V: Tensor, cols: int) -> Tensor:
    """The Ritz vectors ``V[:cols]^T U[:, idx]`` of the current basis, as rows ``(len(idx), p)``."""
    return U[:, idx].T.to(dtype=V.dtype, device=V.device) @ V[:cols]


def _rotate_inplace(V: Tensor, cols: int, U: Tensor, chunk_elems: int = 2**22) -> None:
    """``V[:l] = U^T V[:cols]`` for ``U`` ``(cols, l)``, column chunk by column chunk (no l x p copy)."""
    p = V.shape[1]
    width = max(1, chunk_elems // max(cols, 1))
    Ut = U.T.to(dtype=V.dtype, device=V.device).contiguous()
    for c0 in range(0, p, width):
        c1 = min(p, c0 + width)
        V[: Ut.shape[0], c0:c1] = Ut @ V[:cols, c0:c1]


class _BlockLanczos:
    """One thick-restart block Lanczos run: the basis, the projected matrix and the loop state.

    The steps of :func:`eigh` are methods: :meth:`extend` (one block product, projected out of
    the basis and orthonormalised into the next block), :meth:`rayleigh_ritz` (Ritz pairs of the
    projected matrix and their estimates), :meth:`append` (the new block joins the basis),
    :meth:`restart` (thick restart onto the best Ritz vectors) and :meth:`result` (eigenvectors,
    verified residuals, the :class:`EigenResult`). :meth:`run` loops over them; it returns
    ``None`` when the run has finished, or the current Ritz vectors ``Y`` ``(p, k)`` when a
    selective run must go on fully reorthogonalised (see the module docstring).
    """

    def __init__(
        self, A: Any, k: int, which: str, tol: float, max_matvecs: int, b: int, m: int, reorth: str,
        gen: torch.Generator, X: Tensor, progress: bool | None, asymmetry: str = "raise",
    ) -> None:
        self.A, self.k, self.which, self.tol = A, k, which, tol
        self.max_matvecs, self.b, self.m, self.reorth, self.gen = max_matvecs, b, m, reorth, gen
        self.dtype, self.device = _compute_dtype(A.dtype), A.device  # the basis's dtype
        self.eps = torch.finfo(self.dtype).eps
        self.op_eps = torch.finfo(A.dtype).eps  # the products' own precision
        self.asymmetry = asymmetry
        self.asymmetry_seen = 0.0
        self.mv0 = A.matvecs
        p = A.shape[0]
        self.V = torch.empty(m, p, dtype=self.dtype, device=self.device)  # basis vectors as rows: contiguous GEMMs
        self.T = torch.zeros(m, m, dtype=torch.float64)
        Q0, _ = _next_block(X.T.contiguous(), self.V, 0, float(X.norm()), gen)
        b0 = Q0.shape[0]
        self.V[:b0] = Q0
        self.cols, self.cur, self.prev = b0, (0, b0), None
        self.kept = 0  # thick-restart vectors at the front of V
        self.after_restart = True  # first block of a cycle couples to every kept vector
        self.anorm = 0.0
        self.restarts = 0
        self.sel: Tensor | None = None  # selective mode: converged Ritz vectors of this cycle
        self.nsel_good = 0
        self.peak = m + b  # the basis and the block being orthonormalised in place
        self.progress = progress

    @property
    def used(self) -> int:
        """Products this run has made so far."""
        return self.A.matvecs - self.mv0

    def floor_abs(self) -> float:
        """The absolute residual counted as converged for eigenvalues near zero:
        ``min(100 eps, tol) ||A||``, with ``eps`` the products' precision. ``100 eps`` is a margin
        over a product's round-off (the old ``10 sqrt(p) eps ||A||`` capped float32 runs at
        relative residuals ~1e-2 on the 20th eigenvalue of trained models); it never exceeds the
        requested ``tol ||A||`` (in float16 ``100 eps ||A||`` is ``0.1 ||A||``)."""
        return min(100 * self.op_eps, self.tol) * self.anorm

    def product(self, X: Tensor) -> Tensor:
        """``A X`` for columns ``X`` ``(p, n)`` in the basis's dtype (the operator casts to its own)."""
        return self.A.matmat(X).to(self.dtype)

    def check_symmetry(self, Cc: Tensor) -> None:
        """A free symmetry probe: the new coefficients ``Q_prev^T A Q_cur`` must equal the transpose
        of ``Q_cur^T A Q_prev``, the ``R`` factor stored when ``Q_cur`` was formed (exact for a
        symmetric ``A``). A gap above ``max(sqrt(eps), 10 eps sqrt(p)) ||A||`` (eps of the products'
        dtype) cannot be round-off: raise, warn or ignore per ``asymmetry``. The ``sqrt(p)`` term
        keeps large float32 operators (p = 1e7: ``10 eps sqrt(p) = 3.8e-3``) from false alarms while
        the running ``||A||`` estimate is still low.

        The identity needs ``Q_cur`` orthogonal to the whole basis, so selective
        orthogonalisation (semi-orthogonal by design, to ``sqrt(eps)``) is probed only on its
        first step, where orthogonality is still at round-off; full reorthogonalisation on every
        step. Measured on a trained 6.2k-parameter float32 MLP Hessian: gaps below ``3e-6 ||A||``
        against the limit ``3.5e-4 ||A||``."""
        if self.prev is None or self.after_restart or self.asymmetry == "ignore":
            return
        if self.reorth == "selective" and (self.restarts or self.prev[0] != 0):
            return
        (ps, pn), (s, nb) = self.prev, self.cur
        R = self.T[ps : ps + pn, s : s + nb]
        gap = float((Cc[ps : ps + pn] - R).abs().max())
        scale = max(self.anorm, float(R.abs().max()))  # ||A|| >= |q_i^T A q_j|
        # round-off of a product of size p accumulates like eps sqrt(p) ||A|| (float32 at p = 1e7:
        # 4e-4 ||A||, above sqrt(eps)); the running ||A|| is a lower bound early in the run
        limit = max(math.sqrt(self.op_eps), 10 * self.op_eps * math.sqrt(self.V.shape[1])) * scale
        self.asymmetry_seen = max(self.asymmetry_seen, gap / max(scale, 1e-300))
        if gap <= limit:
            return
        msg = (
            f"the operator is not symmetric: u^T A v - v^T A u = {gap:.3g} for Lanczos vectors u, v, "
            f"above sqrt(eps) ||A|| = {limit:.3g}; Lanczos needs a symmetric operator (use (A + A^T) / 2, "
            "or pass asymmetry='warn' or 'ignore' if the asymmetry is expected noise)"
        )
        if self.asymmetry == "raise":
            raise NotSymmetricError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)
        self.asymmetry = "ignore"  # once per run

    def extend(self) -> None:
        """``W = A Q_cur``, projected out of the basis (coefficients into ``T``) and orthonormalised
        in place into the next block ``Qn`` with ``W = Qn^T Rc``."""
        s, nb = self.cur
        W = self.product(self.V[s : s + nb].T).T.contiguous()
        self.bar.update(nb)
        lo = self.prev[0] if self.prev is not None else s
        if self.reorth == "full" or self.after_restart:
            ranges = [(0, self.cols)]
        else:
            ranges = [(0, self.kept), (lo, self.cols)]
        # after a restart the first block couples to every kept vector: no short recurrence
        C = _project_out(W, self.V, ranges, self.sel, local=None if self.after_restart else (lo, self.cols))
        Cc = C.to(device="cpu", dtype=torch.float64)
        self.check_symmetry(Cc)
        self.T[: Cc.shape[0], s : s + nb] = Cc
        self.T[s : s + nb, : Cc.shape[0]] = Cc.T
        self.after_restart = False
        self.anorm = max(self.anorm, float(Cc.abs().max()) if Cc.numel() else 0.0)
        self.Qn, self.Rc = _next_block(W, self.V, self.cols, self.anorm, self.gen)

    def rayleigh_ritz(self) -> bool:
        """Ritz pairs of the projected matrix and their estimates; whether the wanted ones converged."""
        s, nb = self.cur
        cols = self.cols
        Tc = self.T[:cols, :cols]
        self.theta, self.U = torch.linalg.eigh(0.5 * (Tc + Tc.T))
        self.anorm = max(self.anorm, float(self.theta.abs().max()))
        self.order = _order(self.theta, self.which)
        r = self.Qn.shape[0]
        self.est = (self.Rc @ self.U[s : s + nb, :]).norm(dim=0) if r else torch.zeros(cols, dtype=torch.float64)
        self.want = self.order[: min(self.k, cols)]
        self.thr = torch.clamp(self.tol * self.theta[self.want].abs(), min=self.floor_abs())
        return cols >= self.k and bool((self.est[self.want] <= self.thr).all())

    def ritz_vectors(self, idx: Tensor) -> Tensor:
        """The Ritz vectors ``idx`` as columns ``(p, len(idx))``."""
        return _ritz_rows(self.U, idx, self.V, self.cols).T

    def real_residuals_hold(self) -> bool:
        """Selective mode: semi-orthogonality can make Ritz estimates optimistic, so check the real
        residuals of the wanted pairs once (``len(want)`` products)."""
        Y = self.ritz_vectors(self.want)
        lam_w = self.theta[self.want].to(dtype=self.dtype, device=self.device)
        real = (self.product(Y) - Y * lam_w).norm(dim=0).to(device="cpu", dtype=torch.float64)
        return bool((real <= self.thr).all())

    def append(self) -> None:
        """The next block joins the basis; in selective mode, track the converged Ritz vectors."""
        s, nb = self.cur
        r = self.Qn.shape[0]
        cols = self.cols
        self.V[cols : cols + r] = self.Qn
        del self.Qn  # frees the product's buffer before the next product
        self.T[cols : cols + r, s : s + nb] = self.Rc
        self.T[s : s + nb, cols : cols + r] = self.Rc.T
        self.prev, self.cur = self.cur, (cols, r)
        if self.reorth == "selective":
            good = (self.est <= math.sqrt(self.eps) * self.anorm).nonzero().flatten()
            if good.numel() > self.nsel_good:
                self.sel = _ritz_rows(self.U, good, self.V, cols)
                self.nsel_good = good.numel()
                self.peak = max(self.peak, self.m + self.b + self.nsel_good)
        self.cols += r

    def restart(self) -> None:
        """Thick restart: keep the ``l`` best Ritz vectors and the pending block (an arrowhead ``T``)."""
        s, nb = self.cur
        r = self.Qn.shape[0]
        ll = max(self.k, min((self.cols + self.k) // 2, self.m - r - self.b))
        ll = min(ll, self.cols)
        keep = self.order[:ll]
        _rotate_inplace(self.V, self.cols, self.U[:, keep])
        S = self.Rc @ self.U[s : s + nb, keep]
        self.T.zero_()
        self.T[:ll, :ll] = torch.diag(self.theta[keep])
        self.T[ll : ll + r, :ll] = S
        self.T[:ll, ll : ll + r] = S.T
        self.V[ll : ll + r] = self.Qn
        del self.Qn
        self.cols, self.cur, self.prev, self.kept = ll + r, (ll, r), None, ll
        self.after_restart, self.sel, self.nsel_good = True, None, 0
        self.restarts += 1

    def release(self) -> Tensor:
        """Selective mode's way out: the current Ritz vectors ``(p, k)``, with the basis released."""
        Y = self.ritz_vectors(self.want)
        del self.V, self.sel
        self.Qn = None
        return Y

    def run(self) -> Tensor | None:
        """Iterate until the wanted pairs converge or the budget is spent (``None``), or return the
        Ritz vectors for a fully reorthogonalised continuation (selective mode)."""
        self.bar = progress_bar(total=self.max_matvecs, desc="lanczos", enabled=self.progress)
        try:
            while True:
                self.extend()
                done = self.rayleigh_ritz()
                if done and self.reorth == "selective" and not self.real_residuals_hold():
                    return self.release()
                r = self.Qn.shape[0]
                if done or self.used >= self.max_matvecs or (r == 0 and self.cols >= self.k):
                    return None
                if self.cols + r <= self.m:
                    self.append()
                elif self.reorth == "selective" and self.restarts >= _SELECTIVE_CYCLES:
                    # the wanted pairs did not converge within the cycles selective orthogonalisation
                    # was given: orthogonality against earlier blocks was lost (ghost Ritz values fill
                    # the wanted slots), so go on fully reorthogonalised from the current Ritz vectors
                    return self.release()
                else:
                    self.restart()
        finally:
            self.bar.close()

    def result(self, verify: bool) -> EigenResult:
        """The ``k`` wanted pairs, their residuals (from products with ``verify``) and flags."""
        k, b = self.k, self.b
        ksel = self.order[:k]
        lam = self.theta[ksel]
        _rotate_inplace(self.V, self.cols, self.U[:, ksel])
        del self.Qn
        vecs = self.V[:k].T.contiguous()
        del self.V, self.sel
        if verify:
            lam_t = lam.to(dtype=self.dtype, device=self.device)
            res = torch.empty(k, dtype=torch.float64)
            for j in range(0, k, b):  # the block size the run's products used: no larger temporaries
                Xj = vecs[:, j : j + b]
                AX = self.product(Xj)
                res[j : j + b] = (AX - Xj * lam_t[j : j + b]).norm(dim=0).to(device="cpu", dtype=torch.float64)
        else:
            res = self.est[ksel].clone()
        thr = torch.clamp(self.tol * lam.abs(), min=self.floor_abs())
        return EigenResult(
            eigenvalues=lam.to(self.dtype),
            eigenvectors=vecs,
            residuals=res,
            relative_residuals=res / lam.abs().clamp_min(1e-300),
            converged=res <= thr,
            matvecs=self.used,
            restarts=self.restarts,
            which=self.which,
            tol=float(self.tol),
            block_size=b,
            basis_size=self.m,
            reorth=self.reorth,
            peak_vectors=self.peak,
            params=self.A.params,
            residual_kind="product" if verify else "ritz",
        )


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the iteration runs in: float32 for float16/bfloat16 operators, else their own."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def _settings(
    A: LinOp, k: int, which: str, tol: float | None, max_matvecs: int | None, block_size: int | None,
    basis_size: int | None, reorth: str, asymmetry: str,
) -> tuple[int, int, float, int]:
    """Check :func:`eigh`'s settings; return the block size, basis size, tolerance and budget."""
    if which not in _WHICH:
        raise ArgumentError(f"which must be one of {_WHICH}, got {which!r}")
    if reorth not in ("full", "selective"):
        raise ArgumentError(f"reorth must be 'full' or 'selective', got {reorth!r}")
    if asymmetry not in _ASYMMETRY:
        raise ArgumentError(f"asymmetry must be one of {_ASYMMETRY}, got {asymmetry!r}")
    if not A.symmetric:
        raise NotSymmetricError(
            f"{type(A).__name__} declares itself not symmetric; Lanczos (eigh) needs a symmetric operator "
            "(for singular values of a rectangular G use eigh on G^T G or G G^T)"
        )
    p = A.shape[0]
    if not 1 <= k <= p:
        raise ArgumentError(f"k must be in [1, p = {p}], got {k}")
    if block_size is not None and not block_size >= 1:
        raise ArgumentError(f"block_size must be at least 1, got {block_size}")
    b = block_size if block_size is not None else (1 if k == 1 else min(k, 4))
    b = min(int(b), p)
    if basis_size is not None and not basis_size >= 1:
        raise ArgumentError(f"basis_size must be positive, got {basis_size}")
    m = basis_size if basis_size is not None else max(2 * k + 2 * b, k + 8 * b, 40)
    m = min(int(m), p)
    if m < min(p, k + 2 * b):
        raise ArgumentError(f"basis_size must be at least k + 2 * block_size = {k + 2 * b}")
    if tol is None:
        tol = 1e-10 if A.dtype == torch.float64 else 1e-4
        if A.dtype in _LOW_PRECISION:
            tol = 4 * torch.finfo(A.dtype).eps
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
        raise ArgumentError(f"tol must be a positive finite number (a relative residual), got {tol!r}")
    if max_matvecs is None:
        max_matvecs = max(100 * m, 2000)
    if not max_matvecs >= 1:
        raise ArgumentError(f"max_matvecs must be at least 1, got {max_matvecs}")
    return b, m, float(tol), int(max_matvecs)


def _start_block(v0: Any, p: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``v0`` as a ``(p, n)`` start block, checked: length ``p``, real, finite."""
    v = torch.as_tensor(v0)
    if v.dim() not in (1, 2) or v.shape[0] != p or v.numel() == 0:
        raise ShapeError(f"v0 must have shape ({p},) or ({p}, n), got {tuple(v.shape)}")
    if v.is_complex():
        raise DtypeError(f"v0 is complex ({v.dtype}); the operator is real: give a real start block")
    if not bool(torch.isfinite(v).all()):
        raise NonFiniteError("v0 holds NaN or inf; give a finite start block")
    return v.reshape(p, -1).to(dtype=dtype, device=device).clone()


def eigh(
    op: Any,
    k: int = 6,
    which: str = "largest",
    *,
    tol: float | None = None,
    max_matvecs: int | None = None,
    block_size: int | None = None,
    basis_size: int | None = None,
    reorth: str = "full",
    seed: int = 0,
    v0: Tensor | None = None,
    verify: bool = True,
    progress: bool | None = None,
    asymmetry: str = "raise",
) -> EigenResult:
    """The ``k`` extreme eigenpairs of a symmetric operator by thick-restart block Lanczos.

    Args:
        op: A curvature operator, a symmetric tensor ``(p, p)``, a scipy ``LinearOperator``,
            or anything with ``.shape`` and ``@`` (see :func:`wdecomp.linop.aslinop`).
        k: Number of eigenpairs.
        which: ``"largest"`` (algebraic), ``"smallest"`` (algebraic) or ``"magnitude"``.
        tol: Relative residual target ``||A v - lambda v|| <= tol |lambda|`` (with a
            round-off floor for eigenvalues near zero); default ``1e-10`` in float64,
            ``1e-4`` in float32.
        max_matvecs: Budget of operator-vector products (default ``max(100 m, 2000)``).
        block_size: Columns per Lanczos block ``b``; ``None`` picks ``1`` for ``k = 1``,
            else ``min(k, 4)``. Use at least the largest multiplicity you expect.
        basis_size: Basis columns ``m`` before a thick restart (default
            ``max(2k + 2b, k + 8b, 40)``, at most ``p``).
        reorth: ``"full"`` or ``"selective"`` (see the module docstring).
        seed: Seed of the random start block.
        v0: Start block ``(p,)`` or ``(p, n)`` instead of a random one. With ``n`` above the
            block size ``b`` (for instance the ``k`` eigenvectors of a previous checkpoint: a warm
            start) the start block is a seeded random mix ``v0 @ G``, ``G`` ``(n, b)`` Gaussian,
            of that subspace.
        verify: Recompute every returned pair's residual ``||A v - lambda v||`` from a product
            (``k`` more matvecs, in blocks of ``b`` columns). ``False`` reports the Ritz
            estimates instead, which full reorthogonalisation keeps equal to the true residuals
            up to round-off (about ``eps ||A||``), and saves those products.
        progress: tqdm bar over matvecs (default: only on a TTY).
        asymmetry: What to do when the free symmetry probe (see :class:`_BlockLanczos`) finds
            ``|u^T A v - v^T A u| > sqrt(eps) ||A||``: ``"raise"`` (default,
            :class:`~wdecomp.errors.NotSymmetricError`), ``"warn"`` or ``"ignore"``.

    Low precision: a float16 or bfloat16 operator is iterated in float32 (its products stay in
    its own dtype); eigenvalues and eigenvectors come back in float32, and the default ``tol`` is
    ``4 eps`` of the operator's dtype (about 4e-3 for float16, 3e-2 for bfloat16): its products
    cannot resolve much less.

    Raises:
        ArgumentError: ``k``, ``which``, ``tol``, ``block_size``, ``basis_size``,
            ``max_matvecs``, ``reorth`` or ``asymmetry`` out of range.
        ShapeError, DtypeError, NonFiniteError: ``v0`` of the wrong length, complex, or not finite.
        NotSymmetricError: the operator declares ``symmetric = False`` or is measurably not.
        NonFiniteError: a product is NaN or inf.

    Returns:
        An :class:`EigenResult` with eigenvalues, eigenvectors ``(p, k)``, actual residuals,
        converged flags and the matvec count.

    Example:
        >>> A = torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64))
        >>> r = eigh(A, k=3)
        >>> r.eigenvalues.round().tolist() == [100.0, 99.0, 98.0]
        True
    """
    A = aslinop(op)
    mv0 = A.matvecs
    b, m, tol, max_matvecs = _settings(A, k, which, tol, max_matvecs, block_size, basis_size, reorth, asymmetry)
    dtype, device = _compute_dtype(A.dtype), A.device
    gen = torch.Generator().manual_seed(seed)
    if v0 is not None:
        X = _start_block(v0, A.shape[0], dtype, device)
        if X.shape[1] > b:  # a start subspace wider than a block (a previous run's eigenvectors): mix it
            X = X @ torch.randn(X.shape[1], b, generator=gen, dtype=dtype).to(device)
    else:
        X = torch.randn(A.shape[0], b, generator=gen, dtype=dtype).to(device)
    run = _BlockLanczos(A, k, which, tol, max_matvecs, b, m, reorth, gen, X, progress, asymmetry)
    del X
    Y = run.run()
    if Y is None:
        return run.result(verify)
    # selective mode's fallback: a fully reorthogonalised run from a random mix of the Ritz vectors,
    # perturbed by 1e-3 of a random block: from an almost invariant start the basis lost
    # orthogonality (to 1e-10 in float64) and Ritz estimates understated the true residuals up to
    # 250x; the perturbation costs 10-40% more products in a fallback (tests/spectral, p = 400)
    start = Y @ torch.randn(Y.shape[1], b, generator=gen, dtype=dtype).to(device)
    noise = torch.randn(start.shape, generator=gen, dtype=dtype).to(device)
    start += noise * (1e-3 * start.norm(dim=0) / noise.norm(dim=0))
    del Y
    gen = torch.Generator().manual_seed(seed + 1)
    full = _BlockLanczos(A, k, which, tol, max(max_matvecs - (A.matvecs - mv0), 2 * k), b, m, "full", gen,
                         start, progress, run.asymmetry)
    del start
    full.run()
    rest = full.result(verify)
    return replace(
        rest, matvecs=A.matvecs - mv0, restarts=run.restarts + rest.restarts + 1, reorth="selective",
        peak_vectors=max(run.peak, m + b + run.nsel_good + 2 * k),
    )
