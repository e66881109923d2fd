"""Cached per-batch product closures, shared by the Hessian, the GGN and the Fisher operators.

A curvature product at fixed weights is a linear map whose *record* (an autodiff graph, a
pullback) depends only on the weights and the batch, not on the vector. :class:`CachedProducts`
builds each batch's record once and reuses it for every product while nothing it read has
changed, and decides that bit for bit (``0.0`` and ``-0.0`` differ; a NaN equals its copy):

* a private copy of every parameter and buffer the loss reads (the operator's own tensors for
  the selected ones) and of the modules' train/eval flags, taken when the records are built and
  compared with the current ones at the start of every product: any difference drops every
  record;
* a private copy of each cached batch, compared with the batch of the current pass (once per
  product): any difference rebuilds that batch's record.

The comparisons are one streaming pass over both copies with no temporaries: ``memcmp`` per
contiguous CPU tensor, one ``torch.equal`` of the concatenated bit patterns per device and dtype
elsewhere. Version counters are not used: writes through ``.data`` or into a tensor that shares
a parameter's storage leave them unchanged. When the data check of the objective is on
(``check_deterministic``), a batch found bit-identical to its copy lends the copy's fingerprint
to that check, so a cached product reads its data once, not twice.

The records are built on the private copies, so nothing outside the operator can change the
values they saved (in-place optimiser steps, ``load_state_dict``, writes through ``.data``), and
they differentiate with respect to one flat vector of the selected parameters, so a product
comes out as one flat vector (no per-parameter split and join). A change of the *function* (a
new hook, a patched ``forward``) is invisible: call ``clear_cache()`` after one.

:func:`jacobian_maps` gives the two cached linear maps of a function's Jacobian, ``v -> J v``
and ``u -> J^T u``, from one recorded pullback: ``J^T u`` is the pullback itself, and since
``u -> J^T u`` is linear, the pullback of *that* map at any ``u`` is ``v -> J v`` (the
"double-vjp" identity), so a cached Jacobian-vector product needs no forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.func import vjp

from wdecomp import batch as batching
from wdecomp.curvature.base import CurvatureOperator
from wdecomp.objective import Batch, Objective
from wdecomp.params import ParamSet

_CACHE_MODES = (True, False, "auto")


def check_cache_setting(cache: Any, kind: str) -> None:
    """Raise ``ValueError`` unless ``cache`` is ``True``, ``False`` or ``"auto"``."""
    if not any(cache is mode or (isinstance(mode, str) and cache == mode) for mode in _CACHE_MODES):
        raise ValueError(f"unknown {kind} cache setting {cache!r}; choose True, False or 'auto'")


_INT_OF_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


#: Bytewise comparison of two CPU buffers: streams both once with no temporary, where
#: ``torch.equal`` compares one entry at a time and numpy's ``==`` writes a boolean array
#: (85k float32 entries, cold caches, one core: 90 us against 155 and 205 us; see
#: ``benchmarks/results/products.md``).
_MEMCMP = batching.c_memcmp()

#: Device types whose tensors are compared one by one with ``memcmp``; the tensors of any other
#: device (and all of them without ``memcmp``) are concatenated and compared in one kernel.
_MEMCMP_DEVICES = ("cpu",)


def _bits(t: Tensor) -> Tensor:
    """``t``'s entries as integers of their width: equal exactly when the bit patterns are (``0.0``
    and ``-0.0`` differ, a NaN equals its own copy)."""
    t = t.detach().resolve_neg()
    if t.is_complex():
        t = torch.view_as_real(t.resolve_conj())
    if t.is_floating_point():
        t = t.view(_INT_OF_WIDTH[t.element_size()])
    return t


def _same_values(live: Tensor, copy: Tensor) -> bool:
    """Whether ``live`` holds, bit for bit, the entries of ``copy`` (a contiguous private copy of
    the same dtype, shape and device): ``memcmp`` of the two buffers for a contiguous CPU tensor,
    else ``torch.equal`` of the bit patterns."""
    if (
        _MEMCMP is not None
        and live.device.type in _MEMCMP_DEVICES
        and live.layout == torch.strided
        and live.is_contiguous()
        and not (live.is_neg() or live.is_conj())
    ):
        size = live.numel() * live.element_size()
        return size == 0 or _MEMCMP(live.data_ptr(), copy.data_ptr(), size) == 0
    return bool(torch.equal(_bits(live), _bits(copy)))


def _same_tensor(live: Tensor, copy: Tensor) -> bool:
    same_kind = live.dtype == copy.dtype and live.shape == copy.shape and live.device == copy.device
    return same_kind and _same_values(live, copy)


#: Non-tensor batch entries compared by value; any other object counts as changed on every call
#: (it could hide mutable state), so its batch is rebuilt rather than risk a stale product.
_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)


def _same_batch(live: Any, copy: Any) -> bool:
    """Whether ``live`` has ``copy``'s structure (container types, keys in order) and entries:
    tensors bit for bit, plain values by type and ``repr`` (``-0.0`` is not ``0.0``)."""
    if isinstance(copy, Tensor):
        return isinstance(live, Tensor) and _same_tensor(live, copy)
    if isinstance(copy, (tuple, list, dict)):
        if type(live) is not type(copy) or len(live) != len(copy):
            return False
        if isinstance(copy, dict):
            return list(live) == list(copy) and all(_same_batch(live[k], v) for k, v in copy.items())
        return all(map(_same_batch, live, copy))
    return type(live) is type(copy) and isinstance(copy, _PLAIN) and live == copy and repr(live) == repr(copy)



class _Snapshot:
    """Private copies of the parameters and buffers the loss reads, and the modules' flags.

    The copies of each device and dtype are views of one contiguous buffer, the selected
    parameters first and in order, so ``flat`` (the selected parameters as one vector, what the
    records differentiate with respect to) is a view too. :meth:`matches` compares them with the
    live tensors bit for bit: ``memcmp`` per tensor on the CPU, one ``torch.equal`` of the
    concatenated buffer per device and dtype elsewhere (one synchronisation, not one per tensor).
    """

    def __init__(self, state: dict[str, Tensor], modes: tuple[bool, ...], selected: tuple[str, ...]) -> None:
        chosen = set(selected)
        groups: dict[tuple[torch.device, torch.dtype], list[str]] = {}
        for n in [*selected, *(n for n in state if n not in chosen)]:
            groups.setdefault((state[n].device, state[n].dtype), []).append(n)
        views: dict[str, Tensor] = {}
        self._groups: list[tuple[tuple[str, ...], Tensor]] = []
        for names in groups.values():
            buffer = torch.cat([state[n].reshape(-1) for n in names])
            start = 0
            for n in names:
                views[n] = buffer[start : start + state[n].numel()].view(state[n].shape)
                start += state[n].numel()
            self._groups.append((tuple(names), buffer))
        self.state = {n: views[n] for n in state}
        opening, first = self._groups[0]  # the selected parameters open the first group
        if opening[: len(selected)] != tuple(selected):
            raise ValueError(
                "cached products need the selected parameters on one device; pass cache=False"
            )
        self.flat = first[: sum(state[n].numel() for n in selected)]
        self.modes = modes
        self._names = tuple(state)
        self._meta = [(t.dtype, t.shape, t.device) for t in self.state.values()]

    def matches(self, state: dict[str, Tensor], modes: tuple[bool, ...]) -> bool:
        """Whether ``state`` (same names, in order) and ``modes`` are these, bit for bit."""
        if modes != self.modes or tuple(state) != self._names:
            return False
        for t, (dtype, shape, device) in zip(state.values(), self._meta):
            if t.dtype != dtype or t.shape != shape or t.device != device:
                return False
        for names, buffer in self._groups:
            if _MEMCMP is not None and buffer.device.type in _MEMCMP_DEVICES:
                if not all(_same_values(state[n], self.state[n]) for n in names):
                    return False
            elif not torch.equal(_bits(torch.cat([state[n].reshape(-1) for n in names])), _bits(buffer)):
                return False
        return True


@dataclass
class _Entry:
    """One batch's cached record, with the private copy of the batch it was built on."""

    copy: Any
    record: Any
    checked: int  # the product call in which the batch was last found unchanged
    fingerprint: str  # the copy's data fingerprint (wdecomp.batch.fingerprint)


