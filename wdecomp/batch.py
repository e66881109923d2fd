"""The one data convention: what a batch is, what a data argument is, and the operations on them.

**A batch** is one of

* a tensor: a batch of inputs (no targets), its first axis the examples; never split into rows;
* a mapping ``{name: tensor}``: a batch of keyword inputs (``model(**batch)``), no targets;
* a tuple or list ``(inputs, targets)``: inputs (a tensor, a tuple of positional tensors, or a
  mapping of keyword tensors) and their targets; ``(inputs,)`` is inputs without targets.

Every tensor in a batch carries the examples on its first axis (checked when a batch is counted
or sliced); other entries (``None``, numbers, strings) are carried along unchanged.

**A data argument** (what every function that takes ``data`` accepts) is one of

* one batch, written as a tensor, a mapping or a **tuple** ``(inputs, targets)`` / ``(inputs,)``;
* a **list** (or other sequence) of batches, re-read on every pass;
* a re-iterable of batches (a ``DataLoader``): iterated anew on every pass;
* a one-shot iterator (a generator, ``iter(...)``): wrapped in :class:`Replayable`, which keeps
  the batches of the first pass so a later pass replays them (or, with ``keep=False``, refuses
  the second pass with an error saying so).

Refused, with a :class:`~wdecomp.errors.DataError` that says how to write it instead:

* a list of two entries whose second is a tensor, ``[xa, xb]``: one ``(inputs, targets)`` batch
  or two batches of inputs? Write ``(x, y)`` for one batch, ``[(xa,), (xb,)]`` for two;
* a tuple whose two entries both look like batches, ``((x1, y1), (x2, y2))``: pass a list of
  batches ``[(x1, y1), (x2, y2)]`` (or ``[((x1, y1), (x2, y2))]`` for one batch of that shape);
* a tuple batch of any length other than 1 or 2; an empty list; anything not iterable.

Operations: :func:`split` (inputs, targets), :func:`num_examples`, :func:`slice_examples`,
:func:`concat`, :func:`chunks`, :func:`to`, :func:`call`, :func:`add_example_axis`,
:func:`fingerprint`, :func:`as_batches`, :class:`Replayable`.
"""

from __future__ import annotations

import ctypes
import hashlib
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from wdecomp.distributed import checksum
from wdecomp.errors import DataError

__all__ = [
    "Batch",
    "Replayable",
    "add_example_axis",
    "as_batches",
    "c_memcmp",
    "call",
    "chunks",
    "concat",
    "fingerprint",
    "is_one_batch",
    "map_tensors",
    "num_examples",
    "slice_examples",
    "split",
    "tensor_leaves",
    "to",
]

#: A batch: a tensor, a mapping of tensors, or ``(inputs, targets)`` / ``(inputs,)``.
Batch = Any

_HOW = (
    "a batch is a tensor of inputs, a dict of keyword inputs, or a tuple (inputs, targets) / (inputs,)"
)


# ----------------------------------------------------------------------------- structure
def _is_container(obj: Any) -> bool:
    return isinstance(obj, (tuple, list, Mapping))


def map_tensors(fn: Callable[[Tensor], Any], obj: Any) -> Any:
    """``obj`` with every tensor ``t`` nested in tuples, lists and mappings replaced by ``fn(t)``.

    Containers keep their type (a mapping becomes a ``dict``); other entries are kept as they are.
    """
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: map_tensors(fn, v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(fn, v) for v in obj)
    return obj


def tensor_leaves(obj: Any, path: str = "batch") -> Iterator[tuple[str, Tensor]]:
    """``(path, tensor)`` for every tensor nested in ``obj``, in a fixed order (mappings by key
    insertion order), the path written as ``batch[0]['ids']``."""
    if isinstance(obj, Tensor):
        yield path, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from tensor_leaves(v, f"{path}[{k!r}]")
    elif isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            yield from tensor_leaves(v, f"{path}[{i}]")


def split(batch: Batch) -> tuple[Any, Any]:
    """``(inputs, targets)`` of one batch; ``targets`` is ``None`` for a batch of inputs only.

    Raises:
        DataError: a tuple or list batch of a length other than 1 or 2, or a batch that is none
            of a tensor, a mapping or a tuple.
    """
    if isinstance(batch, (Tensor, Mapping)):
        return batch, None
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return batch[0], batch[1]
        if len(batch) == 1:
            return batch[0], None
        raise DataError(
            f"a batch of {len(batch)} entries: {_HOW}; for a model with several positional inputs "
            "write ((a, b, c), targets) (a BatchLoss that reads a batch structure of its own takes a "
            "list of such batches, [(a, b, c), ...])"
        )
    raise DataError(f"a batch cannot be a {type(batch).__name__}: {_HOW}")


