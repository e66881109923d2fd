"""Exceptions raised by wdecomp, one per kind of bad input, so callers can catch precisely."""


class WdecompError(Exception):
    """Base class of every error wdecomp raises on purpose."""


class SelectionError(WdecompError, ValueError):
    """A parameter or hook selection matched nothing or named something that does not exist."""


class ModelStateError(WdecompError, RuntimeError):
    """The model is in a state that makes curvature meaningless (dropout or BatchNorm in train mode)."""


class NonFiniteError(WdecompError, FloatingPointError):
    """A loss, activation or product is NaN or infinite."""


class ShapeError(WdecompError, ValueError):
    """A vector or matrix has the wrong shape for the operator it is given to."""


class DenseTooLargeError(WdecompError, MemoryError):
    """A dense matrix was requested that would not fit in the allowed memory."""


class DataError(WdecompError, ValueError):
    """The data are malformed, empty, or changed between passes."""


class ScalingLawRangeError(WdecompError, ValueError):
    """A loss lies at or below a scaling law's irreducible loss (no finite compute reaches it)."""


class ModelMismatchError(WdecompError, ValueError):
    """An object (basis, components) was built for a different model than the one given."""


class OutputPathError(WdecompError, OSError):
    """A file or folder wdecomp was asked to write cannot be written there (a folder where a file
    is expected, a read-only folder, a file where a folder should be)."""


class ArgumentError(WdecompError, ValueError):
    """An argument's value is outside what it may be (a negative tolerance, zero steps, a NaN
    threshold, a block size below one): the message names the argument and its allowed range."""


class DtypeError(WdecompError, TypeError):
    """A tensor has a dtype the computation cannot honour (complex vectors for a real operator)."""


class NotSymmetricError(WdecompError, ValueError):
    """An operator that a symmetric method (Lanczos) needs to be symmetric is measurably not."""


class FileFormatError(WdecompError, ValueError):
    """A file wdecomp was asked to read is not a wdecomp file of the expected kind, or is malformed
    (unreadable header, bad JSON, a missing key, a tensor of the wrong shape, NaN where numbers are
    needed, a name that does not exist in the model): the message names the file and the problem."""