class CachedProducts(CurvatureOperator):
    """A curvature operator whose per-batch products reuse a cached record at unchanged values.

    A subclass sets ``self.cache`` (``True``, ``False`` or ``"auto"``: one-batch objectives only)
    and implements :meth:`_build_record` (the record of one batch, built on private copies) and
    :meth:`_record_product` (``A_b V`` from a record); its uncached ``_batch_matmat`` stays the
    independent path used when not caching.
    """

    cache: bool | str = "auto"

    def _reset_cache(self) -> None:
        self._snapshot: _Snapshot | None = None
        self._entries: dict[int, _Entry] = {}
        self._calls = 0
        self._caching_now = False

    def clear_cache(self) -> None:
        """Drop every cached record and the private copies (frees their memory)."""
        self._reset_cache()

    @property
    def caching(self) -> bool:
        """Whether products reuse cached records (``cache=True``, or ``"auto"`` with one batch)."""
        if self.cache is False:
            return False
        return self.cache is True or self.objective.num_batches == 1

    # ---------------------------------------------------------------- records
    def _build_record(self, flat: Tensor, rest: dict[str, Tensor], batch: Batch) -> Any:
        """The record of one batch at weights ``{**rest, **self._views(flat)}`` (private copies),
        differentiated with respect to the flat vector ``flat`` of the selected parameters."""
        raise NotImplementedError

    def _record_product(self, record: Any, rows: Tensor) -> Tensor:
        """``A_b V`` (flat ``(k, p)``) from a batch's record, for flat tangents ``rows`` ``(k, p)``."""
        raise NotImplementedError

    def _check_snapshot(self) -> None:
        """Drop the cache unless the model is, bit for bit, as when it was built."""
        state, modes = self.objective.state_and_modes(self.params.as_dict())
        if self._snapshot is not None and self._snapshot.matches(state, modes):
            return
        self._entries.clear()  # free the old records before building new ones
        self._snapshot = _Snapshot(state, modes, self.params.names)

    def _known_fingerprint(self, index: int, raw: Batch, batch: Batch) -> str | None:
        """The data fingerprint of batch ``index`` as read (``raw``), when it is known without a
        pass over the data: ``raw``'s tensors are ``batch``'s own (no cast, no copy) and ``batch``
        is bit for bit the private copy of a cached batch (so the fingerprints are equal)."""
        entry = self._entries.get(index)
        if entry is None:
            return None
        raws = [t for _, t in batching.tensor_leaves(raw)]
        batches = [t for _, t in batching.tensor_leaves(batch)]
        if len(raws) != len(batches) or any(a is not b for a, b in zip(raws, batches)):
            return None
        if not _same_batch(batch, entry.copy):
            return None
        entry.checked = self._calls
        return entry.fingerprint

    def _product_batches(self) -> Iterator[Batch]:
        if not self._caching_now:
            return super()._product_batches()
        return self.objective.batches(known_fingerprint=self._known_fingerprint)

    def _record(self, index: int, batch: Batch) -> Any:
        entry = self._entries.get(index)
        if entry is not None and (entry.checked == self._calls or _same_batch(batch, entry.copy)):
            entry.checked = self._calls
            return entry.record
        self._entries.pop(index, None)
        assert self._snapshot is not None
        copy = batching.map_tensors(lambda t: t.detach().clone(), batch)
        selected = set(self.params.names)
        rest = {n: t for n, t in self._snapshot.state.items() if n not in selected}
        record = self._build_record(self._snapshot.flat, rest, copy)
        self._entries[index] = _Entry(copy, record, self._calls, batching.fingerprint(copy))
        return record

    # ---------------------------------------------------------------- the operator's hooks
    def _rebuild(self, objective: Objective, params: ParamSet) -> CachedProducts:
        new = super()._rebuild(objective, params)
        assert isinstance(new, CachedProducts)
        new._reset_cache()
        return new

    def _matmat(self, V: Tensor) -> Tensor:
        self._caching_now = self.caching
        if self._caching_now:
            self._calls += 1
            self._check_snapshot()
        return super()._matmat(V)

    def _batch_product(self, index: int, batch: Batch, rows: Tensor) -> Tensor:
        if not self._caching_now:
            return super()._batch_product(index, batch, rows)
        return self._record_product(self._record(index, batch), rows)


def jacobian_maps(
    fn: Callable[[Tensor], Tensor], theta: Tensor
) -> tuple[Tensor, Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """``(fn(theta), v -> J v, u -> J^T u)`` for ``J = d fn / d theta``, from recorded pullbacks
    (``theta`` a tensor, or any pytree of them: ``v`` and ``J^T u`` then have its structure).

    ``u -> J^T u`` is ``fn``'s pullback at ``theta``; ``v -> J v`` is the pullback of the linear
    map ``u -> J^T u`` (at ``u = 0``; any point gives the same map). Both reuse the records, so
    each product is backward sweeps only; both work under ``vmap``.
    """
    value, pullback = vjp(fn, theta)
    value = value.detach()
    _, transpose = vjp(lambda u: pullback(u)[0], torch.zeros_like(value))
    return value, (lambda v: transpose(v)[0]), (lambda u: pullback(u)[0])
