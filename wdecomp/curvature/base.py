"""The one base class every curvature operator inherits: batches, self-checks, capabilities.

:class:`CurvatureOperator` is a :class:`wdecomp.linop.LinOp` (input and output checks, the product
counter ``matvecs``, ``@``, the memory-guarded ``dense()`` and ``to_scipy()`` come from there). It
supplies the linop's ``_matmat`` as a sum over the objective's batches, with tangent columns
chunked and pushed through ``vmap``; a subclass supplies only its per-batch block product
``_batch_matmat``. It adds ``restrict``/``resample`` and a finite-difference self-check.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.func import grad, vmap

from wdecomp.distributed import DistributedError
from wdecomp.linop import DEFAULT_DENSE_BYTES, LinOp
from wdecomp.objective import Batch, Objective
from wdecomp.params import ParamSet, ParamSpec, select_parameters
from wdecomp.progress import progress_bar

__all__ = ["DEFAULT_DENSE_BYTES", "CheckResult", "CurvatureOperator", "FactoredOperator", "map_columns", "map_rows"]


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
    if next(iter(V.values())).shape[0] == 1:
        out = fn({n: t[0] for n, t in V.items()})
        return {n: t.unsqueeze(0) for n, t in out.items()}
    return vmap(fn)(V)


def map_rows(fn: Any, rows: Tensor) -> Tensor:
    """Apply a flat per-vector product ``fn: (p,) -> (q,)`` to the ``k`` rows of ``rows`` ``(k, p)``:
    ``vmap`` for a block, a plain call for one vector."""
    if rows.shape[0] == 1:
        return fn(rows[0]).unsqueeze(0)
    return vmap(fn)(rows)


class CurvatureOperator(LinOp):
    """A symmetric ``p x p`` (or, for per-sample gradients, ``n x p``) matrix known by its products.

    Args:
        objective: What is differentiated.
        params: Which weights (see :func:`wdecomp.params.select_parameters`).
        chunk_size: Largest number of tangent columns pushed through one ``vmap`` call; bounds
            memory at about ``chunk_size`` times that of one product. ``None``: 16.
        progress: Show a progress bar over batches for long products (``None``: on a TTY).

    Products: ``A @ v`` with ``v`` of shape ``(p,)`` returns ``(p,)``; ``A @ V`` with ``V`` of
    shape ``(p, k)`` returns ``(p, k)``, computed as ``sum_b A_b V`` with the ``k`` columns
    batched by ``torch.func.vmap``. numpy inputs give numpy outputs. ``matvecs`` counts the
    products (``matvec_count`` is its deprecated alias).
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
        self.matvecs = 0

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
        new.matvecs = 0
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

    def _batch_product(self, index: int, batch: Batch, rows: Tensor) -> Tensor:
        """The product hook :meth:`_matmat` calls for batch number ``index`` (its position in the
        objective's batch order) and flat tangents ``rows`` ``(k, p)``; ``_batch_matmat`` at the
        current weights on the named tangents unless a subclass keeps per-batch state."""
        return self._batch_matmat(self.params.as_dict(), batch, self._split_rows(rows))

    def _in_dim(self) -> int:
        return self.shape[1]

    def _layout(self) -> tuple[tuple[str, int, int, tuple[int, ...]], ...]:
        """``(name, start, stop, shape)`` of each parameter in the flat vector (computed once per
        parameter set: a product splits and joins vectors along it)."""
        cached = self.__dict__.get("_layout_cache")
        if cached is None or cached[0] is not self.params:
            rows, start = [], 0
            for name, shape in zip(self.params.names, self.params.shapes):
                stop = start + math.prod(shape)
                rows.append((name, start, stop, tuple(shape)))
                start = stop
            cached = (self.params, tuple(rows))
            self._layout_cache = cached
        return cached[1]

    def _split_rows(self, rows: Tensor) -> dict[str, Tensor]:
        """Named views ``(k, *shape)`` of a row-major ``(k, p)`` block of tangents."""
        k = rows.shape[0]
        return {name: rows[:, start:stop].view(k, *shape) for name, start, stop, shape in self._layout()}

    def _views(self, flat: Tensor) -> dict[str, Tensor]:
        """Named views of one flat vector ``(p,)``, by one ``split`` (so a gradient with respect to
        ``flat`` through them is one concatenation, not one full-length buffer per parameter)."""
        layout = self._layout()
        parts = flat.split([stop - start for _, start, stop, _ in layout])
        return {name: part.view(shape) for (name, _, _, shape), part in zip(layout, parts)}

    def _join_rows(self, named: dict[str, Tensor]) -> Tensor:
        """The flat ``(k, p)`` block of named per-parameter products ``(k, *shape)``."""
        parts = [named[name] for name, _, _, _ in self._layout()]
        k = parts[0].shape[0]
        return torch.cat([t.reshape(k, -1) for t in parts], dim=1)

    def _product_batches(self) -> Iterator[Batch]:
        """The batches one product sums over (the objective's pass; subclasses may vouch for some)."""
        return self.objective.batches()

    def _matmat(self, V: Tensor) -> Tensor:
        """``A V`` as the transpose of a row-major ``(k, p)`` buffer: each product is one contiguous
        row (how the per-batch products come out), and a solver that keeps vectors as rows (Lanczos)
        reads ``out.T`` without a copy. One batch and one chunk: the product is returned as it
        came, with no buffer and no addition."""
        k = V.shape[1]
        chunks = [(i, min(i + self.chunk_size, k)) for i in range(0, k, self.chunk_size)]
        steps = len(chunks) * self.num_batches
        bar = progress_bar(total=steps, desc=f"{self.kind} products", enabled=self.progress) if steps > 1 else None
        rows = V.T  # (k, p); contiguous when V is a column or a transposed row-major block
        out: Tensor | None = None
        for index, batch in enumerate(self._product_batches()):
            parts = []
            for start, stop in chunks:
                parts.append(self._batch_product(index, batch, rows[start:stop].contiguous()))
                if bar is not None:
                    bar.update(1)
            part = parts[0] if len(parts) == 1 else torch.cat(parts)
            # the first product is kept as it came; the second makes a buffer of our own to add into
            out = part.to(self.dtype) if out is None else (out + part if index == 1 else out.add_(part))
        if bar is not None:
            bar.close()
        assert out is not None  # the data hold at least one batch (counted before the first product)
        return self.objective.reduce(out).T

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
        g = torch.zeros(self.params.numel, dtype=self.dtype, device=self.device)
        for batch in self.objective.batches():
            g = g + self.params.flatten(grad(self.objective.batch_objective(batch, self.params))(params))
        return self.objective.reduce(g)


class FactoredOperator(CurvatureOperator):
    """An operator of the form ``A = sum_j F_j^T F_j`` whose factor rows can be streamed.

    Used for exact ranks through the small Gram matrix ``F F^T`` (GGN and Fisher).
    """

    has_factors = True

    def factor_chunks(self, chunk_size: int = 64) -> Iterator[Tensor]:
        """Yield dense blocks ``F_j`` of shape ``(m_j, p)`` with ``A = sum_j F_j^T F_j``."""
        raise NotImplementedError

    def _refuse_if_distributed(self) -> None:
        """Factor rows are this rank's examples only: refuse rather than give a local Gram."""
        if self.objective.distributed:
            raise DistributedError(
                f"{self.kind} factor rows live on their own rank, so a Gram matrix of them would be "
                "this rank's only; with a distributed objective use rank(method='dense') (built from "
                "reduced products) or method='density'"
            )
