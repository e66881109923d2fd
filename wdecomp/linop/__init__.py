"""Linear operators: one protocol at the bottom of the package, outside types adapted at the edge.

* :class:`LinOp` — the base class every operator inherits (curvature operators, adapters): a
  subclass supplies ``shape``, ``dtype``, ``device`` and ``_matmat``; the base checks inputs and
  outputs, counts products (``matvecs``), builds the dense matrix under one memory guard and
  exports to scipy.
* :func:`aslinop` — the one door for tensors, numpy arrays, scipy operators, callables and
  objects with ``.shape`` and ``@``; :func:`to_dense` — their dense matrix.

Imports only :mod:`wdecomp.errors`, torch, numpy and scipy.
"""

from wdecomp.linop.adapt import FunctionOperator, ScipyOperator, TensorOperator, aslinop, to_dense
from wdecomp.linop.base import DEFAULT_DENSE_BYTES, LinOp, OperatorCapabilityError, dense_block_size

__all__ = [
    "DEFAULT_DENSE_BYTES",
    "FunctionOperator",
    "LinOp",
    "OperatorCapabilityError",
    "ScipyOperator",
    "TensorOperator",
    "aslinop",
    "dense_block_size",
    "to_dense",
]
