"""Activations at named hook points, and Jacobians between them.

A *hook point* names a module of the model and which side of it: ``"mlp.act"`` is the
output of module ``mlp.act``; ``"mlp.act:input"`` is its first positional input. The two
special points ``"output"`` (the model's output) and ``"loss"`` (the per-example summed loss,
targets needed) are valid Jacobian targets.

The per-example Jacobian of a later point's activation ``f_t(x)`` with respect to an earlier
point's activation ``f_s(x)`` is

    J(x) = d f_t / d f_s  evaluated at  f_s = f_s(x),  everything else upstream held fixed,

(the partial derivative along the hooked edge: residual paths that bypass ``s`` are held at
their values). It has shape ``(*t_shape, *s_shape)`` per example, is computed with
``torch.func.vmap`` over examples of ``jacrev`` (or ``jacfwd``, whichever side is smaller), and
is streamed over data in chunks of examples so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import jacfwd, jacrev, vmap

from wdecomp.batch import add_example_axis, as_batches, chunks, split
from wdecomp.errors import NonFiniteError
from wdecomp.hooks import HookPoint, forward_order, resolve_module, run
from wdecomp.objective import resolve_loss

__all__ = [
    "SPECIAL_POINTS",
    "HookPoint",
    "activation_jacobian",
    "activation_jacobians",
    "capture",
    "module_order",
    "resolve_module",
    "run_with_hooks",
    "stream_activations",
]

SPECIAL_POINTS = ("output", "loss")


def module_order(model: nn.Module, points: Sequence[str | HookPoint], example_inputs: Any) -> list[int]:
    """The order in which ``points`` are first reached in a forward pass on ``example_inputs``
    (:func:`wdecomp.hooks.forward_order`; inputs of a module count as reached just before its output)."""
    return forward_order(model, points, example_inputs)


def run_with_hooks(
    model: nn.Module,
    inputs: Any,
    read: Iterable[str | HookPoint] = (),
    write: dict[str, Tensor] | None = None,
) -> tuple[Any, dict[str, Tensor]]:
    """Run ``model(inputs)``, reading activations at ``read`` and replacing those in ``write``
    (:func:`wdecomp.hooks.run`).

    Returns:
        ``(output, {point: activation})``.
    """
    return run(model, inputs, read, write)


def capture(model: nn.Module, inputs: Any, points: Iterable[str | HookPoint]) -> dict[str, Tensor]:
    """Activations at ``points`` for one batch, without gradients (checked finite)."""
    with torch.no_grad():
        _, acts = run_with_hooks(model, inputs, read=points)
    for key, value in acts.items():
        if not torch.isfinite(value).all():
            raise NonFiniteError(f"activation at '{key}' contains NaN or inf")
    return acts


def stream_activations(
    model: nn.Module, batches: Iterable[Any], points: Iterable[str | HookPoint]
) -> Iterator[dict[str, Tensor]]:
    """Yield :func:`capture` for each ``(inputs, targets)`` batch (or bare inputs)."""
    points = list(points)
    for batch in batches:
        inputs, _ = split(batch)
        yield capture(model, inputs, points)


def _target_function(model: nn.Module, source: str, target: str,
                     loss_fn: Callable[[Tensor, Tensor], Tensor] | None) -> Callable[..., Tensor]:
    """``(a_s, x, y) -> f_t`` for one example (no batch axis): the model with ``source`` set to ``a_s``."""
    def g(a: Tensor, x: Any, y: Any) -> Tensor:
        xb = add_example_axis(x)
        write = {source: a.unsqueeze(0)}
        if target in SPECIAL_POINTS:
            out, _ = run_with_hooks(model, xb, write=write)
            if target == "output":
                return out[0]
            return loss_fn(out, add_example_axis(y))[0]
        _, acts = run_with_hooks(model, xb, read=[target], write=write)
        return acts[target][0]

    return g


def activation_jacobian(
    model: nn.Module,
    inputs: Any,
    source: str,
    target: str,
    *,
    targets: Tensor | None = None,
    loss: Callable[[Tensor, Tensor], Tensor] | str | None = None,
    mode: str = "auto",
) -> Tensor:
    """Per-example Jacobians ``d f_target / d f_source`` for one batch.

    Args:
        model: The network.
        inputs: A batch of inputs (leading axis = examples).
        source: Hook point of the variable activation (earlier).
        target: Hook point (later), ``"output"``, or ``"loss"`` (needs ``targets``; the loss of
            each example, summed over its terms, from ``loss``: a name or
            ``(outputs, targets) -> (B,)`` per-example losses).
        mode: ``"reverse"`` (``jacrev``: one backward per target entry), ``"forward"`` (``jacfwd``:
            one JVP per source entry), or ``"auto"`` (the fewer sweeps).

    Returns:
        Tensor of shape ``(B, *target_shape, *source_shape)`` (``(B, *source_shape)`` for the loss).
    """
    source = str(HookPoint.parse(source))
    loss_fn = None
    if target == "loss":
        if targets is None:
            raise ValueError("target='loss' needs the batch's targets")
        resolved = resolve_loss(loss or "cross_entropy")
        loss_fn = resolved.per_example
    elif target != "output":
        target = str(HookPoint.parse(target))
    with torch.no_grad():
        out, acts = run_with_hooks(model, inputs, read=[source] + ([target] if target not in SPECIAL_POINTS else []))
    a = acts[source].detach()
    n_in = a[0].numel()
    n_out = 1 if target == "loss" else (out[0].numel() if target == "output" else acts[target][0].numel())
    if mode == "auto":
        mode = "forward" if n_in < n_out else "reverse"
    jac = {"forward": jacfwd, "reverse": jacrev}.get(mode)
    if jac is None:
        raise ValueError(f"mode must be 'auto', 'forward' or 'reverse', not '{mode}'")
    g = _target_function(model, source, target, loss_fn)
    y = targets if targets is not None else torch.zeros(a.shape[0])
    with torch.no_grad():  # torch.func transforms still differentiate; no autograd graph is kept
        result = vmap(jac(g, argnums=0), in_dims=(0, 0, 0))(a, inputs, y)
    if not torch.isfinite(result).all():
        raise NonFiniteError(f"Jacobian d {target} / d {source} contains NaN or inf")
    return result


def activation_jacobians(
    model: nn.Module,
    data: Iterable[Any],
    source: str,
    target: str,
    *,
    chunk_size: int = 64,
    loss: Callable[[Tensor, Tensor], Tensor] | str | None = None,
    mode: str = "auto",
) -> Iterator[tuple[Tensor, Any]]:
    """Stream :func:`activation_jacobian` over ``(inputs, targets)`` batches, ``chunk_size``
    examples at a time. Yields ``(jacobians, (inputs_chunk, targets_chunk))``."""
    for batch in as_batches(data, keep=False, what="activation_jacobians"):
        inputs, targets = split(batch)
        for chunk in chunks((inputs, targets) if targets is not None else (inputs,), chunk_size):
            x, y = chunk if targets is not None else (chunk[0], None)
            yield activation_jacobian(model, x, source, target, targets=y, loss=loss, mode=mode), (x, y)
