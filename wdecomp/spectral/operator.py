"""One adapter so every spectral algorithm sees the same symmetric operator.

The algorithms of :mod:`wdecomp.spectral` program against a small protocol:

* ``op.shape == (p, p)``, ``op.dtype`` and ``op.device`` (torch);
* ``op @ V`` for ``V`` of shape ``(p,)`` or ``(p, k)`` (a block product, which curvature
  operators batch with ``vmap`` so that it costs much less than ``k`` single products);
* optionally ``op.params`` (a :class:`wdecomp.params.ParamSet`), ``op.restrict(names)``,
  ``op.resample(batch_indices)``, ``op.num_batches``, ``op.factor_chunks(chunk_size)`` and
  ``op.kind``.

:func:`as_operator` wraps a curvature operator, a plain symmetric tensor ``(p, p)``, a
``scipy.sparse.linalg.LinearOperator`` or any object with ``.shape`` and ``@`` into a
:class:`SpectralOperator`, which counts the matrix-vector products it performs (every
result reports its matvec count from this counter).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wdecomp.errors import DenseTooLargeError, ShapeError, WdecompError

__all__ = ["OperatorCapabilityError", "SpectralOperator", "as_operator", "to_dense"]

_NUMPY_TO_TORCH = {
    np.dtype(np.float64): torch.float64,
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float16): torch.float16,
}


class OperatorCapabilityError(WdecompError, TypeError):
    """The operator lacks a capability a spectral routine needs (``restrict``, ``resample``, ...)."""


class SpectralOperator:
    """A symmetric ``(p, p)`` operator with uniform block products and a matvec counter.

    Attributes:
        base: The wrapped object (curvature operator, tensor, scipy operator, ...).
        matvecs: Number of single matrix-vector products performed so far (a block product
            of ``k`` columns counts ``k``).
    """

    def __init__(self, base: Any, p: int, dtype: torch.dtype, device: torch.device, matmat: Any):
        self.base = base
        self._p = int(p)
        self._dtype = dtype
        self._device = torch.device(device)
        self._matmat = matmat
        self.matvecs = 0

    # -- protocol -----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self._p, self._p)

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def params(self) -> Any:
        """The operator's :class:`~wdecomp.params.ParamSet`, or ``None`` for plain matrices."""
        return getattr(self.base, "params", None)

    @property
    def kind(self) -> str:
        return str(getattr(self.base, "kind", "matrix"))

    @property
    def num_batches(self) -> int:
        n = getattr(self.base, "num_batches", None)
        if n is None:
            raise OperatorCapabilityError(
                f"{type(self.base).__name__} has no 'num_batches': bootstrap over data needs a "
                "curvature operator built from an Objective (wdecomp.curvature)"
            )
        return int(n)

    def matmat(self, V: Tensor) -> Tensor:
        """``A @ V`` for ``V`` of shape ``(p, k)``; counts ``k`` matvecs."""
        if V.dim() != 2 or V.shape[0] != self._p:
            raise ShapeError(f"expected a block of shape ({self._p}, k), got {tuple(V.shape)}")
        out = self._matmat(V)
        if out.shape != V.shape:
            raise ShapeError(f"operator returned shape {tuple(out.shape)} for input {tuple(V.shape)}")
        self.matvecs += V.shape[1]
        return out

    def __matmul__(self, x: Tensor) -> Tensor:
        if x.dim() == 1:
            return self.matmat(x[:, None])[:, 0]
        return self.matmat(x)

    # -- optional capabilities -------------------------------------------------------------
    def _need(self, name: str, why: str) -> Any:
        attr = getattr(self.base, name, None)
        if attr is None:
            raise OperatorCapabilityError(
                f"{type(self.base).__name__} has no '{name}()' ({why}); build the operator with "
                "wdecomp.curvature (hessian, ggn, fisher, ...) to use this feature"
            )
        return attr

    def restrict(self, names: Sequence[str] | str) -> SpectralOperator:
        """The operator on a subset of the parameters (per-layer / per-group spectra)."""
        return as_operator(self._need("restrict", "per-group restriction")(names))

    def resample(self, batch_indices: Sequence[int]) -> SpectralOperator:
        """The operator on a multiset of the objective's batches (bootstrap over data)."""
        return as_operator(self._need("resample", "bootstrap over batches")(list(batch_indices)))

    def factor_chunks(self, chunk_size: int = 64) -> Iterator[Tensor]:
        """Blocks ``A_j`` ``(m_j, p)`` with ``op == sum_j A_j^T A_j`` (GGN, Fisher)."""
        return self._need("factor_chunks", "exact rank via the Gram matrix")(chunk_size)

    @property
    def has_factors(self) -> bool:
        return getattr(self.base, "factor_chunks", None) is not None

    def __repr__(self) -> str:
        return f"SpectralOperator({type(self.base).__name__}, p={self._p}, dtype={self._dtype})"


