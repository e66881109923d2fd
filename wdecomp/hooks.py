"""The one place that hooks a model: edit activations or weights for a ``with`` block, and read them.

A *hook point* names a module and a side of it: ``"mlp.act"`` is the output of module
``mlp.act`` (the first element when the module returns a tuple), ``"mlp.act:input"`` its first
positional input, and ``"blocks.0.ln1:variance"`` the layer-norm *variance point* of an
``nn.LayerNorm`` (below). Every other module of wdecomp that changes or reads what a model computes
goes through this module; nothing else registers a PyTorch hook.

**Variance points** (rib's split of a LayerNorm into ``LayerNormIn`` and ``LayerNormOut``,
``rib.models.components``): for an ``nn.LayerNorm`` ``ln`` over the last axis (``d`` features, with
or without elementwise affine), ``"ln:variance"`` is the activation ``[v; f]`` (``d + 1`` features,
the variance first) with ``f`` the LayerNorm's input and ``v = mean_i (f_i - mean f)^2`` (rib's
``variance``: the biased variance over the features, no ``eps``). Downstream, ``ln`` normalises
its input with the *given* ``v``: ``y = (f - mean f) / sqrt(max(v, 0) + eps) * weight + bias``
(rib's ``LayerNormOut``, whose ``layer_norm(x, var + eps)`` sets a negative variance to 0 first), so
writing an edited ``[v'; f']`` changes the output through ``v'`` exactly as rib's ``LayerNormOut``
does, and sections, Jacobians and graphs see ``v`` as an input of their own. When the
LayerNorm's input also feeds another path (the residual stream of a pre-LN transformer block),
name the hook point that produces it: ``"blocks.0.ln1:variance@blocks.0:input"`` reads ``f`` at
``blocks.0:input`` and writes ``f'`` there, so the skip connection sees ``f'`` too (rib's
``ln1_out.0``, whose input ``(var, residual)`` carries the residual on); the LayerNorm's input
must then be that very tensor (else :class:`SelectionError` at the forward pass). Without ``@``,
``f`` is read and written at ``ln``'s own input. An edit that leaves ``[v; f]`` unchanged (reading
it) leaves the LayerNorm's own computation in place.

* :func:`edit` — for the duration of a ``with`` block, replace or transform the activation at
  hook points (``f -> fn(f)``, or ``f -> value``), replace or transform weights and buffers
  (``W -> fn(W)``, or ``W -> value``), and attach raw forward hooks to modules (for edits that need
  the module's full call, e.g. re-running it on another input). Edits nest (an inner edit sees
  the outer one's result), apply in the order given, and are always removed on exit, exceptions
  included.
* :func:`record` — the activations at hook points, as a dict filled by the forward passes run
  inside the block; :func:`observe` calls a function on each activation instead.
* :func:`run` — one forward pass reading and writing hook points (``run_with_hooks``).
* :func:`call` — ``model(inputs)`` for a tensor, a tuple of positional inputs or a dict of
  keyword inputs (:func:`wdecomp.batch.call`, re-exported).
* :func:`forward_order` — the order in which a forward pass first reaches hook points.

Weight edits put the new tensor in the module's parameter (or buffer) slot for the block, exactly
as :func:`torch.func.functional_call` does, so the forward pass computes with it, gradients flow
through ``fn`` back to the original parameter, and a ``functional_call`` run inside the block
composes: weights passed to it explicitly take precedence for that call. Tied weights (one
``Parameter`` held by several modules) are edited in every slot that holds it unless
``tie_weights=False``. Activation edits are ordinary forward (pre-)hooks, so they act under
``functional_call``, ``torch.func.vmap`` and ``jacrev``/``jacfwd`` of the forward pass as well.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    >>> x = torch.randn(4, 2)
    >>> h = net[1](net[0](x))
    >>> with edit(net, {"1": torch.zeros_like}):
    ...     y = net(x)
    >>> torch.allclose(y, net[2].bias.expand(4, 1))
    True
    >>> with edit(net, weights={"2.weight": lambda w: 2 * w}), record(net, ["1"]) as acts:
    ...     y2 = net(x)
    >>> torch.allclose(y2, 2 * h @ net[2].weight.T + net[2].bias), torch.equal(acts["1"], h)
    (True, True)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias
from weakref import WeakKeyDictionary

import torch
from torch import Tensor, nn

from wdecomp.batch import call
from wdecomp.errors import SelectionError, ShapeError

__all__ = [
    "Edit",
    "SIDES",
    "HookPoint",
    "ModuleHook",
    "call",
    "edit",
    "first_tensor",
    "forward_order",
    "observe",
    "record",
    "replace_first",
    "resolve_module",
    "run",
]

Edit: TypeAlias = Callable[[Tensor], Tensor]
"""An activation (or weight) transform ``f -> f'`` of the same shape."""

