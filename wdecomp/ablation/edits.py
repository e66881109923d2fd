"""How removing components of one group edits the forward pass (the formulas are in
:mod:`wdecomp.ablation.methods`); every edit is applied through :func:`wdecomp.hooks.edit`.

* An activation group becomes an activation edit at its hook point (:func:`activation_edit`).
* A weight group becomes new weights ``remove(W, S)`` (:func:`removed_weights`) and, for a method
  with a stand-in, a forward hook on the owning module that puts back the removed contribution
  on the stand-in input (:func:`restore_hook`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from wdecomp.ablation.methods import AblationMethod
from wdecomp.bases.protocol import ActivationGroup, WeightGroup
from wdecomp.errors import SelectionError, ShapeError
from wdecomp.hooks import Edit, ModuleHook, first_tensor, replace_first

__all__ = ["BatchContext", "activation_edit", "removed_weights", "restore_hook"]


@dataclass
class BatchContext:
    """Per-batch state the edits read: the resampling permutation of the current batch."""

    perm: Tensor | None = None


def _linear(g: Any) -> bool:
    return all(hasattr(g, a) for a in ("transform", "inverse", "center"))


def activation_edit(g: ActivationGroup, idx: Tensor, method: AblationMethod, mean: Tensor | None,
                    ctx: BatchContext, dtype: torch.dtype, device: torch.device) -> Edit:
    """``f -> f - write(c_S(f) - c_S(f~), S)`` for the components ``idx`` of ``g``.

    For a linear group (``C``, ``C^+``, ``mu``) and a method whose stand-in is the same for every
    example (zero, mean), the edit is affine in ``f``: ``f (I - A) + b`` with
    ``A = C_S^T C_S^{+T}`` and ``b = mu A + r_S C_S^{+T}``, ``r_S = C_S (f~ - mu)`` (row vectors),
    formed once per level in the basis's precision. When ``2 k_S >= d`` the edit is one fused
    ``addmm`` with the ``(d, d)`` matrix; for fewer components the two thin products
    ``(f - mu) C_S^T`` and ``(.) C_S^{+T}`` are cheaper.
    """
    if not _linear(g):
        return _nonlinear_edit(g, idx, method, mean, ctx)
    C64 = g.transform[idx]  # (k_S, d)
    Cp64 = g.inverse[:, idx]  # (d, k_S)
    mu64 = g.center
    d = int(g.transform.shape[1])

    def check(f: Tensor) -> None:
        if f.shape[-1] != d:
            raise ShapeError(f"activations at '{g.label}' have width {f.shape[-1]}, the basis expects {d}")

    r64 = None
    if method.constant:
        dummy = torch.zeros(1, d, dtype=C64.dtype, device=C64.device)
        stand = method.stand_in(dummy, mean, None)
        if stand is None:
            r64 = torch.zeros(len(idx), dtype=C64.dtype, device=C64.device) if mu64 is None else -(C64 @ mu64)
        else:
            r64 = C64 @ (stand[0] if mu64 is None else stand[0] - mu64)

    if r64 is not None and 2 * len(idx) >= d:
        A = C64.T @ Cp64.T  # (d, d)
        bias64 = r64 @ Cp64.T if mu64 is None else mu64 @ A + r64 @ Cp64.T
        M = (torch.eye(d, dtype=A.dtype, device=A.device) - A).to(dtype=dtype, device=device)
        bias = bias64.to(dtype=dtype, device=device)

        def fused(f: Tensor) -> Tensor:
            check(f)
            if f.dtype != M.dtype:
                return f @ M.to(f.dtype) + bias.to(f.dtype)
            return torch.addmm(bias, f.reshape(-1, d), M).reshape(f.shape)

        return fused

    C = C64.to(dtype=dtype, device=device)
    Cp = Cp64.to(dtype=dtype, device=device)
    mu = None if mu64 is None else mu64.to(dtype=dtype, device=device)
    r = None if r64 is None else r64.to(dtype=dtype, device=device)

    def fn(f: Tensor) -> Tensor:
        check(f)
        c = (f if mu is None else f - mu) @ C.T
        if r is not None:
            return f - (c - r) @ Cp.T
        stand = method.stand_in(f, mean, ctx.perm)
        fs = torch.zeros_like(f) if stand is None else stand
        return f - (c - (fs if mu is None else fs - mu) @ C.T) @ Cp.T

    return fn


def _nonlinear_edit(g: ActivationGroup, idx: Tensor, method: AblationMethod, mean: Tensor | None,
                    ctx: BatchContext) -> Edit:
    """The general activation group: ``f - write(c(f)[S] - c(f~)[S], S)``."""

    def fn(f: Tensor) -> Tensor:
        stand = method.stand_in(f, mean, ctx.perm)
        fs = torch.zeros_like(f) if stand is None else stand
        idx_f = idx.to(f.device)
        delta = g.coordinates(f)[..., idx_f] - g.coordinates(fs)[..., idx_f]
        return f - g.write(delta, idx_f).to(f.dtype)

    return fn


def removed_weights(g: WeightGroup, state: Mapping[str, Tensor], idx: Tensor) -> dict[str, Tensor]:
    """The group's weights with components ``idx`` taken out, read from ``state``."""
    return g.remove({n: state[n] for n in g.parameters}, idx)


def restore_hook(g: WeightGroup, method: AblationMethod, mean_in: Tensor | None, ctx: BatchContext,
                 originals: Mapping[str, Tensor]) -> ModuleHook:
    """Forward hook on the owning module adding ``g(x~; W) - g(x~; W_S)`` (``x~``: the method's
    stand-in for the module's input; ``W``: ``originals``)."""
    prefix = g.module + "." if g.module else ""
    foreign = [n for n in g.parameters if not n.startswith(prefix)]
    if foreign:
        raise SelectionError(f"weight group '{g.label}': parameters {foreign} are not inside its module "
                             f"'{g.module}', so their contribution cannot be put back there")
    local = {n[len(prefix):]: originals[n] for n in g.parameters}
    busy = [False]

    def hook(mod: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
        if busy[0]:
            return None
        x = first_tensor(args, f"{g.module}:input")
        xt = method.stand_in(x, mean_in, ctx.perm)
        if xt is None:
            return None
        busy[0] = True
        try:
            full = functional_call(mod, local, (xt, *args[1:]), kwargs)
            cut = mod(xt, *args[1:], **kwargs)
        finally:
            busy[0] = False
        back = first_tensor(full, g.module) - first_tensor(cut, g.module)
        return replace_first(out, first_tensor(out, g.module) + back)

    return hook
