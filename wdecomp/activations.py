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

import difflib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import jacfwd, jacrev, vmap

from wdecomp.curvature._batch import slice_examples
from wdecomp.errors import NonFiniteError, SelectionError

SPECIAL_POINTS = ("output", "loss")


@dataclass(frozen=True)
class HookPoint:
    """A parsed hook point: ``module`` name and ``side`` (``"output"`` or ``"input"``)."""

    module: str
    side: str = "output"

    @classmethod
    def parse(cls, spec: str | HookPoint) -> HookPoint:
        if isinstance(spec, HookPoint):
            return spec
        name, _, side = spec.partition(":")
        side = side or "output"
        if side not in ("output", "input"):
            raise SelectionError(f"hook point '{spec}': side must be 'output' or 'input', not '{side}'")
        return cls(name, side)

    def __str__(self) -> str:
        return self.module if self.side == "output" else f"{self.module}:input"


def resolve_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (``""`` is the model), or a clear error with near names."""
    modules = dict(model.named_modules())
    if name not in modules:
        near = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.4)
        hint = f"; did you mean {near}?" if near else f"; modules are: {[n for n in modules if n][:12]}"
        raise SelectionError(f"no module named '{name}' in {type(model).__name__}{hint}")
    return modules[name]


def module_order(model: nn.Module, points: Sequence[str | HookPoint], example_inputs: Any) -> list[int]:
    """The order in which ``points`` are first reached in a forward pass on ``example_inputs``.

    Inputs of a module count as reached just before its output.
    """
    parsed = [HookPoint.parse(p) for p in points]
    stamps: dict[int, float] = {}
    counter = [0]
    handles = []
    for i, point in enumerate(parsed):
        module = resolve_module(model, point.module)

        def pre(_m: nn.Module, _a: Any, i: int = i, point: HookPoint = point) -> None:
            if point.side == "input" and i not in stamps:
                stamps[i] = counter[0] - 0.5
                counter[0] += 1

        def post(_m: nn.Module, _a: Any, _o: Any, i: int = i, point: HookPoint = point) -> None:
            if point.side == "output" and i not in stamps:
                stamps[i] = counter[0]
            counter[0] += 1

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        with torch.no_grad():
            _call(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    missing = [str(parsed[i]) for i in range(len(parsed)) if i not in stamps]
    if missing:
        raise SelectionError(f"hook points {missing} are never reached in the forward pass")
    return sorted(range(len(parsed)), key=lambda i: stamps[i])


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _first_tensor(x: Any) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], Tensor):
        return x[0]
    raise SelectionError(f"hook point activation is a {type(x).__name__}, not a tensor")


@contextmanager
def _hooks(model: nn.Module, points: dict[str, HookPoint], read: dict[str, Tensor] | None,
           write: dict[str, Tensor] | None) -> Iterator[None]:
    """Record activations into ``read`` and/or replace them by ``write`` (keyed by point)."""
    handles = []
    for key, point in points.items():
        module = resolve_module(model, point.module)
        if point.side == "output":
            def hook(_m: nn.Module, _a: Any, out: Any, key: str = key) -> Any:
                if write is not None and key in write:
                    value = write[key]
                    out = (value, *out[1:]) if isinstance(out, tuple) else value
                if read is not None:
                    read[key] = _first_tensor(out)
                return out

            handles.append(module.register_forward_hook(hook))
        else:
            def prehook(_m: nn.Module, args: tuple, key: str = key) -> Any:
                if write is not None and key in write:
                    args = (write[key], *args[1:])
                if read is not None:
                    read[key] = _first_tensor(args)
                return args

            handles.append(module.register_forward_pre_hook(prehook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def run_with_hooks(
    model: nn.Module,
    inputs: Any,
    read: Iterable[str | HookPoint] = (),
    write: dict[str, Tensor] | None = None,
) -> tuple[Any, dict[str, Tensor]]:
    """Run ``model(inputs)``, reading activations at ``read`` and replacing those in ``write``.

    Returns:
        ``(output, {point: activation})``.
    """
    points = {str(HookPoint.parse(p)): HookPoint.parse(p) for p in read}
    write = {str(HookPoint.parse(k)): v for k, v in (write or {}).items()}
    for key in write:
        points.setdefault(key, HookPoint.parse(key))
    store: dict[str, Tensor] = {}
    with _hooks(model, points, store, write):
        out = _call(model, inputs)
    missing = [k for k in points if k not in store and k not in write]
    if missing:
        raise SelectionError(f"hook points {missing} were not reached in the forward pass")
    return out, {k: store[k] for k in points if k in store}


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
        inputs = batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 else batch
        yield capture(model, inputs, points)


def _target_function(model: nn.Module, source: str, target: str,
                     loss_fn: Callable[[Tensor, Tensor], Tensor] | None) -> Callable[..., Tensor]:
    """``(a_s, x, y) -> f_t`` for one example (no batch axis): the model with ``source`` set to ``a_s``."""
    def g(a: Tensor, x: Any, y: Any) -> Tensor:
        xb = _unsqueeze_tree(x)
        write = {source: a.unsqueeze(0)}
        if target in SPECIAL_POINTS:
            out, _ = run_with_hooks(model, xb, write=write)
            if target == "output":
                return out[0]
            return loss_fn(out, _unsqueeze_tree(y))[0]
        _, acts = run_with_hooks(model, xb, read=[target], write=write)
        return acts[target][0]

    return g


def _unsqueeze_tree(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.unsqueeze(0)
    if isinstance(x, dict):
        return {k: _unsqueeze_tree(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_unsqueeze_tree(v) for v in x)
    return x


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
        from wdecomp.objective import resolve_loss

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
    for batch in data:
        inputs, targets = batch if isinstance(batch, (tuple, list)) and len(batch) == 2 else (batch, None)
        n = _first_tensor(inputs if not isinstance(inputs, dict) else next(iter(inputs.values()))).shape[0]
        for start in range(0, n, chunk_size):
            x = slice_examples(inputs, start, start + chunk_size)
            y = slice_examples(targets, start, start + chunk_size) if targets is not None else None
            yield activation_jacobian(model, x, source, target, targets=y, loss=loss, mode=mode), (x, y)
