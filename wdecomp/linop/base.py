"""The one linear-operator base class: shapes, checked and counted products, one dense path.

Every matrix that wdecomp knows only by its products (curvature operators, adapted tensors,
scipy operators, callables) is a :class:`LinOp`. A subclass supplies ``shape``, ``dtype``,
``device`` and its block product ``_matmat(V)`` for ``V`` of shape ``(cols, k)``; this class adds,
once for all of them:

* input checks (shape, complex refused, dtype/device moved to the operator's),
* output checks (shape, finiteness: a NaN/inf product raises :class:`~wdecomp.errors.NonFiniteError`),
* the one product counter :attr:`LinOp.matvecs` (a block of ``k`` columns counts ``k``),
* ``@`` for vectors ``(cols,)``, blocks ``(cols, k)`` and numpy arrays (numpy in, numpy out),
* :meth:`LinOp.dense` with a memory guard on its real peak, and :meth:`LinOp.to_scipy`.

Optional capabilities (``restrict``, ``resample``, ``num_batches``, ``factor_chunks``) raise
:class:`OperatorCapabilityError` unless a subclass (a curvature operator) provides them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wdecomp.errors import DenseTooLargeError, DtypeError, NonFiniteError, ShapeError, WdecompError

__all__ = ["DEFAULT_DENSE_BYTES", "LinOp", "OperatorCapabilityError", "dense_block_size"]

#: Default ceiling for :meth:`LinOp.dense`: 2 GiB, counting everything the dense path allocates.
DEFAULT_DENSE_BYTES = 2 * 1024**3

#: Identity columns per product in :meth:`LinOp.dense` (fewer when the memory limit is near).
_DENSE_BLOCK = 64


class OperatorCapabilityError(WdecompError, TypeError):
    """The operator lacks a capability a routine needs (``restrict``, ``resample``, ...)."""


def dense_block_size(rows: int, cols: int, itemsize: int, max_bytes: int, what: str) -> int:
    """Columns per block for a dense ``rows x cols`` matrix built under ``max_bytes``.

    The dense path holds the output (``rows * cols``), one identity block (``cols * b``) and its
    product (``rows * b``); the in-place symmetrisation reuses the same ``(rows + cols) * b``
    budget for one strip. So the peak is ``(rows * cols + (rows + cols) * b) * itemsize``, and
    ``b`` is the largest block (at most 64) that keeps it at or below ``max_bytes``.

    Raises:
        DenseTooLargeError: not even ``b = 1`` fits.
    """
    budget = max_bytes // itemsize - rows * cols
    b = min(_DENSE_BLOCK, cols, budget // max(rows + cols, 1))
    if b < 1:
        need = (rows * cols + rows + cols) * itemsize
        raise DenseTooLargeError(
            f"a dense {what} of shape ({rows}, {cols}) needs at least {need / 2**20:.1f} MiB, above "
            f"max_bytes = {max_bytes / 2**20:.1f} MiB; use products or an estimated method, restrict "
            "the parameters, or raise max_bytes"
        )
    return int(b)


class LinOp:
    """A ``rows x cols`` matrix known by its products (square and symmetric for spectral use).

    Subclasses set or compute ``shape``, ``dtype`` and ``device`` and implement ``_matmat``.

    Attributes:
        matvecs: Operator-vector products performed so far; a block of ``k`` columns counts
            ``k``, and so does every column of :meth:`dense`. Spectral results report their
            own share of this counter.
        symmetric: Whether the operator is symmetric (``A^T = A``); symmetric methods refuse
            an operator that declares ``False``.
        kind: A short name (``"hessian"``, ``"ggn"``, ``"matrix"``, ...).
        params: The :class:`~wdecomp.params.ParamSet` the operator acts on, or ``None``.
        has_factors: Whether :meth:`factor_chunks` is available (``A = sum_j F_j^T F_j``).
    """

    symmetric: bool = True
    kind: str = "matrix"
    params: Any = None
    has_factors: bool = False
    matvecs: int = 0
    shape: tuple[int, int]
    dtype: torch.dtype
    device: torch.device

    # ---------------------------------------------------------------- the subclass's product
    def _matmat(self, V: Tensor) -> Tensor:
        """``A V`` for ``V`` of shape ``(cols, k)`` on the operator's dtype and device."""
        raise NotImplementedError

    # ---------------------------------------------------------------- checked, counted products
    def matmat(self, V: Tensor) -> Tensor:
        """``A V`` for a block ``V`` of shape ``(cols, k)``; counts ``k`` products.

        Raises:
            ShapeError: ``V`` is not ``(cols, k)``, or the product came back with another shape.
            DtypeError: ``V`` is complex (the operator is real; the imaginary part would be lost).
            NonFiniteError: the product holds NaN or inf.
        """
        rows, cols = self.shape
        if not isinstance(V, Tensor):
            raise TypeError(f"expected a torch tensor, got {type(V).__name__} (use the @ operator for numpy)")
        if V.dim() != 2 or V.shape[0] != cols:
            raise ShapeError(
                f"{self._name()} of shape {self.shape} cannot multiply an input of shape {tuple(V.shape)}: "
                f"expected ({cols},) or ({cols}, k)"
            )
        if V.is_complex():
            raise DtypeError(
                f"{self._name()} is real ({self.dtype}) and would drop the imaginary part of a {V.dtype} "
                "input; multiply the real and imaginary parts separately"
            )
        V = V.to(device=self.device, dtype=self.dtype)
        out = self._matmat(V)
        if tuple(out.shape) != (rows, V.shape[1]):
            raise ShapeError(
                f"{self._name()} returned shape {tuple(out.shape)} for an input of shape {tuple(V.shape)}; "
                f"expected ({rows}, {V.shape[1]})"
            )
        # one reduction: a NaN or inf entry makes the sum non-finite, so a finite sum clears the
        # product; only a non-finite sum (or an overflowing one) pays for the entrywise check
        if not math.isfinite(float(out.sum())) and not bool(torch.isfinite(out).all()):
            raise NonFiniteError(
                f"{self._name()} product is not finite (NaN or inf): check what defines the operator "
                "(the loss and the weights, or the matrix entries) for NaN/inf"
            )
        self.matvecs += V.shape[1]
        return out

    def matvec(self, v: Tensor) -> Tensor:
        """``A v`` for one vector ``v`` of shape ``(cols,)``."""
        return self @ v

    def __matmul__(self, x: Any) -> Any:
        """``A @ x`` for ``x`` of shape ``(cols,)`` or ``(cols, k)``; numpy in, numpy out."""
        as_numpy = isinstance(x, np.ndarray)
        t = torch.from_numpy(np.ascontiguousarray(x)) if as_numpy else x
        if not isinstance(t, Tensor):
            raise TypeError(f"expected a tensor or numpy array, got {type(x).__name__}")
        if t.dim() not in (1, 2):
            raise ShapeError(
                f"{self._name()} of shape {self.shape} cannot multiply an input of shape {tuple(t.shape)}: "
                f"expected ({self.shape[1]},) or ({self.shape[1]}, k)"
            )
        out = self.matmat(t[:, None] if t.dim() == 1 else t)
        out = out[:, 0] if t.dim() == 1 else out
        return out.detach().cpu().numpy() if as_numpy else out

    def rmatmat(self, U: Tensor) -> Tensor:
        """``A^T U``: the product itself for a symmetric operator."""
        if self.symmetric:
            return self.matmat(U)
        raise OperatorCapabilityError(f"{self._name()} has no transpose product")

    # ---------------------------------------------------------------- the one dense path
    def dense(self, max_bytes: int | None = None) -> Tensor:
        """The full matrix, by products with identity blocks, symmetrised if ``symmetric``.

        Built into one preallocated ``(rows, cols)`` output; symmetrised in place strip by strip,
        ``M_ij <- (M_ij + M_ji) / 2``, which removes the round-off asymmetry of autodiff products
        and leaves a symmetric matrix unchanged. Peak memory (what this method allocates; an
        operator's own temporaries inside a product are not counted) is
        ``(rows * cols + (rows + cols) * b) * itemsize <= max_bytes`` with ``b`` the block width
        (see :func:`dense_block_size`).

        Args:
            max_bytes: Memory ceiling for the dense path (default 2 GiB).

        Raises:
            DenseTooLargeError: the matrix and one identity block would not fit in ``max_bytes``.
        """
        limit = DEFAULT_DENSE_BYTES if max_bytes is None else int(max_bytes)
        rows, cols = self.shape
        item = torch.empty((), dtype=self.dtype).element_size()
        b = dense_block_size(rows, cols, item, limit, self._name())
        out = torch.empty(rows, cols, dtype=self.dtype, device=self.device)
        self._dense_into(out, b)
        if self.symmetric and rows == cols:
            _symmetrize_(out, b)
        return out

    def _dense_into(self, out: Tensor, block: int) -> None:
        """Fill ``out`` with the matrix, ``block`` identity columns per product."""
        cols = self.shape[1]
        eye = torch.zeros(cols, block, dtype=self.dtype, device=self.device)
        for s in range(0, cols, block):
            w = min(block, cols - s)
            idx = torch.arange(w, device=self.device)
            eye[s + idx, idx] = 1
            out[:, s : s + w] = self.matmat(eye[:, :w])
            eye[s + idx, idx] = 0

    def to_scipy(self) -> Any:
        """A ``scipy.sparse.linalg.LinearOperator`` (numpy in and out) with the same products."""
        from scipy.sparse.linalg import LinearOperator

        def mv(x: np.ndarray) -> np.ndarray:
            return self @ np.asarray(x)

        def rmv(x: np.ndarray) -> np.ndarray:
            return self.rmatmat(torch.from_numpy(np.ascontiguousarray(x))).detach().cpu().numpy()

        return LinearOperator(
            self.shape, matvec=mv, rmatvec=rmv, matmat=mv, rmatmat=rmv,
            dtype=np.dtype(str(self.dtype).replace("torch.", "")),
        )

    # ---------------------------------------------------------------- optional capabilities
    @property
    def matvec_count(self) -> int:
        """Deprecated alias of :attr:`matvecs`."""
        return self.matvecs

    @matvec_count.setter
    def matvec_count(self, value: int) -> None:
        self.matvecs = value

    @property
    def num_batches(self) -> int:
        raise OperatorCapabilityError(
            f"{self._name()} has no 'num_batches': bootstrap over data needs a curvature operator built "
            "from an Objective (wdecomp.curvature)"
        )

    def restrict(self, names: Sequence[str] | str) -> LinOp:
        """The operator on a subset of the parameters (curvature operators only)."""
        raise self._missing("restrict", "per-group restriction")

    def resample(self, batch_indices: Sequence[int]) -> LinOp:
        """The operator on a multiset of the data's batches (curvature operators only)."""
        raise self._missing("resample", "bootstrap over batches")

    def factor_chunks(self, chunk_size: int = 64) -> Iterator[Tensor]:
        """Blocks ``F_j`` ``(m_j, cols)`` with ``A = sum_j F_j^T F_j`` (GGN, Fisher)."""
        raise self._missing("factor_chunks", "exact rank via the Gram matrix")

    def _missing(self, name: str, why: str) -> OperatorCapabilityError:
        return OperatorCapabilityError(
            f"{self._name()} has no '{name}()' ({why}); build the operator with wdecomp.curvature "
            "(hessian, ggn, fisher, ...) to use this feature"
        )

    def _name(self) -> str:
        return f"{type(self).__name__} ({self.kind})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, shape={self.shape}, dtype={self.dtype})"


def _symmetrize_(M: Tensor, strip: int) -> None:
    """``M <- (M + M^T) / 2`` in place, one ``strip``-row strip at a time (a ``strip x p`` temporary)."""
    p = M.shape[0]
    for s in range(0, p, strip):
        e = min(p, s + strip)
        avg = (M[s:e, s:] + M[s:, s:e].T).mul_(0.5)
        M[s:e, s:] = avg
        M[s:, s:e] = avg.T