ModuleHook: TypeAlias = Callable[[nn.Module, tuple, dict, Any], Any]
"""A raw forward hook ``(module, args, kwargs, output) -> new output | None``."""


SIDES = ("output", "input", "variance")


@dataclass(frozen=True)
class HookPoint:
    """A parsed hook point: ``module`` name and ``side`` (``"output"``, ``"input"`` or
    ``"variance"``); for a variance point, ``anchor`` is the hook point where the LayerNorm's input
    is read and written (``None``: the LayerNorm's own input; module docstring)."""

    module: str
    side: str = "output"
    anchor: str | None = None

    @classmethod
    def parse(cls, spec: str | HookPoint) -> HookPoint:
        """``"name"`` (output), ``"name:input"`` (first positional input), ``"ln:variance"`` or
        ``"ln:variance@point"`` (the variance point of LayerNorm ``ln``, its input at ``point``)."""
        if isinstance(spec, HookPoint):
            return spec
        if not isinstance(spec, str):
            raise SelectionError(f"a hook point is a string like 'mlp.act' or 'mlp.act:input', not {spec!r}")
        name, _, side = spec.partition(":")
        side, at, anchor = (side or "output").partition("@")
        if side not in SIDES:
            raise SelectionError(f"hook point '{spec}': side must be one of {SIDES}, not '{side}'")
        if not at:
            return cls(name, side)
        if side != "variance":
            raise SelectionError(f"hook point '{spec}': only a variance point ('ln:variance@point') names a point "
                                 f"after '@'")
        where = cls.parse(anchor)
        if where.side == "variance":
            raise SelectionError(f"hook point '{spec}': the point after '@' is a module's input or output")
        return cls(name, side, None if where == cls(name, "input") else str(where))

    def __str__(self) -> str:
        if self.side == "variance":
            return f"{self.module}:variance" + (f"@{self.anchor}" if self.anchor else "")
        return self.module if self.side == "output" else f"{self.module}:input"


def resolve_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (``""`` is the model), or a clear error with near names."""
    modules = dict(model.named_modules())
    if name not in modules:
        near = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.4)
        hint = f"; did you mean {near}?" if near else f"; modules are: {[n for n in modules if n][:12]}"
        raise SelectionError(f"no module named '{name}' in {type(model).__name__}{hint}")
    return modules[name]


def first_tensor(value: Any, point: str | HookPoint = "") -> Tensor:
    """The tensor a hook point names in a module's output or argument tuple (its first element)."""
    t = value[0] if isinstance(value, (tuple, list)) and value else value
    if not isinstance(t, Tensor):
        raise SelectionError(f"the activation at '{point}' is a {type(t).__name__}, not a tensor")
    return t


def replace_first(value: Any, new: Tensor) -> Any:
    """``value`` (a module's output or argument tuple) with its first tensor replaced by ``new``."""
    if isinstance(value, tuple):
        return (new, *value[1:])
    if isinstance(value, list):
        return [new, *value[1:]]
    return new


def _pairs(spec: Mapping[Any, Any] | Sequence[tuple[Any, Any]] | None) -> list[tuple[Any, Any]]:
    if spec is None:
        return []
    return list(spec.items()) if isinstance(spec, Mapping) else [tuple(p) for p in spec]


def _as_edit(point: str, value: Edit | Tensor, check_shapes: bool) -> Edit:
    """``value`` as a transform ``f -> f'``, shape-checked when ``check_shapes``."""
    if isinstance(value, Tensor):
        fixed = value

        def fn(f: Tensor) -> Tensor:
            return fixed
    elif callable(value):
        fn = value
    else:
        raise TypeError(f"the edit at '{point}' must be a tensor or a callable f -> f', not {type(value).__name__}")
    if not check_shapes:
        return fn

    def checked(f: Tensor) -> Tensor:
        out = fn(f)
        if not isinstance(out, Tensor) or out.shape != f.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ShapeError(f"replacement at '{point}' returned {got}, expected shape {tuple(f.shape)}")
        return out

    return checked


