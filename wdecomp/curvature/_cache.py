"""Cached per-batch product closures, shared by the Hessian, the GGN and the Fisher operators.

A curvature product at fixed weights is a linear map whose *record* (an autodiff graph, a
pullback) depends only on the weights and the batch, not on the vector. :class:`CachedProducts`
builds each batch's record once and reuses it for every product while nothing it read has
changed, and decides that value for value:

* a private copy of every parameter and buffer the loss reads (the operator's own tensors for
  the selected ones) and of the modules' train/eval flags, taken when the records are built and
  compared with the current ones at the start of every product: any difference drops every
  record;
* a private copy of each cached batch, compared with the batch of the current pass (once per
  product): any difference rebuilds that batch's record.

The records are built on the private copies, so nothing outside the operator can change the
values they saved (in-place optimiser steps, ``load_state_dict``, writes through ``.data``).
A change of the *function* (a new hook, a patched ``forward``) is invisible: call
``clear_cache()`` after one.

:func:`jacobian_maps` gives the two cached linear maps of a function's Jacobian, ``v -> J v``
and ``u -> J^T u``, from one recorded pullback: ``J^T u`` is the pullback itself, and since
``u -> J^T u`` is linear, the pullback of *that* map at any ``u`` is ``v -> J v`` (the
"double-vjp" identity), so a cached Jacobian-vector product needs no forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.func import vjp
from torch.utils._pytree import tree_flatten, tree_unflatten

from wdecomp.curvature.base import CurvatureOperator
from wdecomp.objective import Batch, Objective
from wdecomp.params import ParamSet

_CACHE_MODES = (True, False, "auto")


def check_cache_setting(cache: Any, kind: str) -> None:
    """Raise ``ValueError`` unless ``cache`` is ``True``, ``False`` or ``"auto"``."""
    if not any(cache is mode or (isinstance(mode, str) and cache == mode) for mode in _CACHE_MODES):
        raise ValueError(f"unknown {kind} cache setting {cache!r}; choose True, False or 'auto'")


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.device == b.device and bool(torch.equal(a, b))


#: Non-tensor batch entries compared by value; any other object counts as changed on every call
#: (it could hide mutable state), so its batch is rebuilt rather than risk a stale product.
_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)


def _same_leaf(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and _same_tensor(a, b)
    return type(a) is type(b) and isinstance(a, _PLAIN) and a == b


@dataclass
class _Snapshot:
    """Private clones of the parameters and buffers the loss reads, and the modules' flags."""

    state: dict[str, Tensor]
    modes: tuple[bool, ...]

    def matches(self, state: dict[str, Tensor], modes: tuple[bool, ...]) -> bool:
        return (
            modes == self.modes
            and list(state) == list(self.state)
            and all(_same_tensor(state[n], self.state[n]) for n in state)
        )


@dataclass
class _Entry:
    """One batch's cached record, with the private copy of the batch it was built on."""

    spec: Any
    leaves: list[Any]
    record: Any
    checked: int  # the product call in which the batch was last found unchanged

    def matches(self, batch: Batch) -> bool:
        leaves, spec = tree_flatten(batch)
        return spec == self.spec and len(leaves) == len(self.leaves) and all(map(_same_leaf, leaves, self.leaves))


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
    def _build_record(self, selected: dict[str, Tensor], rest: dict[str, Tensor], batch: Batch) -> Any:
        """The record of one batch at weights ``{**rest, **selected}`` (private copies)."""
        raise NotImplementedError

    def _record_product(self, record: Any, V: dict[str, Tensor]) -> Tensor:
        """``A_b V`` (flat ``(k, p)``) from a batch's record, for named tangents ``(k, *shape)``."""
        raise NotImplementedError

    def _check_snapshot(self) -> None:
        """Drop the cache unless the model is, value for value, as when it was built."""
        state = self.objective.state(self.params.as_dict())
        modes = tuple(m.training for m in self.objective.model.modules())
        if self._snapshot is not None and self._snapshot.matches(state, modes):
            return
        self._entries.clear()  # free the old records before building new ones
        self._snapshot = _Snapshot({n: t.clone() for n, t in state.items()}, modes)

    def _record(self, index: int, batch: Batch) -> Any:
        entry = self._entries.get(index)
        if entry is not None and (entry.checked == self._calls or entry.matches(batch)):
            entry.checked = self._calls
            return entry.record
        self._entries.pop(index, None)
        assert self._snapshot is not None
        leaves, spec = tree_flatten(batch)
        leaves = [t.detach().clone() if isinstance(t, Tensor) else t for t in leaves]
        frozen = self._snapshot.state
        selected = {n: frozen[n] for n in self.params.names}
        rest = {n: t for n, t in frozen.items() if n not in selected}
        record = self._build_record(selected, rest, tree_unflatten(leaves, spec))
        self._entries[index] = _Entry(spec, leaves, record, self._calls)
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

    def _batch_product(self, index: int, theta: dict[str, Tensor], batch: Batch, V: dict[str, Tensor]) -> Tensor:
        if not self._caching_now:
            return self._batch_matmat(theta, batch, V)
        return self._record_product(self._record(index, batch), V)


def jacobian_maps(
    fn: Callable[[dict[str, Tensor]], Tensor], theta: dict[str, Tensor]
) -> tuple[Tensor, Callable[[dict[str, Tensor]], Tensor], Callable[[Tensor], dict[str, Tensor]]]:
    """``(fn(theta), v -> J v, u -> J^T u)`` for ``J = d fn / d theta``, from recorded pullbacks.

    ``u -> J^T u`` is ``fn``'s pullback at ``theta``; ``v -> J v`` is the pullback of the linear
    map ``u -> J^T u`` (at ``u = 0``; any point gives the same map). Both reuse the records, so
    each product is backward sweeps only; both work under ``vmap``.
    """
    value, pullback = vjp(fn, theta)
    value = value.detach()
    _, transpose = vjp(lambda u: pullback(u)[0], torch.zeros_like(value))
    return value, (lambda v: transpose(v)[0]), (lambda u: pullback(u)[0])