def _tensor_operator(A: Tensor) -> SpectralOperator:
    if A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise ShapeError(f"a matrix operator must be square (p, p), got {tuple(A.shape)}")
    if not A.is_floating_point():
        raise ShapeError(f"a matrix operator must be floating point, got {A.dtype}")
    return SpectralOperator(A, A.shape[0], A.dtype, A.device, lambda V: A @ V)


def _scipy_operator(L: Any) -> SpectralOperator:
    p, q = L.shape
    if p != q:
        raise ShapeError(f"a scipy operator must be square, got shape {L.shape}")
    dtype = _NUMPY_TO_TORCH.get(np.dtype(L.dtype), torch.float64)

    def mm(V: Tensor) -> Tensor:
        out = L.matmat(V.detach().cpu().numpy())
        return torch.as_tensor(np.asarray(out), dtype=V.dtype).to(V.device)

    return SpectralOperator(L, p, dtype, torch.device("cpu"), mm)


def _generic_operator(obj: Any) -> SpectralOperator:
    p, q = tuple(obj.shape)
    if p != q:
        raise ShapeError(f"operator must be square, got shape {tuple(obj.shape)}")
    dtype = getattr(obj, "dtype", torch.float64)
    if not isinstance(dtype, torch.dtype):
        dtype = _NUMPY_TO_TORCH.get(np.dtype(dtype), torch.float64)
    device = getattr(obj, "device", torch.device("cpu"))
    state = {"batched": True}

    def mm(V: Tensor) -> Tensor:
        if state["batched"]:
            try:
                return obj @ V
            except (RuntimeError, ValueError, TypeError):
                if V.shape[1] == 1:
                    raise
                state["batched"] = False
        return torch.stack([obj @ V[:, i] for i in range(V.shape[1])], dim=1)

    return SpectralOperator(obj, p, dtype, device, mm)


def as_operator(x: Any) -> SpectralOperator:
    """Wrap ``x`` as a :class:`SpectralOperator`.

    Args:
        x: A curvature operator (anything with ``.shape`` and ``@``), a symmetric tensor
            ``(p, p)``, a ``scipy.sparse.linalg.LinearOperator`` (products cross numpy and
            torch on the CPU), or an existing :class:`SpectralOperator` (returned as is).

    Returns:
        The wrapped operator; its ``matvecs`` counter starts at zero.

    Raises:
        ShapeError: ``x`` is not square.
        TypeError: ``x`` has no ``shape`` or no ``@``.
    """
    if isinstance(x, SpectralOperator):
        return x
    if isinstance(x, Tensor):
        return _tensor_operator(x)
    try:
        from scipy.sparse.linalg import LinearOperator
    except ImportError:  # pragma: no cover - scipy is a dependency
        LinearOperator = ()  # noqa: N806
    if isinstance(x, LinearOperator) or (
        hasattr(x, "matmat") and hasattr(x, "shape") and not hasattr(x, "__matmul__")
    ):
        return _scipy_operator(x)
    if isinstance(x, np.ndarray):
        return _tensor_operator(torch.from_numpy(x))
    if hasattr(x, "shape") and hasattr(x, "__matmul__"):
        return _generic_operator(x)
    raise TypeError(
        f"cannot use {type(x).__name__} as an operator: need a (p, p) tensor, a scipy "
        "LinearOperator, or an object with .shape and @"
    )


def to_dense(op: Any, max_bytes: int = 2**30, block: int = 256) -> Tensor:
    """Materialise ``op`` as a symmetric dense ``(p, p)`` tensor by block products with ``I``.

    The result is symmetrised, ``(M + M^T) / 2``, which removes the round-off asymmetry of
    autodiff products without changing a symmetric operator.

    Args:
        op: Anything :func:`as_operator` accepts.
        max_bytes: Refuse (``DenseTooLargeError``) when ``p * p`` entries would exceed this.
        block: Columns of the identity per block product.
    """
    A = as_operator(op)
    if isinstance(A.base, Tensor):
        M = A.base
        return 0.5 * (M + M.T)
    p = A.shape[0]
    nbytes = p * p * torch.empty((), dtype=A.dtype).element_size()
    if nbytes > max_bytes:
        raise DenseTooLargeError(
            f"a dense {p} x {p} matrix needs {nbytes / 2**20:.0f} MiB > max_bytes = "
            f"{max_bytes / 2**20:.0f} MiB; use an estimated method or raise max_bytes"
        )
    M = torch.empty(p, p, dtype=A.dtype, device=A.device)
    for s in range(0, p, block):
        e = min(p, s + block)
        E = torch.zeros(p, e - s, dtype=A.dtype, device=A.device)
        E[torch.arange(s, e), torch.arange(e - s)] = 1
        M[:, s:e] = A.matmat(E)
    return 0.5 * (M + M.T)