def _variance(f: Tensor) -> Tensor:
    """rib's ``variance``: ``mean_i (f_i - mean f)^2`` over the last axis, kept as an axis of size 1."""
    return (f - f.mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True)


class _NormSplit:
    """The variance point of one ``nn.LayerNorm``: every edit registered at it, in order.

    One hook at the anchor computes ``[v; f]``, applies the edits and writes ``f'`` back; one forward
    hook on the LayerNorm (run before any other of its forward hooks) then normalises its input
    with ``v'``. Both are removed with the last edit."""

    def __init__(self, model: nn.Module, hp: HookPoint, norm: nn.LayerNorm) -> None:
        self.point, self.norm = hp, norm
        self.edits: list[tuple[object, Edit]] = []
        self.passed: tuple[Tensor, Tensor | None] | None = None  # (f', v') from the anchor to the norm
        self.handles = [_register_point(model, hp.anchor or f"{hp.module}:input", self._at_anchor),
                        norm.register_forward_hook(self._normalise, prepend=True)]

    def _at_anchor(self, f: Tensor) -> Tensor:
        self.passed = None
        d = self.norm.normalized_shape[0]
        if f.dim() == 0 or f.shape[-1] != d:
            raise ShapeError(f"the activation read for '{self.point}' has shape {tuple(f.shape)}; the LayerNorm "
                             f"normalises a last axis of {d}")
        a0 = torch.cat([_variance(f), f], dim=-1)
        a = a0
        for _key, fn in list(self.edits):
            a = fn(a)
        # read only (``a`` unchanged): the LayerNorm computes as it would (``v`` None)
        self.passed = (f, None) if a is a0 else (a[..., 1:], a[..., :1])
        return self.passed[0]

    def _normalise(self, _m: nn.Module, args: tuple, out: Any) -> Any:
        passed, self.passed = self.passed, None
        if passed is None or not args or args[0] is not passed[0]:
            where = self.point.anchor or f"{self.point.module}:input"
            raise SelectionError(f"at variance point '{self.point}' the LayerNorm '{self.point.module}' ran on an "
                                 f"input other than the activation written at '{where}' (not reached first in "
                                 f"this forward pass, edited after it, or the LayerNorm's input is not that "
                                 f"tensor): name the point that produces its input after '@'")
        f, v = passed
        if v is None:
            return None
        y = (f - f.mean(-1, keepdim=True)) / torch.sqrt(v.clamp_min(0) + self.norm.eps)
        if self.norm.weight is not None:
            y = y * self.norm.weight
        if self.norm.bias is not None:
            y = y + self.norm.bias
        return y

    def add(self, fn: Edit) -> Any:
        key = object()
        self.edits.append((key, fn))
        split = self

        class Handle:
            def remove(self) -> None:
                split.edits[:] = [(k, g) for k, g in split.edits if k is not key]
                if not split.edits:
                    for h in reversed(split.handles):
                        h.remove()
                    _SPLITS.pop(split.norm, None)

        return Handle()


_SPLITS: WeakKeyDictionary[nn.Module, _NormSplit] = WeakKeyDictionary()


def _register_variance(model: nn.Module, hp: HookPoint, fn: Edit) -> Any:
    """Register ``[v; f] -> fn([v; f])`` at a variance point (module docstring); returns the handle."""
    norm = resolve_module(model, hp.module)
    if not isinstance(norm, nn.LayerNorm) or len(norm.normalized_shape) != 1:
        what = (f"an nn.LayerNorm over {len(norm.normalized_shape)} axes" if isinstance(norm, nn.LayerNorm)
                else f"a {type(norm).__name__}")
        raise SelectionError(f"variance point '{hp}': '{hp.module}' is {what}; a variance point needs an "
                             f"nn.LayerNorm normalising the last axis")
    split = _SPLITS.get(norm)
    if split is None:
        split = _SPLITS[norm] = _NormSplit(model, hp, norm)
    elif split.point != hp:
        raise SelectionError(f"variance point '{hp}': LayerNorm '{hp.module}' is already split at "
                             f"'{split.point}' in this block; use one anchor per LayerNorm")
    return split.add(fn)


