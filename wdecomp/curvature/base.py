"""The one base class every curvature operator inherits: shapes, products, exports, checks.

A subclass supplies only its per-batch block product ``_batch_matmat``; this class adds
input checks, chunking over tangent columns (``vmap`` inside each chunk), accumulation over
batches, the ``@`` operator, a scipy ``LinearOperator``, a memory-guarded dense matrix, and
a finite-difference self-check.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wdecomp.errors import DenseTooLargeError, NonFiniteError, ShapeError
from wdecomp.objective import Batch, Objective
from wdecomp.params import ParamSet, ParamSpec, select_parameters
from wdecomp.progress import progress_bar

#: Default ceiling for ``dense()``: 2 GiB.
DEFAULT_DENSE_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class CheckResult:
    """Outcome of :meth:`CurvatureOperator.check`.

    Attributes:
        relative_errors: ``||A v - ref(v)|| / ||ref(v)||`` for each random probe ``v``.
        symmetry_error: ``|u^T A v - v^T A u| / (||A|| ||u|| ||v||)`` estimate on one pair.
        eps: The finite-difference step used.
        passed: Whether every error is below ``tol``.
        tol: The tolerance ``passed`` was judged by.
    """

    relative_errors: tuple[float, ...]
    symmetry_error: float
    eps: float
    tol: float
    passed: bool

    def __str__(self) -> str:
        errs = ", ".join(f"{e:.2e}" for e in self.relative_errors)
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"{verdict}: finite-difference relative errors [{errs}] (eps={self.eps:.1e}, "
            f"tol={self.tol:.1e}); symmetry error {self.symmetry_error:.2e}"
        )


def map_columns(fn: Any, V: dict[str, Tensor]) -> dict[str, Tensor]:
    """Apply a per-vector product ``fn`` to ``k`` named tangents ``(k, *shape)``: ``vmap`` for a block,
    a plain call for one vector (``vmap`` costs a few percent on a single column)."""
    from torch.func import vmap

    if next(iter(V.values())).shape[0] == 1:
        out = fn({n: t[0] for n, t in V.items()})
        return {n: t.unsqueeze(0) for n, t in out.items()}
    return vmap(fn)(V)


class CurvatureOperator:
    """A symmetric ``p x p`` (or, for per-sample gradients, ``n x p``) matrix known by its products.

    Args:
        objective: What is differentiated.
        params: Which weights (see :func:`wdecomp.params.select_parameters`).
        chunk_size: Largest number of tangent columns pushed through one ``vmap`` call; bounds
            memory at about ``chunk_size`` times that of one product. ``None``: 16.
        progress: Show a progress bar over batches for long products (``None``: on a TTY).

    Products: ``A @ v`` with ``v`` of shape ``(p,)`` returns ``(p,)``; ``A @ V`` with ``V`` of
    shape ``(p, k)`` returns ``(p, k)``, computed as ``sum_b A_b V`` with the ``k`` columns
    batched by ``torch.func.vmap``. numpy inputs give numpy outputs.
    """

    kind: str = "operator"
    symmetric: bool = True

    def __init__(
        self,
        objective: Objective,
        params: ParamSpec | ParamSet = None,
        *,
        chunk_size: int | None = None,
        progress: bool | None = None,
    ) -> None:
        self.objective = objective
        self.params = select_parameters(objective.model, params)
        self.chunk_size = chunk_size or 16
        self.progress = progress
        self.matvec_count = 0

    # ---------------------------------------------------------------- description
    @property
    def shape(self) -> tuple[int, int]:
        p = self.params.numel
        return (p, p)

    @property
    def dtype(self) -> torch.dtype:
        return self.params.dtype

    @property
    def device(self) -> torch.device:
        return self.params.device

    @property
    def num_batches(self) -> int:
        return self.objective.num_batches

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kind={self.kind!r}, shape={self.shape}, dtype={self.dtype}, "
            f"params={len(self.params)} tensors, batches={self.num_batches})"
        )

    def _rebuild(self, objective: Objective, params: ParamSet) -> CurvatureOperator:
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.objective = objective
        new.params = params
        new.matvec_count = 0
        return new

    def restrict(self, names: Sequence[str] | str) -> CurvatureOperator:
        """The same kind of operator over a subset of the parameters (a diagonal block)."""
        names = [names] if isinstance(names, str) else list(names)
        return self._rebuild(self.objective, self.params.subset(names))

    def resample(self, batch_indices: Sequence[int]) -> CurvatureOperator:
        """The same operator on a multiset of the data's batches (for bootstrap error bars)."""
        return self._rebuild(self.objective.subset(batch_indices), self.params)

    # ---------------------------------------------------------------- products
    def _batch_matmat(self, theta: dict[str, Tensor], batch: Batch, V: dict[str, Tensor]) -> Tensor:
        """This batch's contribution ``A_b V`` for named tangents ``V`` of shape ``(k, *shape)``.

        Returns a flat ``(k, p)`` tensor. Subclasses implement this.
        """
        raise NotImplementedError

    def _batch_product(self, index: int, theta: dict[str, Tensor], batch: Batch, V: dict[str, Tensor]) -> Tensor:
        """The product hook :meth:`_matmat` calls for batch number ``index`` (its position in the
        objective's batch order); ``_batch_matmat`` unless a subclass keeps per-batch state."""
        return self._batch_matmat(theta, batch, V)

    def _in_dim(self) -> int:
        return self.shape[1]

    def _check_input(self, x: Any) -> tuple[Tensor, bool, bool]:
        as_numpy = isinstance(x, np.ndarray)
        t = torch.as_tensor(x) if as_numpy else x
        if not isinstance(t, Tensor):
            raise TypeError(f"expected a tensor or numpy array, got {type(x).__name__}")
        vector = t.dim() == 1
        if t.dim() not in (1, 2) or t.shape[0] != self._in_dim():
            raise ShapeError(
                f"{type(self).__name__} of shape {self.shape} cannot multiply an input of shape "
                f"{tuple(t.shape)}: expected ({self._in_dim()},) or ({self._in_dim()}, k)"
            )
        t = t.to(device=self.device, dtype=self.dtype)
        return (t.unsqueeze(1) if vector else t), vector, as_numpy

    def matmat(self, V: Tensor) -> Tensor:
        """``A V`` for a block ``V`` of shape ``(p, k)``; columns batched with ``vmap``, chunked."""
        V, _, _ = self._check_input(V)
        return self._matmat(V)

    def _matmat(self, V: Tensor) -> Tensor:
        """``A V`` as the transpose of a row-major ``(k, p)`` buffer: each product is one contiguous
        row (how the per-batch products come out), and a solver that keeps vectors as rows (Lanczos)
        reads ``out.T`` without a copy."""
        k = V.shape[1]
        theta = self.params.as_dict()
        out = torch.zeros(k, self.shape[0], dtype=self.dtype, device=self.device)
        chunks = [(i, min(i + self.chunk_size, k)) for i in range(0, k, self.chunk_size)]
        bar = progress_bar(
            total=len(chunks) * self.num_batches, desc=f"{self.kind} products", enabled=self.progress
        )
        for index, batch in enumerate(self.objective.batches()):
            for start, stop in chunks:
                tangents = self.params.unflatten(V[:, start:stop].T.contiguous())
                out[start:stop] += self._batch_product(index, theta, batch, tangents)
                bar.update(1)
        bar.close()
        out = self.objective.reduce(out)
        if not torch.isfinite(out).all():
            raise NonFiniteError(
                f"{self.kind} product is not finite: check the loss and the weights for NaN/inf"
            )
        self.matvec_count += k
        return out.T

    def __matmul__(self, x: Any) -> Any:
        t, vector, as_numpy = self._check_input(x)
        out = self._matmat(t)
        out = out[:, 0] if vector else out
        return out.cpu().numpy() if as_numpy else out

    def matvec(self, v: Tensor) -> Tensor:
        """``A v`` for one flat vector ``v`` of shape ``(p,)``."""
        return self @ v

    def to_scipy(self) -> Any:
        """A ``scipy.sparse.linalg.LinearOperator`` (float64 numpy in and out) with the same products."""
        from scipy.sparse.linalg import LinearOperator

        def mv(x: np.ndarray) -> np.ndarray:
            y = self @ torch.as_tensor(np.ascontiguousarray(x))
            return y.detach().cpu().numpy()

        rmv = mv if self.symmetric else self._rmatvec_numpy
        return LinearOperator(
            self.shape,
            matvec=mv,
            rmatvec=rmv,
            matmat=mv,
            rmatmat=rmv,
            dtype=np.dtype(str(self.dtype).replace("torch.", "")),
        )

    def _rmatvec_numpy(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def dense(self, max_bytes: int | None = None) -> Tensor:
        """The full matrix, by products with identity blocks.

        Raises:
            DenseTooLargeError: if ``rows * cols * itemsize`` exceeds ``max_bytes``
                (default 2 GiB).
        """
        limit = DEFAULT_DENSE_BYTES if max_bytes is None else max_bytes
        rows, cols = self.shape
        need = rows * cols * torch.empty((), dtype=self.dtype).element_size()
        if need > limit:
            raise DenseTooLargeError(
                f"dense {self.kind} of shape {self.shape} needs {need / 2**30:.2f} GiB, above the "
                f"limit of {limit / 2**30:.2f} GiB; use products, or restrict the parameters, or "
                "raise max_bytes"
            )
        block = max(1, min(cols, 4 * self.chunk_size))
        out = torch.empty(rows, cols, dtype=self.dtype, device=self.device)
        eye = torch.eye(cols, dtype=self.dtype, device=self.device)
        for start in range(0, cols, block):
            out[:, start : start + block] = self._matmat(eye[:, start : start + block])
        return out

    # ---------------------------------------------------------------- self-check
    def _finite_difference(self, v: Tensor, eps: float) -> Tensor:
        """An independent estimate of ``A v`` by central differences (subclasses)."""
        raise NotImplementedError

    def check(self, probes: int = 3, eps: float | None = None, tol: float | None = None, seed: int = 0) -> CheckResult:
        """Compare products with finite differences on random unit probes.

        Second-order autodiff through some PyTorch ops is silently wrong; this tells whether it
        is on *your* model. The finite-difference error is ``O(eps^2)`` plus rounding
        ``O(u / eps)``; the default ``eps = u^(1/3)`` balances the two (about 6e-6 in float64,
        5e-3 in float32), and the default tolerance is ``1e-5`` (float64) or ``5e-2`` (float32).

        Returns:
            A :class:`CheckResult` with the measured errors.
        """
        u = torch.finfo(self.dtype).eps
        eps = eps if eps is not None else u ** (1 / 3)
        tol = tol if tol is not None else (1e-5 if self.dtype == torch.float64 else 5e-2)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        errors = []
        for _ in range(probes):
            v = torch.randn(self._in_dim(), generator=gen, dtype=torch.float64).to(self.device, self.dtype)
            v = v / v.norm()
            exact = self @ v
            ref = self._finite_difference(v, eps)
            errors.append(float((exact - ref).norm() / ref.norm().clamp_min(torch.finfo(self.dtype).tiny)))
        sym = float("nan")
        if self.symmetric:
            a = torch.randn(self._in_dim(), generator=gen, dtype=torch.float64).to(self.device, self.dtype)
            b = torch.randn(self._in_dim(), generator=gen, dtype=torch.float64).to(self.device, self.dtype)
            a, b = a / a.norm(), b / b.norm()
            Ab, Aa = self @ b, self @ a
            scale = max(float(Ab.norm()), float(Aa.norm()), torch.finfo(self.dtype).tiny)
            sym = abs(float(a @ Ab - b @ Aa)) / scale
        passed = all(e <= tol for e in errors) and (math.isnan(sym) or sym <= tol)
        return CheckResult(tuple(errors), sym, eps, tol, passed)

    # ---------------------------------------------------------------- helpers
    def _shifted_state(self, v: Tensor, eps: float) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        theta = self.params.as_dict()
        dv = self.params.unflatten(v)
        plus = {n: theta[n] + eps * dv[n] for n in theta}
        minus = {n: theta[n] - eps * dv[n] for n in theta}
        return plus, minus

    def _gradient_at(self, params: dict[str, Tensor]) -> Tensor:
        from torch.func import grad

        g = torch.zeros(self.params.numel, dtype=self.dtype, device=self.device)
        for batch in self.objective.batches():
            g = g + self.params.flatten(grad(self.objective.batch_objective(batch, self.params))(params))
        return self.objective.reduce(g)


class FactoredOperator(CurvatureOperator):
    """An operator of the form ``A = sum_j F_j^T F_j`` whose factor rows can be streamed.

    Used for exact ranks through the small Gram matrix ``F F^T`` (GGN and Fisher).
    """

    def factor_chunks(self, chunk_size: int = 64) -> Iterator[Tensor]:
        """Yield dense blocks ``F_j`` of shape ``(m_j, p)`` with ``A = sum_j F_j^T F_j``."""
        raise NotImplementedError

    def _refuse_if_distributed(self) -> None:
        """Factor rows are this rank's examples only: refuse rather than give a local Gram."""
        if self.objective.distributed:
            from wdecomp.distributed import DistributedError

            raise DistributedError(
                f"{self.kind} factor rows live on their own rank, so a Gram matrix of them would be "
                "this rank's only; with a distributed objective use rank(method='dense') (built from "
                "reduced products) or method='density'"
            )