def num_examples(batch: Batch) -> int:
    """Number of examples: the common length of the first axis of every tensor in ``batch``.

    Raises:
        DataError: no tensor in the batch, a 0-dimensional tensor, or tensors of different
            first-axis lengths (the path of the offending tensor is named).
    """
    n: int | None = None
    first = ""
    for path, t in tensor_leaves(batch):
        if t.dim() == 0:
            raise DataError(
                f"{path} is a 0-dimensional tensor; every tensor in a batch needs the examples on its first axis"
            )
        if n is None:
            n, first = int(t.shape[0]), path
        elif int(t.shape[0]) != n:
            raise DataError(
                f"{path} has {int(t.shape[0])} examples on its first axis but {first} has {n}; every "
                "tensor in a batch needs the same number of examples first"
            )
    if n is None:
        raise DataError(f"a {type(batch).__name__} batch holds no tensor, so it has no examples")
    return n


def slice_examples(batch: Batch, start: int, stop: int) -> Batch:
    """Examples ``start:stop`` of every tensor in ``batch`` (the same structure, fewer examples)."""
    num_examples(batch)  # checks every tensor carries the examples first
    return map_tensors(lambda t: t[start:stop], batch)


def chunks(batch: Batch, size: int) -> Iterator[Batch]:
    """``batch`` in consecutive slices of at most ``size`` examples (one slice if it is smaller).

    Raises:
        ValueError: ``size < 1``.
    """
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    n = num_examples(batch)
    for start in range(0, n, size):
        yield map_tensors(lambda t, s=start: t[s : s + size], batch)


def concat(batches: Sequence[Batch]) -> Batch:
    """Batches of one structure joined along the examples axis (the inverse of slicing).

    Non-tensor entries are taken from the first batch; they must be equal in all of them.

    Raises:
        DataError: no batches, or batches of different structure.
    """
    if not batches:
        raise DataError("nothing to concatenate: no batches")
    first = batches[0]
    if isinstance(first, Tensor):
        if not all(isinstance(b, Tensor) for b in batches):
            raise DataError("cannot concatenate batches of different structure")
        return torch.cat(list(batches), dim=0)
    if isinstance(first, Mapping):
        keys = list(first)
        if not all(isinstance(b, Mapping) and list(b) == keys for b in batches):
            raise DataError("cannot concatenate batches of different structure (mapping keys differ)")
        return {k: concat([b[k] for b in batches]) for k in keys}
    if isinstance(first, (tuple, list)):
        if not all(type(b) is type(first) and len(b) == len(first) for b in batches):
            raise DataError("cannot concatenate batches of different structure (lengths differ)")
        return type(first)(concat([b[i] for b in batches]) for i in range(len(first)))
    if not all(b == first for b in batches):
        raise DataError(f"cannot concatenate batches whose non-tensor entries differ ({first!r})")
    return first


def add_example_axis(x: Any) -> Any:
    """One example as a batch of one: a new first axis on every tensor (inside ``vmap``)."""
    return map_tensors(lambda t: t.unsqueeze(0), x)


def to(batch: Batch, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Batch:
    """``batch`` on ``device``; its real floating-point tensors also cast to ``dtype``.

    Integer, boolean and complex tensors keep their dtype (token ids stay integers; a complex
    tensor is never cast to a real dtype, which would drop its imaginary part).
    """

    def move(t: Tensor) -> Tensor:
        if dtype is not None and t.is_floating_point():
            return t.to(device=device, dtype=dtype)
        return t.to(device=device) if device is not None else t

    return map_tensors(move, batch)


def call(model: nn.Module, inputs: Any, state: Mapping[str, Tensor] | None = None) -> Any:
    """``model(inputs)``: ``model(**inputs)`` for a mapping, ``model(*inputs)`` for a tuple or list,
    ``model(inputs)`` otherwise; with ``state``, a functional call with the parameters and buffers
    replaced by ``state`` (``torch.func.functional_call``)."""
    if isinstance(inputs, Mapping):
        args: tuple[Any, ...] = ()
        kwargs = dict(inputs)
    else:
        args, kwargs = (tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)), {}
    if state is None:
        return model(*args, **kwargs)
    return functional_call(model, dict(state), args, kwargs)