def _register_point(model: nn.Module, point: str | HookPoint, fn: Edit) -> Any:
    """Register ``f -> fn(f)`` at one hook point; returns the handle."""
    hp = HookPoint.parse(point)
    if hp.side == "variance":
        return _register_variance(model, hp, fn)
    module = resolve_module(model, hp.module)
    if hp.side == "output":

        def hook(_m: nn.Module, _a: Any, out: Any) -> Any:
            return replace_first(out, fn(first_tensor(out, hp)))

        return module.register_forward_hook(hook)

    def prehook(_m: nn.Module, args: tuple) -> Any:
        return (fn(first_tensor(args, hp)), *args[1:])

    return module.register_forward_pre_hook(prehook)


def _slots(model: nn.Module, name: str, tie_weights: bool) -> list[tuple[nn.Module, str, str]]:
    """Every ``(module, attribute, store)`` slot that holds the tensor called ``name``.

    ``store`` is ``"_parameters"`` or ``"_buffers"``; a weight already replaced by an enclosing edit
    or ``functional_call`` is in the same slot, so edits nest."""
    owner_name, _, attr = name.rpartition(".")
    owner = resolve_module(model, owner_name)
    if attr in owner._parameters and owner._parameters[attr] is not None:
        store = "_parameters"
    elif attr in owner._buffers and owner._buffers[attr] is not None:
        store = "_buffers"
    else:
        known = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
        near = difflib.get_close_matches(name, known, n=5, cutoff=0.4)
        raise SelectionError(f"no parameter or buffer named '{name}' in {type(model).__name__}"
                             + (f"; did you mean {near}?" if near else f"; some are: {known[:8]}"))
    slots = {(id(owner), attr): (owner, attr, store)}
    if tie_weights:
        target = getattr(owner, store)[attr]
        for mod in model.modules():
            for kind in ("_parameters", "_buffers"):
                for a, t in getattr(mod, kind).items():
                    if t is target:
                        slots.setdefault((id(mod), a), (mod, a, kind))
    return list(slots.values())


@contextmanager
def _swapped(model: nn.Module, weights: Sequence[tuple[str, Tensor | Edit]], check_shapes: bool,
             tie_weights: bool) -> Iterator[None]:
    """Put new tensors in weight slots for the block; restore the old ones on exit."""
    saved: list[tuple[nn.Module, str, str, Any]] = []
    try:
        for name, value in weights:
            slots = _slots(model, str(name), tie_weights)
            mod, attr, store = slots[0]
            old = getattr(mod, store)[attr]
            new = value if isinstance(value, Tensor) else value(old)
            if not isinstance(new, Tensor):
                raise TypeError(f"the weight edit of '{name}' gave a {type(new).__name__}, not a tensor")
            if check_shapes and new.shape != old.shape:
                raise ShapeError(
                    f"the weight edit of '{name}' has shape {tuple(new.shape)}, expected {tuple(old.shape)}"
                )
            for mod, attr, store in slots:
                table = getattr(mod, store)
                saved.append((mod, attr, store, table[attr]))
                table[attr] = new  # what functional_call does: no Parameter type check on the slot
        yield
    finally:
        for mod, attr, store, old in reversed(saved):
            getattr(mod, store)[attr] = old


@contextmanager
def edit(
    model: nn.Module,
    points: Mapping[str | HookPoint, Edit | Tensor] | Sequence[tuple[str | HookPoint, Edit | Tensor]] | None = None,
    *,
    weights: Mapping[str, Edit | Tensor] | Sequence[tuple[str, Edit | Tensor]] | None = None,
    modules: Mapping[str, ModuleHook] | Sequence[tuple[str, ModuleHook]] | None = None,
    check_shapes: bool = True,
    tie_weights: bool = True,
) -> Iterator[nn.Module]:
    """Edit what ``model`` computes for the duration of a ``with`` block (in place, nothing copied).

    Args:
        model: The network.
        points: Hook point -> transform ``f -> fn(f)`` or a replacement tensor, as a mapping or a
            sequence of pairs (the same point may appear twice; edits apply in the order given).
        weights: Parameter or buffer name (``"fc.weight"``) -> transform ``W -> fn(W)`` (evaluated
            once on entry, differentiable) or a replacement tensor.
        modules: Module name -> raw forward hook ``(module, args, kwargs, output) -> output | None``,
            for edits that need the module's whole call.
        check_shapes: Refuse (:class:`ShapeError`) a replacement whose shape differs from the
            original's.
        tie_weights: Edit every slot that holds the same parameter object (tied weights), as
            :func:`torch.func.functional_call` does by default.

    Yields:
        The model, edited.

    Raises:
        SelectionError: a hook point, module or weight does not exist (names near it suggested).
        ShapeError: a replacement of the wrong shape (at the first forward pass for activations).
    """
    pairs = [(str(HookPoint.parse(p)), v) for p, v in _pairs(points)]
    raw = [(str(n), h) for n, h in _pairs(modules)]
    handles: list[Any] = []
    with ExitStack() as stack:
        stack.callback(lambda: [h.remove() for h in reversed(handles)])
        for point, value in pairs:
            handles.append(_register_point(model, point, _as_edit(point, value, check_shapes)))
        for name, hook in raw:
            handles.append(resolve_module(model, name).register_forward_hook(hook, with_kwargs=True))
        stack.enter_context(_swapped(model, [(str(n), v) for n, v in _pairs(weights)], check_shapes, tie_weights))
        yield model


