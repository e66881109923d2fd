"""Deprecated: the operator protocol moved to :mod:`wdecomp.linop` (kept until every importer has moved)."""

from wdecomp.linop import LinOp as SpectralOperator
from wdecomp.linop import OperatorCapabilityError, to_dense
from wdecomp.linop import aslinop as as_operator

__all__ = ["OperatorCapabilityError", "SpectralOperator", "as_operator", "to_dense"]