# ----------------------------------------------------------------------------- fingerprints
def fingerprint(batch: Batch) -> str:
    """A short hash of a batch's structure, tensor shapes, dtypes and every tensor's bits.

    Equal batches give equal fingerprints; changing any single entry of any tensor (even
    ``0.0`` to ``-0.0``), a shape, a dtype, a key or a non-tensor entry changes it (see
    :func:`wdecomp.distributed.checksum`). Cost: one pass over the data on its own device (no
    copy to the host); for a CPU tensor fingerprinted again, one ``memcmp`` against a private copy
    of its bits when they are unchanged (:func:`_checksum`).
    """
    h = hashlib.blake2b(digest_size=16)
    _feed(batch, h)
    return h.hexdigest()


def c_memcmp() -> Callable[[int, int, int], int] | None:
    """The C library's ``memcmp(a, b, n)``, or ``None`` where it cannot be loaded."""
    for load in (lambda: ctypes.CDLL(None), lambda: ctypes.cdll.msvcrt):
        try:
            fn = load().memcmp
        except (OSError, AttributeError):
            continue
        fn.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
        fn.restype = ctypes.c_int
        return fn
    return None


class _Kept:
    """A tensor fingerprinted before: a weak reference to it and, from its second fingerprint on,
    a private copy of its bits and their checksum."""

    __slots__ = ("copy", "ref", "value")

    def __init__(self, ref: weakref.ref) -> None:
        self.ref = ref
        self.copy: Tensor | None = None
        self.value = 0


_MEMCMP = c_memcmp()
_KEPT: dict[int, _Kept] = {}
_KEPT_BYTES = [0]
#: Private copies kept for the fingerprints, at most this many bytes in all.
KEEP_BUDGET = 256 << 20
#: Tensors smaller than this are checksummed every time (as cheap as the comparison).
KEEP_MIN = 1 << 16


def _forget(key: int) -> None:
    kept = _KEPT.pop(key, None)
    if kept is not None and kept.copy is not None:
        _KEPT_BYTES[0] -= kept.copy.numel() * kept.copy.element_size()


def _checksum(t: Tensor) -> int:
    """:func:`~wdecomp.distributed.checksum` of ``t``, read from the private copy of ``t``'s bits
    kept at an earlier fingerprint when ``memcmp`` finds ``t``'s bits equal to the copy's (same
    dtype and shape): the checksum is a function of the bits, so it is the same number, for one
    streaming comparison instead of a multiply and a sum. A copy is kept for a contiguous CPU
    tensor of at least :data:`KEEP_MIN` bytes fingerprinted a second time while alive (a loader
    that yields new tensors on every pass costs no copies), within :data:`KEEP_BUDGET`."""
    nbytes = t.numel() * t.element_size()
    if (_MEMCMP is None or t.device.type != "cpu" or t.layout != torch.strided or not t.is_contiguous()
            or t.is_neg() or t.is_conj() or nbytes < KEEP_MIN):
        return checksum(t)
    key = id(t)
    kept = _KEPT.get(key)
    if kept is None or kept.ref() is not t:
        _forget(key)
        _KEPT[key] = _Kept(weakref.ref(t, lambda _r, key=key: _forget(key)))
        return checksum(t)
    copy = kept.copy
    if copy is not None and copy.dtype == t.dtype and copy.shape == t.shape \
            and _MEMCMP(t.data_ptr(), copy.data_ptr(), nbytes) == 0:
        return kept.value
    value = checksum(t)
    if copy is not None:
        _KEPT_BYTES[0] -= copy.numel() * copy.element_size()
        kept.copy = None
    if _KEPT_BYTES[0] + nbytes <= KEEP_BUDGET:
        kept.copy, kept.value = t.detach().clone(), value
        _KEPT_BYTES[0] += nbytes
    return value


