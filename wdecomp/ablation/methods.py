"""Ablation methods: what stands in for the removed components. The one registry of methods.

Removing components ``S`` of a group (see :mod:`wdecomp.bases.protocol`) keeps what ``S`` does
not explain and replaces ``S``'s contribution by its value on a *stand-in*: a stand-in activation
``f~`` for an activation group,

    f' = f - write(c_S(f) - c_S(f~), S)      (linear basis: f' = f - C_S^+ (C_S (f - mu) - C_S (f~ - mu))),

and a stand-in module input ``x~`` for a weight group owned by module ``m`` (``g(x; W) = m(x)``),

    m'(x) = g(x; W_S) + [g(x~; W) - g(x~; W_S)].

A method is one function ``stand_in(f, mean, perm) -> f~ | None`` of the tensor at the hook
(the activation, or the module's input), the data mean of that tensor over every example and
position (float64, from the reference pass; only if the method asks for it) and the batch's
resampling permutation (only if asked for). ``None`` means "nothing": the stand-in activation
is zero, and a weight group puts nothing back (``m'(x) = g(x; W_S)``).

* ``"zero"``: ``f~ = 0`` (for an uncentred basis ``c_S -> 0``); zero-ablating every direction of
  a complete basis sets the activation to zero, the whole-hook zero baseline.
* ``"mean"``: ``f~ = E[f]`` (``x~ = E[x]``), the data mean over every example and position.
  For a module affine in its input the bracket is exactly the data mean of the removed
  contribution ``E_x[g(x; W) - g(x; W_S)]``; for other modules it is that contribution at the
  mean input, an approximation stated here.
* ``"resample"``: ``f~ = f(x')`` for another example ``x'`` of the same batch, drawn by a seeded
  permutation without fixed points (the same for every level of a sweep, so levels compare like
  with like); positions of a sequence stay aligned.

To add a method, write its stand-in and register it::

    @register("median")
    def median(f, mean, perm):  # the batch's median example, feature by feature
        return f.median(dim=0, keepdim=True).values.expand_as(f)

Nothing else changes: :func:`~wdecomp.ablation.ablate`, :func:`~wdecomp.ablation.ablation_sweep`
and the CLI read the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from wdecomp.errors import DataError

__all__ = ["METHODS", "AblationMethod", "StandIn", "get_method", "register"]

StandIn = Callable[[Tensor, "Tensor | None", "Tensor | None"], "Tensor | None"]


@dataclass(frozen=True)
class AblationMethod:
    """A registered ablation method.

    Attributes:
        name: What users pass as ``method=``.
        stand_in: ``(f, mean, perm) -> f~ | None`` (module docstring).
        needs_mean: The reference pass must compute the data mean at each hook.
        needs_perm: Each batch needs a resampling permutation.
        constant: ``f~`` does not depend on the batch (only on ``mean``): it is then formed once
            per level from a zero batch, and a linear group's edit becomes one fused affine map.
            Leave it ``False`` (the general path, always right) unless that holds.
    """

    name: str
    stand_in: StandIn
    needs_mean: bool = False
    needs_perm: bool = False
    constant: bool = False


METHODS: dict[str, AblationMethod] = {}
"""Name -> method, in registration order."""


def register(name: str, *, needs_mean: bool = False, needs_perm: bool = False,
             constant: bool = False) -> Callable[[StandIn], StandIn]:
    """Register ``stand_in`` as ablation method ``name`` (decorator; the fields of
    :class:`AblationMethod`)."""

    def add(fn: StandIn) -> StandIn:
        METHODS[name] = AblationMethod(name, fn, needs_mean, needs_perm, constant)
        return fn

    return add


def get_method(name: str) -> AblationMethod:
    """The registered method called ``name``.

    Raises:
        ValueError: no such method (the registered names are listed).
    """
    if name not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, not '{name}'")
    return METHODS[name]


@register("zero", constant=True)
def zero(f: Tensor, mean: Tensor | None, perm: Tensor | None) -> Tensor | None:
    """Nothing stands in: a zero activation; a weight group puts nothing back."""
    return None


@register("mean", needs_mean=True, constant=True)
def mean(f: Tensor, mean: Tensor | None, perm: Tensor | None) -> Tensor | None:
    """The data mean over every example and position."""
    assert mean is not None
    return mean.to(dtype=f.dtype, device=f.device).expand_as(f)


@register("resample", needs_perm=True)
def resample(f: Tensor, mean: Tensor | None, perm: Tensor | None) -> Tensor | None:
    """Another example of the same batch (``f[perm]``, ``perm`` without fixed points)."""
    if perm is None:
        raise DataError("resample ablation needs batches of at least 2 examples")
    return f[perm]