@contextmanager
def observe(model: nn.Module, points: Mapping[str | HookPoint, Callable[[Tensor], Any]]
            | Sequence[tuple[str | HookPoint, Callable[[Tensor], Any]]]) -> Iterator[nn.Module]:
    """Call ``fn(f)`` on the activation ``f`` at each hook point in every forward pass of the block
    (the activation itself is left unchanged; ``fn``'s return value is ignored)."""

    def passthrough(fn: Callable[[Tensor], Any]) -> Edit:
        def through(f: Tensor) -> Tensor:
            fn(f)
            return f

        return through

    with edit(model, [(p, passthrough(fn)) for p, fn in _pairs(points)], check_shapes=False):
        yield model


@contextmanager
def record(model: nn.Module, points: Iterable[str | HookPoint], *, detach: bool = False) -> Iterator[dict[str, Tensor]]:
    """Record the activations at ``points`` in the forward passes of the block.

    Yields:
        A dict, filled as the model runs: point (as ``str(HookPoint)``) -> the activation of the
        latest pass reaching it (``detach``: cut from the autograd graph).
    """
    store: dict[str, Tensor] = {}

    def keep(key: str) -> Callable[[Tensor], None]:
        def put(f: Tensor) -> None:
            store[key] = f.detach() if detach else f

        return put

    keys = [str(HookPoint.parse(p)) for p in points]
    with observe(model, [(k, keep(k)) for k in dict.fromkeys(keys)]):
        yield store


def run(
    model: nn.Module,
    inputs: Any,
    read: Iterable[str | HookPoint] = (),
    write: Mapping[str | HookPoint, Edit | Tensor] | None = None,
) -> tuple[Any, dict[str, Tensor]]:
    """One forward pass ``model(inputs)`` reading activations at ``read`` and replacing those in
    ``write`` (a tensor, or a transform of the original).

    Returns:
        ``(output, {point: activation})``: each read point's activation (after its write, if any).

    Raises:
        SelectionError: a read or written point is not reached by the forward pass.
    """
    read_keys = [str(HookPoint.parse(p)) for p in read]
    write_pairs = [(str(HookPoint.parse(k)), v) for k, v in (write or {}).items()]
    reached: set[str] = set()

    def mark(key: str) -> Callable[[Tensor], None]:
        return lambda _f: reached.add(key)

    with edit(model, write_pairs), observe(model, [(k, mark(k)) for k, _ in write_pairs]), \
            record(model, read_keys) as acts:
        out = call(model, inputs)
    missing = [k for k in dict.fromkeys(read_keys + [k for k, _ in write_pairs]) if k not in acts and k not in reached]
    if missing:
        raise SelectionError(f"hook points {missing} were not reached in the forward pass")
    return out, {k: acts[k] for k in dict.fromkeys(read_keys)}


def forward_order(model: nn.Module, points: Sequence[str | HookPoint], inputs: Any) -> list[int]:
    """Indices of ``points`` in the order a forward pass on ``inputs`` first reaches them
    (a module's input is reached just before its output).

    Raises:
        SelectionError: a point is never reached.
    """
    keys = [str(HookPoint.parse(p)) for p in points]
    first: dict[int, int] = {}

    def stamp(i: int) -> Callable[[Tensor], None]:
        return lambda _f: first.setdefault(i, len(first))

    with observe(model, [(k, stamp(i)) for i, k in enumerate(keys)]), torch.no_grad():
        call(model, inputs)
    missing = [keys[i] for i in range(len(keys)) if i not in first]
    if missing:
        raise SelectionError(f"hook points {missing} are never reached in the forward pass")
    return sorted(range(len(keys)), key=lambda i: first[i])