def _feed(obj: Any, h: Any) -> None:
    if isinstance(obj, Tensor):
        if obj.is_meta:
            raise DataError("a tensor on the meta device has no values; load the data before passing it")
        h.update(f"T{tuple(obj.shape)}{obj.dtype}:{_checksum(obj)};".encode())
    elif isinstance(obj, Mapping):
        h.update(f"M{len(obj)}(".encode())
        for k, v in obj.items():
            h.update(f"{k!r}=".encode())
            _feed(v, h)
        h.update(b")")
    elif isinstance(obj, (tuple, list)):
        h.update(f"{type(obj).__name__}{len(obj)}(".encode())
        for v in obj:
            _feed(v, h)
        h.update(b")")
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


# ----------------------------------------------------------------------------- data arguments
class Replayable:
    """A one-shot iterator of batches made re-iterable: the first pass keeps what it reads.

    Every pass yields the same batches in the same order: those already read come from memory,
    the rest are read from the iterator (and kept). With ``keep=False`` nothing is kept and a
    second pass raises :class:`DataError` (for a caller that needs one pass and no memory).

    Args:
        iterator: The one-shot iterator (a generator, ``iter(list)``, a ``map`` object...).
        keep: Keep the batches for later passes (memory: all of the data).
        what: Who is reading, for the error message.
    """

    def __init__(self, iterator: Iterator[Batch], *, keep: bool = True, what: str = "this function") -> None:
        self._source = iterator
        self._kept: list[Batch] = []
        self._exhausted = False
        self._passes = 0
        self.keep = keep
        self.what = what

    def __iter__(self) -> Iterator[Batch]:
        self._passes += 1
        if not self.keep and self._passes > 1:
            raise DataError(
                f"{self.what} needs a second pass over the data, but it was given a one-shot iterator "
                "(already consumed); pass a list of batches or a re-iterable such as a DataLoader"
            )
        return self._replay() if self.keep else iter(self._source)

    def _replay(self) -> Iterator[Batch]:
        i = 0
        while True:
            if i < len(self._kept):
                yield self._kept[i]
            elif self._exhausted:
                return
            else:
                try:
                    item = next(self._source)
                except StopIteration:
                    self._exhausted = True
                    return
                self._kept.append(item)
                yield item
            i += 1


def is_one_batch(data: Any) -> bool:
    """Whether a data argument is one batch (a tensor, a mapping or a tuple) rather than many.

    Raises:
        DataError: for the ambiguous forms listed in the module docstring.
    """
    if isinstance(data, (Tensor, Mapping)):
        return True
    if isinstance(data, tuple):
        if len(data) == 2 and all(isinstance(b, (tuple, list)) and len(b) == 2 for b in data):
            raise DataError(
                "a tuple of two (inputs, targets) pairs: a tuple is one batch, so this would read the "
                "first pair as inputs and the second as targets; pass several batches as a list "
                "[(x1, y1), (x2, y2)], or [((a, b), (c, d))] if it really is one batch"
            )
        split(data)  # refuses lengths other than 1 and 2
        return True
    if isinstance(data, (list, Sequence)) and not isinstance(data, (str, bytes)):
        if len(data) == 2 and isinstance(data[1], Tensor):
            raise DataError(
                "a list of two entries whose second is a tensor, [a, b], is ambiguous: one batch "
                "(inputs, targets) or two batches of inputs? Write a tuple (inputs, targets) for one "
                "batch, or [(a,), (b,)] for two batches of inputs only"
            )
        return False
    return False


def as_batches(data: Any, *, keep: bool = True, what: str = "this function") -> Iterable[Batch]:
    """A data argument as a re-iterable of batches (see the module docstring for the forms).

    One batch becomes ``[batch]``; a list or sequence is returned as it is; a one-shot iterator
    becomes a :class:`Replayable` (``keep`` decides whether a second pass replays or refuses); any
    other iterable (a ``DataLoader``) is returned as it is and iterated anew on every pass.

    Raises:
        DataError: an ambiguous form, an empty list, or something that is not data.
    """
    if is_one_batch(data):
        return [data]
    if isinstance(data, Sequence):
        if len(data) == 0:
            raise DataError("the data hold no batches (an empty list)")
        return data
    if isinstance(data, Iterator):
        return Replayable(data, keep=keep, what=what)
    if isinstance(data, Iterable):
        return data
    raise DataError(
        f"data cannot be a {type(data).__name__}: pass one batch (a tensor, a dict, or a tuple "
        "(inputs, targets)), a list of batches, a DataLoader or an iterator of batches"
    )
