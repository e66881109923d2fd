"""Outside types adapted once, at the edge, into a :class:`~wdecomp.linop.base.LinOp`.

:func:`aslinop` is the only door: a :class:`LinOp` passes through unchanged (so its counter is
the operator's own); a tensor or numpy array becomes a :class:`TensorOperator`; a scipy
``LinearOperator`` or sparse matrix a :class:`ScipyOperator` (products cross numpy on the CPU);
a callable with a ``shape`` a :class:`FunctionOperator`; and any other object with ``.shape`` and
``@`` a :class:`FunctionOperator` that multiplies one vector at a time, unless it has a ``matmat``
method or ``blocks=True`` says that its ``@`` takes ``(p, k)`` blocks. How an object is used is
decided here, once, from what it declares, never by trying a product and catching an error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse
import torch
from scipy.sparse.linalg import LinearOperator, aslinearoperator
from torch import Tensor

from wdecomp.errors import DtypeError, ShapeError
from wdecomp.linop.base import LinOp

__all__ = ["FunctionOperator", "ScipyOperator", "TensorOperator", "aslinop", "to_dense"]


def _torch_dtype(dtype: Any, what: str) -> torch.dtype:
    """A real floating torch dtype for a torch or numpy dtype (``None``: float64)."""
    if dtype is None:
        return torch.float64
    if not isinstance(dtype, torch.dtype):
        try:
            dtype = torch.from_numpy(np.empty(0, dtype=np.dtype(dtype))).dtype
        except TypeError as err:
            raise DtypeError(f"{what} has dtype {dtype}, which torch cannot represent") from err
    if dtype.is_complex:
        raise DtypeError(
            f"{what} is complex ({dtype}); wdecomp's spectral methods are for real symmetric operators "
            "(split a Hermitian matrix [[Re, -Im], [Im, Re]] into a real one of twice the size)"
        )
    if not dtype.is_floating_point:
        return torch.float64
    return dtype


class TensorOperator(LinOp):
    """A dense matrix ``(rows, cols)`` (torch tensor) as an operator; ``dense()`` copies it."""

    def __init__(self, A: Tensor) -> None:
        if A.dim() != 2:
            raise ShapeError(f"a matrix operator must be 2-D (p, p), got shape {tuple(A.shape)}")
        dtype = _torch_dtype(A.dtype, "the matrix")
        self.A = A if A.dtype == dtype else A.to(dtype)
        self.shape = (A.shape[0], A.shape[1])
        self.dtype, self.device = dtype, A.device

    def _matmat(self, V: Tensor) -> Tensor:
        return self.A @ V

    def _dense_into(self, out: Tensor, block: int) -> None:
        out.copy_(self.A)


class ScipyOperator(LinOp):
    """A ``scipy.sparse.linalg.LinearOperator`` (or sparse matrix): products go through numpy on the CPU."""

    def __init__(self, L: Any) -> None:
        self.L = aslinearoperator(L)
        self.shape = tuple(int(n) for n in self.L.shape)
        self.dtype = _torch_dtype(self.L.dtype, "the scipy operator")
        self.device = torch.device("cpu")

    def _matmat(self, V: Tensor) -> Tensor:
        out = self.L.matmat(V.detach().cpu().numpy())
        return torch.as_tensor(np.asarray(out), dtype=V.dtype)


class FunctionOperator(LinOp):
    """An operator given by a function: ``fn(V)`` for blocks ``(cols, k)`` (``blocks=True``) or
    ``fn(v)`` for single vectors ``(cols,)`` (``blocks=False``: one call per column)."""

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
        shape: tuple[int, int],
        dtype: Any = None,
        device: Any = None,
        *,
        blocks: bool = True,
        symmetric: bool = True,
        base: Any = None,
    ) -> None:
        self.fn, self.blocks, self.base = fn, bool(blocks), base
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = _torch_dtype(dtype, "the operator")
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.symmetric = symmetric

    def _matmat(self, V: Tensor) -> Tensor:
        if self.blocks:
            return torch.as_tensor(self.fn(V))
        return torch.stack([torch.as_tensor(self.fn(V[:, j])) for j in range(V.shape[1])], dim=1)


def aslinop(
    x: Any,
    *,
    shape: tuple[int, int] | None = None,
    dtype: Any = None,
    device: Any = None,
    blocks: bool | None = None,
    square: bool = True,
) -> LinOp:
    """Adapt ``x`` to a :class:`LinOp` (the one door for outside types).

    Args:
        x: A :class:`LinOp` (returned as is), a torch tensor or numpy array ``(p, p)``, a scipy
            ``LinearOperator`` or sparse matrix, a callable ``V -> A V`` (needs ``shape``), or an
            object with ``.shape`` and ``@``.
        shape: The shape of a callable operator.
        dtype, device: Of a callable operator (default float64 on the CPU).
        blocks: Whether ``x`` (a callable, or an object's ``@``) takes ``(p, k)`` blocks. Default:
            ``True`` for a callable and for an object with a ``matmat`` method; ``False`` (one
            vector at a time) for an object known only by ``@``.
        square: Refuse a non-square operator (what every spectral routine needs).

    Raises:
        ShapeError: ``x`` is not square (with ``square=True``) or not 2-D.
        DtypeError: ``x`` is complex.
        TypeError: ``x`` is none of the above.
    """
    if isinstance(x, LinOp):
        op = x
    elif isinstance(x, Tensor):
        op = TensorOperator(x)
    elif isinstance(x, np.ndarray):
        op = TensorOperator(torch.from_numpy(x))
    elif isinstance(x, LinearOperator) or scipy.sparse.issparse(x):
        op = ScipyOperator(x)
    elif hasattr(x, "shape") and hasattr(x, "matmat") and not hasattr(x, "__matmul__"):
        op = ScipyOperator(x)  # scipy-style duck type: numpy in, numpy out
    elif hasattr(x, "shape") and (hasattr(x, "__matmul__") or hasattr(x, "matmat")):
        has_matmat = callable(getattr(x, "matmat", None))
        use_blocks = has_matmat if blocks is None else blocks
        fn = x.matmat if has_matmat else x.__matmul__
        op = FunctionOperator(
            fn, tuple(x.shape), getattr(x, "dtype", dtype), getattr(x, "device", device),
            blocks=use_blocks, symmetric=bool(getattr(x, "symmetric", True)), base=x,
        )
    elif callable(x):
        if shape is None:
            raise TypeError("a callable operator needs its shape: aslinop(fn, shape=(p, p))")
        op = FunctionOperator(x, shape, dtype, device, blocks=True if blocks is None else blocks, base=x)
    else:
        raise TypeError(
            f"cannot use {type(x).__name__} as an operator: need a (p, p) tensor or array, a scipy "
            "LinearOperator, a callable with shape=..., or an object with .shape and @"
        )
    if square and op.shape[0] != op.shape[1]:
        raise ShapeError(f"the operator must be square (p, p), got shape {tuple(op.shape)}")
    return op


def to_dense(x: Any, max_bytes: int | None = None) -> Tensor:
    """``aslinop(x).dense(max_bytes)``: the symmetrised dense matrix under one memory guard."""
    return aslinop(x, square=False).dense(max_bytes)
