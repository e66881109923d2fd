"""The map from one hook point to the next, with the bias folded in as a constant input.

For hook points ``l`` (source) and ``l+1`` (target) the *section* ``F_x: f^l -> f^{l+1}`` is the
network between them on input ``x`` (everything not downstream of ``l`` held at its value on
``x``). LIB as rib runs it (Bushnaq et al. 2024, arXiv 2405.10928, sec. 2; rib's folded biases,
``MLP.fold_bias`` / ``has_folded_bias``) extends each position's activation by a constant
``s``, ``a = [f; s]`` with ``s = 1`` on the data, multiplies every bias inside the section by the
``s`` of the position it is added at, and passes the constant on to the next layer:

    F~_x([f; s]) = [F_{x,s}(f); s],        F_{x,1} = F_x.

So the whole section is a function of ``a`` alone, scaling ``a -> alpha a`` scales the biases
too (the path of rib's integrated gradients, whose baseline is the all-zero input), and
``d F~ / d s`` at ``s = 1`` is the derivative along the biases.

**Which biases.** The direct ``bias`` parameters of the modules whose forward pass ends after the
source activation is produced and no later than the target (their call order in one forward
pass), for the module types whose bias is added to the output (``Linear``, ``Conv1d/2d/3d``,
``LayerNorm``, ``GroupNorm``, ``BatchNorm``, Hugging Face's ``Conv1D``): at an output position ``p`` (every axis but the
batch axis and the module's channel axis) the bias is scaled by ``s_p``, ``p`` counted like the
source's positions. A module or target with one position (the sequence cut to its last token, as
rib's ``last_pos_module_type`` does, or a flatten/pool to one position) takes the constant of the
source's *last* position: rib keeps the constant as a feature channel, so cutting to the last
position keeps that position's ``s`` (rib has no flatten or pooling; for those this is a convention).
**Attention output** (rib's ``fold_attn_V`` / ``fold_attn_O``):
rib carries ``s`` through the values as an extra channel and splits ``b_O`` over the ``H`` heads, so
the output bias at query position ``t`` is scaled by the attention-weighted constant
``s~_t = 1/H sum_h sum_k A_{htk} s_k``, not by ``s_t``; this is done for the output projection
``<attn>.out`` of any module ``<attn>`` with a ``pattern`` submodule that returns the probabilities
``A`` ``(B, H, T_q, T_k)`` (wdecomp's :class:`~wdecomp.models.transformer.Attention`). The two
rules agree at ``s = 1`` (the network is unchanged) and differ in ``d F~ / d s``, hence in the
constant node's ``Lambda``.
Any other parameter named ``*bias`` inside the section (e.g. ``nn.MultiheadAttention``'s
``in_proj_bias``) cannot be scaled per position and is refused (build without a constant node).
This is rib's folding exactly for linear maps, ReLU/identity activations (``relu(s) = s``) and
attention with a ``pattern`` submodule (``tests/bases/test_bases_lib_modular.py``); rib passes
the constant of a GELU MLP through the GELU (``fold_mlp_in``'s
``root_one``), which this does not do. Additive parameters not named bias (positional embeddings)
are not scaled.

**Feature axis.** A hook point's activation ``(B, *rest)`` has one feature axis (``feature_dim``);
every other axis is a position (token, pixel), as rib treats sequence positions. Default: axis 1
for a convolution, batch-norm or pooling module and for 4-D/5-D activations (channels first, the
PyTorch image convention), otherwise the last axis.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import jacfwd, jacrev, jvp, vjp, vmap

from wdecomp import hooks
from wdecomp.bases.base import LayerBasis
from wdecomp.batch import add_example_axis, slice_examples
from wdecomp.errors import DenseTooLargeError, SelectionError, ShapeError

__all__ = ["RULES", "Section", "TargetCoordinates", "available_memory", "batched_jacobians", "build_section",
           "feature_axis", "position_jacobians", "position_pattern", "summed_jacobians",
           "from_rows", "memory_guard", "plan_chunk", "quadrature", "section_biases", "to_rows"]

_CHANNELS_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.modules.pooling._MaxPoolNd,
                   nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd, nn.GroupNorm,
                   nn.modules.instancenorm._InstanceNorm)
_BIAS_LAST = (nn.Linear, nn.LayerNorm)


def _bias_last(module: nn.Module) -> bool:
    """Whether ``module`` adds its bias along the output's last axis: ``nn.Linear``, ``nn.LayerNorm``,
    and Hugging Face's ``Conv1D`` (GPT-2's linear layer, ``x @ W + b`` with ``b`` of size ``nf``),
    recognised by its name and ``nf`` attribute since transformers is an optional dependency."""
    if isinstance(module, _BIAS_LAST):
        return True
    bias = getattr(module, "bias", None)
    return (type(module).__name__ == "Conv1D" and isinstance(bias, torch.Tensor)
            and bias.shape == (getattr(module, "nf", -1),))
_BIAS_CHANNEL = (nn.modules.conv._ConvNd, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def feature_axis(model: nn.Module, point: str, ndim: int, feature_dim: int | None = None) -> int:
    """The feature axis (``>= 1``) of the activation at ``point`` with ``ndim`` axes (batch first).

    Args:
        model: The network.
        point: The hook point.
        ndim: Number of axes of the activation, batch axis included.
        feature_dim: Explicit axis (negative counts from the end), or ``None`` for the default
            (module docstring).
    """
    if ndim < 2:
        return 1 if ndim == 1 else 0
    if feature_dim is not None:
        axis = feature_dim % ndim
        if axis == 0:
            raise ShapeError(f"feature_dim={feature_dim} at '{point}' is the batch axis; name the feature axis")
        return axis
    module = hooks.resolve_module(model, hooks.HookPoint.parse(point).module)
    if isinstance(module, _CHANNELS_FIRST) or ndim >= 4:
        return 1
    return ndim - 1


def to_rows(a: Tensor, axis: int) -> Tensor:
    """``(B, ...)`` with features on ``axis`` -> ``(B, P, d)`` (positions in row-major order)."""
    if a.dim() == 1:
        return a.reshape(-1, 1, 1)
    return a.movedim(axis, -1).reshape(a.shape[0], -1, a.shape[axis])


def from_rows(r: Tensor, shape: Sequence[int], axis: int) -> Tensor:
    """Inverse of :func:`to_rows`: ``(B, P, d)`` -> ``shape`` (batch first, features on ``axis``)."""
    shape = list(shape)
    if len(shape) == 1:
        return r.reshape(shape)
    moved = shape[:axis] + shape[axis + 1:] + [shape[axis]]
    return r.reshape(moved).movedim(-1, axis)


def _position_scale(s: Tensor, n: int, where: str) -> Tensor:
    """The constant for ``n`` positions from the source's ``(P_s,)`` constants (one position: the last's)."""
    if n == s.shape[-1]:
        return s
    if n == 1:
        return s[..., -1:]
    raise ShapeError(f"{where} has {n} positions and the source {s.shape[-1]}: cannot tell which position's "
                     f"constant scales it; build the basis without a constant node (constant=False)")


def section_biases(model: nn.Module, source: str, target: str, inputs: Any) -> list[str]:
    """Names of the modules whose biases scale with the constant between ``source`` and ``target``.

    Found from the call order in one forward pass on ``inputs`` (module docstring).

    Raises:
        SelectionError: A module in the section holds a bias that cannot be folded.
    """
    clock: list[str] = []
    stamps: dict[str, int] = {}

    def stamp_module(name: str) -> Any:
        def hook(_m: nn.Module, _a: tuple, _k: dict, _out: Any) -> None:
            stamps.setdefault(name, len(clock))
            clock.append(name)

        return hook

    def stamp_point(key: str) -> Any:
        def put(_f: Tensor) -> None:
            stamps.setdefault(f"@{key}", len(clock))
            clock.append(f"@{key}")

        return put

    named = [(n, m) for n, m in model.named_modules() if n]
    # module stamps first: on one module, its own stamp precedes a point's (so a target's module is
    # inside the section and a source's module is not)
    with hooks.edit(model, modules={n: stamp_module(n) for n, _ in named}), \
            hooks.observe(model, {source: stamp_point(source), target: stamp_point(target)}), torch.no_grad():
        hooks.call(model, inputs)
    t_s, t_t = stamps.get(f"@{source}"), stamps.get(f"@{target}")
    if t_s is None or t_t is None:
        raise SelectionError(f"hook points '{source}' and '{target}' are not both reached in the forward pass")
    found = []
    for name, module in named:
        t = stamps.get(name)
        if t is None or not t_s < t <= t_t:
            continue
        own = [p for p, _ in module.named_parameters(recurse=False) if _is_bias_name(p)]
        if not own:
            continue
        if own == ["bias"] and (_bias_last(module) or isinstance(module, _BIAS_CHANNEL)):
            found.append(name)
        else:
            raise SelectionError(
                f"module '{name}' ({type(module).__name__}) between '{source}' and '{target}' holds {own}, which "
                f"cannot be scaled by a per-position constant; build the basis without a constant node "
                f"(constant=False) or choose hook points around it")
    return found


def jacobian_working_set(
    model: nn.Module, probe: Any, source: str, target: str,
    coordinates: Callable[[Tensor, Tensor], tuple[int, int]], steps: int = 1, mode: str = "auto",
) -> int:
    """Estimated bytes one example's Jacobians ``d a^target / d a^source`` need.

    ``coordinates(a_source, a_target)`` (one example's activations, from the same forward pass)
    gives the ``n_in`` source and ``n_out`` target coordinates over all positions. The estimate
    is the Jacobian and the products formed from it (``32 n_in n_out`` bytes, twice for a
    quadrature) plus the tangents the Jacobian's pass carries (``n_in`` forward or ``n_out``
    reverse, as ``mode`` picks) on every floating output of a leaf module that runs after
    ``source`` and up to ``target`` (where a section's pass ends), counted twice for the
    temporaries inside modules (GELU, softmax). On the 2-layer width-64 Hugging Face GPT-2 of
    issue 19 (two hook points in block 0, 64 characters) this says 3.0 GB per example against
    3.1 GB measured (``benchmarks/bench_gpt2_graph_memory.py``)."""
    counted: list[int] = []
    started = [False]

    def count(_m: nn.Module, _a: tuple, _k: dict, out: Any) -> None:
        if started[0]:
            outs = out if isinstance(out, (tuple, list)) else (out,)
            counted.append(sum(t.numel() for t in outs if isinstance(t, Tensor) and t.is_floating_point()))

    def start(_f: Tensor) -> None:
        started[0] = True

    def stop(_f: Tensor) -> None:
        started[0] = False

    leaves = {n: count for n, m in model.named_modules() if n and next(m.children(), None) is None}
    with hooks.edit(model, modules=leaves), hooks.observe(model, {source: start, target: stop}), torch.no_grad():
        acts = hooks.run(model, probe, read=[source, target])[1]
    a = acts[source]
    n = max(int(a.shape[0]), 1) if a.dim() > 0 else 1
    n_in, n_out = coordinates(a[0], acts[target][0])
    tangents = n_in if mode == "forward" or (mode == "auto" and n_in <= n_out) else n_out
    carried = 2 * a.element_size() * tangents * (sum(counted) // n)
    return int(32 * n_in * n_out * max(1, min(steps, 2)) + carried) + 1


def _is_bias_name(name: str) -> bool:
    """A bias by name: ``bias`` anywhere (torch, Hugging Face) or TransformerLens' ``b_*`` (``b_Q``,
    ``b_O``, ``b_in``, ``b_U``, ...), so a bias the constant cannot fold is refused, never skipped."""
    return "bias" in name or re.fullmatch(r"b_\w+", name) is not None


class _TargetReached(Exception):
    """Ends a section's forward pass at its target hook point (:meth:`Section.batched`)."""


def _stop(_f: Tensor) -> None:
    raise _TargetReached


@dataclass(frozen=True)
class Section:
    """The section ``a^l -> a^{l+1}`` for one example (module docstring), for ``torch.func``.

    Attributes:
        model: The network.
        source: Source hook point.
        target: Target hook point.
        source_shape: Per-example shape of the source activation (no batch axis).
        source_axis: Feature axis of the source activation (batch axis counted).
        target_axis: Feature axis of the target activation.
        biases: Module names whose biases scale with the constant (``()`` without a constant).
        constant: Whether the source carries a constant coordinate ``s``.
        mixed: ``(bias module, pattern module)`` of each attention output whose bias is scaled by the
            attention-weighted constant.
        hold_constant: Hold ``s`` fixed for ``torch.func`` transforms (detached): the derivatives
            along ``f`` are unchanged and the bias terms carry no tangents; ``d / d s`` comes out zero.
    """

    model: nn.Module
    source: str
    target: str
    source_shape: tuple[int, ...]
    source_axis: int
    target_axis: int
    biases: tuple[str, ...] = ()
    constant: bool = False
    mixed: tuple[tuple[str, str], ...] = ()
    hold_constant: bool = False

    def _bias_hook(self, s: Tensor, name: str, patterns: dict[str, Tensor]) -> Any:
        """Forward hook adding ``(s_p - 1) b`` at each output position ``p`` (``s``: ``(B, P_s)``); for an
        attention output, ``s`` mixed by the head-averaged pattern first (module docstring)."""
        pattern = dict(self.mixed).get(name)

        def hook(module: nn.Module, _a: tuple, _k: dict, out: Tensor) -> Tensor:
            s_ = s
            if pattern is not None:
                A = patterns[pattern]  # (B, H, T_q, T_k)
                s_ = torch.einsum("bhtk,bk->bt", A, s) / A.shape[1]
            return self._add_bias(module, name, s_, out)

        return hook

    def _pattern_hook(self, name: str, patterns: dict[str, Tensor]) -> Any:
        def hook(_m: nn.Module, _a: tuple, _k: dict, out: Tensor) -> None:
            patterns[name] = out

        return hook

    @staticmethod
    def _add_bias(module: nn.Module, name: str, s: Tensor, out: Tensor) -> Tensor:
        """``out + (s_p - 1) b`` at each output position ``p`` of ``module``."""
        channel = out.dim() - 1 if _bias_last(module) else 1
        shape = [1] * out.dim()
        shape[channel] = out.shape[channel]
        bias = module.bias.reshape(shape)
        positions = [out.shape[i] for i in range(1, out.dim()) if i != channel]
        n = 1
        for p in positions:
            n *= p
        sp = _position_scale(s, n, f"module '{name}'").reshape([out.shape[0], *positions])
        sp = sp.unsqueeze(channel) if out.dim() > 1 else sp.reshape(out.shape[0])
        return out + (sp - 1) * bias

    def batched(self, a: Tensor, x: Any) -> tuple[Tensor, Tensor | None]:
        """``(B, P_s, d_s [+ 1]) -> ((B, P_t, d_t), (B, P_t) or None)`` for a batch of inputs ``x``."""
        s = a[..., -1] if self.constant else None
        if s is not None and self.hold_constant:  # no tangent on s: its column comes out zero
            s = s.detach()
        f = a[..., :-1] if self.constant else a
        value = from_rows(f, (f.shape[0], *self.source_shape), self.source_axis)
        patterns: dict[str, Tensor] = {}
        modules = {n: self._bias_hook(s, n, patterns) for n in self.biases} if s is not None else {}
        if s is not None:
            modules.update({p: self._pattern_hook(p, patterns) for _, p in self.mixed})
        key = str(hooks.HookPoint.parse(self.target))
        # the forward pass ends at the target: nothing after it is computed (nor carries tangents)
        with hooks.edit(self.model, modules=modules), hooks.edit(self.model, {self.source: value}), \
                hooks.record(self.model, [key]) as acts, hooks.observe(self.model, {key: _stop}):
            try:
                hooks.call(self.model, x)
            except _TargetReached:
                pass
        if key not in acts:
            raise SelectionError(f"hook point '{self.target}' was not reached in the forward pass")
        rows = to_rows(acts[key], self.target_axis)
        s_t = None if s is None else _position_scale(s, rows.shape[1], f"target '{self.target}'")
        return rows, s_t

    def source_rows(self, basis: LayerBasis, c: Tensor) -> Tensor:
        """The input ``(..., P_s, d_s [+ 1])`` of the section at coordinates ``c`` of the source's
        ``basis``: ``f = basis.from_coordinates(c)``, with the constant ``s`` appended as the last
        column when ``constant``."""
        f = basis.from_coordinates(c)
        if self.constant:
            s = basis.scale_of(c)
            assert s is not None
            f = torch.cat([f, s], dim=-1)
        return f

    def __call__(self, a: Tensor, x: Any) -> tuple[Tensor, Tensor | None]:
        """One example: ``(P_s, d_s [+ 1]) -> ((P_t, d_t), (P_t,) or None)``; ``x`` without a batch axis
        (for :func:`torch.func.vmap`). The last column of ``a`` is ``s`` when ``constant``."""
        rows, s_t = self.batched(a.unsqueeze(0), add_example_axis(x))
        return rows[0], None if s_t is None else s_t[0]


def build_section(model: nn.Module, probe: Any, source: str, target: str, *, constant: bool,
                  feature_dims: dict[str, int | None] | None = None) -> Section:
    """The :class:`Section` from ``source`` to ``target``, shapes and biases read from ``probe`` (a batch
    of inputs; one example is enough). ``feature_dims``: hook point -> feature axis (default per
    :func:`feature_axis`)."""
    fd = feature_dims or {}
    acts = hooks.run(model, probe, read=[source, target])[1]
    a_s, a_t = acts[source], acts[target]
    ax_s = feature_axis(model, source, a_s.dim(), fd.get(source))
    ax_t = feature_axis(model, target, a_t.dim(), fd.get(target))
    biases = tuple(section_biases(model, source, target, probe)) if constant else ()
    return Section(model, source, target, tuple(a_s.shape[1:]), ax_s, ax_t, biases, constant,
                   _attention_outputs(model, biases))


def _attention_outputs(model: nn.Module, biases: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``(bias module, pattern module)`` for each ``<attn>.out`` among ``biases`` whose parent has a
    ``pattern`` submodule (module docstring: rib's attention folding)."""
    modules = dict(model.named_modules())
    found = []
    for name in biases:
        parent, _, leaf = name.rpartition(".")
        if leaf == "out" and parent and isinstance(getattr(modules.get(parent), "pattern", None), nn.Module):
            found.append((name, f"{parent}.pattern"))
    return tuple(found)


# ----------------------------------------------------------------------------- Jacobians
@dataclass(frozen=True)
class TargetCoordinates:
    """Coordinates of the target layer from its rows ``(..., P_t, d_t)`` and constant ``(..., P_t)``: linear
    in ``[f; s]`` for a folded basis (a constant node, or ``c = C f + b s`` in the general form),
    ``basis.to_coordinates`` otherwise, the rows themselves without a basis."""

    basis: LayerBasis | None

    def __call__(self, rows: Tensor, s: Tensor | None) -> Tensor:
        lb = self.basis
        if lb is None:
            return rows
        if lb.const_column is not None:
            s = torch.ones_like(rows[..., :1]) if s is None else s.unsqueeze(-1)
            return rows @ lb.transform.T.to(rows.dtype) + s * lb.const_column.to(rows.dtype)
        if lb.constant is None:
            return lb.to_coordinates(rows)
        s = torch.ones_like(rows[..., :1]) if s is None else s.unsqueeze(-1)
        mu = lb.center.to(rows.dtype) if lb.center is not None else 0.0
        c = (rows - mu * s) @ lb.transform.T.to(rows.dtype)
        return torch.cat([c[..., :1] + lb.constant * s, c[..., 1:]], dim=-1)


def _jac(fn: Any, n_in: int, n_out: int, mode: str) -> Any:
    if mode not in ("auto", "forward", "reverse"):
        raise ValueError(f"mode must be 'auto', 'forward' or 'reverse', not '{mode}'")
    forward = mode == "forward" or (mode == "auto" and n_in <= n_out)
    return jacfwd(fn, argnums=0) if forward else jacrev(fn, argnums=0)


def batched_jacobians(fn: Any, points: Tensor, x: Any, alphas: Tensor, mode: str = "auto") -> Iterator[Tensor]:
    """``J(alpha a)`` for each ``alpha``: ``fn(a, x)`` maps one example's ``(P_s, D)`` rows to ``(P_t, k)``
    (``x``: that example's inputs); forward mode when ``P_s D <= P_t k`` under ``mode="auto"``.

    Yields:
        ``(B, P_t, k, P_s, D)`` per ``alpha``, batched over the examples of ``points``/``x``.
    """
    jac = _jac(fn, points[0].numel(), _first_output(fn, points, x).numel(), mode)
    for alpha in alphas.tolist():
        with torch.no_grad():
            yield vmap(jac)(alpha * points, x)


def summed_jacobians(fn: Any, points: Tensor, x: Any, alphas: Tensor, mode: str = "auto",
                     held: Any = None) -> Iterator[Tensor]:
    """``sum_p J_tp(alpha a)`` for each ``alpha``, as ``(B, P_t, k, 1, D)``: the Jacobian along one
    direction added at every source position (``d`` tangents, where :func:`batched_jacobians` needs
    ``P_s d`` and sums afterwards; equal by linearity).

    ``held``: ``fn`` with the last input column (the constant ``s``) held fixed
    (:attr:`Section.hold_constant`); in forward mode the other columns come from it (no tangents on
    the bias terms) and the last from one more tangent of ``fn``.

    Yields:
        ``(B, P_t, k, 1, D)`` per ``alpha``.
    """

    n_s, d = points.shape[1:]
    if held is not None and not _forward(d, _first_output(fn, points, x).numel(), mode):
        held = None

    def shifted(v: Tensor, xa: tuple[Any, Tensor], fn: Any = fn if held is None else held) -> Tensor:
        xi, ai = xa
        return fn(ai + v, xi)

    zero = points.new_zeros(points.shape[0], 1, d)
    for alpha in alphas.tolist():
        a = alpha * points
        J = next(batched_jacobians(shifted, zero, (x, a), torch.ones(1), mode))
        if held is not None:  # the constant's column: one tangent, s moved at every position
            E = torch.zeros(1, n_s, d, dtype=a.dtype, device=a.device)
            E[..., -1] = 1
            J[..., 0, -1] = _tangent_images(fn, a, x, E)[:, 0]
        yield J


def _first_output(fn: Any, points: Tensor, x: Any) -> Tensor:
    """``fn`` on the first example of ``points`` / ``x`` (shapes for planning the Jacobian)."""
    with torch.no_grad():
        return vmap(fn)(points[:1], slice_examples(x, 0, 1))[0]


def _constant_tangents(n_s: int, d: int, like: Tensor) -> Tensor:
    """``(n_s, n_s, d)``: tangent ``p`` moves the constant (last input column) at source position ``p`` alone."""
    V = torch.zeros(n_s, n_s, d, dtype=like.dtype, device=like.device)
    V[torch.arange(n_s), torch.arange(n_s), -1] = 1
    return V


def _group_indicator(groups: list[list[int]], n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(len(groups), n)``: row ``c`` is 1 at the positions of group ``c``."""
    E = torch.zeros(len(groups), n, dtype=dtype, device=device)
    for c, g in enumerate(groups):
        E[c, g] = 1
    return E


def _forward(n_in: int, n_out: int, mode: str) -> bool:
    return mode == "forward" or (mode == "auto" and n_in <= n_out)


def _tangent_images(fn: Any, points: Tensor, x: Any, V: Tensor) -> Tensor:
    """``(B, m, *out)``: ``J(a) V_i`` for each tangent ``V_i`` of ``V`` ``(m, P_s, D)``, per example."""

    def images(ai: Tensor, xi: Any) -> Tensor:
        return vmap(lambda v: jvp(lambda a_: fn(a_, xi), (ai,), (v,))[1])(V)

    with torch.no_grad():
        return vmap(images)(points, x)


def position_pattern(fn: Any, points: Tensor, x: Any, seed: int = 0) -> Tensor:
    """``(P_t, P_s)`` bool: whether the block ``J_tp = d fn_t / d a_p`` is nonzero for any example.

    One VJP per target position ``t`` with a Gaussian cotangent on ``t`` alone (``P_t`` VJPs, against
    ``P_t k`` for the whole Jacobian): row ``p`` of the result is ``J_tp^T u_t``, nonzero with
    probability one exactly when ``J_tp`` is (a fixed nonzero matrix maps a Gaussian vector to zero
    with probability zero). Zeros come from the structure (a causal mask, a position-wise map) or
    from the data (a ReLU off at every path); either way they are the example's own.
    """
    out = _first_output(fn, points, x)  # (P_t, k)
    n_t = out.shape[0]
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    U = (torch.eye(n_t, dtype=torch.float64)[:, :, None] * r[None]).to(out.dtype).to(out.device)

    def rows(a: Tensor, xi: Any) -> Tensor:
        _, pull = vjp(lambda a_: fn(a_, xi), a)
        return vmap(pull)(U)[0]  # (P_t, P_s, D)

    with torch.no_grad():
        G = vmap(rows)(points, x)
    return (G != 0).any(-1).any(0)


def _greedy_groups(conflict: Tensor) -> list[list[int]]:
    """Greedy colouring: positions in forward order, each joins the first group it conflicts with
    nowhere (``conflict``: ``(n, n)`` bool, symmetric)."""
    groups: list[list[int]] = []
    masks: list[Tensor] = []
    for i in range(conflict.shape[0]):
        for g, m in zip(groups, masks):
            if not bool((conflict[i] & m).any()):
                g.append(i)
                m[i] = True
                break
        else:
            groups.append([i])
            m = torch.zeros(conflict.shape[0], dtype=torch.bool)
            m[i] = True
            masks.append(m)
    return groups


def _group_basis(groups: list[list[int]], n: int, d: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(len(groups) d, n, d)``: for group ``c`` and direction ``j``, ``e_j`` at every position of ``c``."""
    E = _group_indicator(groups, n, dtype, device)
    return torch.einsum("cp,jd->cjpd", E, torch.eye(d, dtype=dtype, device=device)).reshape(-1, n, d)


def position_jacobians(fn: Any, points: Tensor, x: Any, alphas: Tensor, mode: str = "auto",
                       held: Any = None) -> Iterator[Tensor]:
    """Blocks of ``J(alpha a)`` whose ``J^T J`` summed over all rows is ``sum_t sum_p J_tp^T J_tp``,
    with fewer tangents where positions do not interact.

    From the chunk's :func:`position_pattern` (nonzero blocks ``J_tp`` over its examples and every
    ``alpha``, so the blocks of the ``alpha`` line up for an integrated Jacobian), source
    positions that share no target position are grouped (greedy colouring), and one tangent per
    group and direction, ``e_j`` at every position of the group, gives ``sum_{p in c} J_tp e_j``
    ``= J_{t p_c(t)} e_j``: the one nonzero block of the group at each ``t``. So every nonzero block
    appears exactly once and ``sum_t sum_c J_{tc}^T J_{tc}`` is the exact ``M'``. Reverse mode
    groups target positions the same way. A position-wise section (a LayerNorm, an MLP) needs ``d``
    tangents instead of ``P d``; a causal attention layer cannot be grouped (every source position
    reaches the last target) and takes :func:`batched_jacobians`' path, the probe adding ``P_t``
    VJPs to its ``P_t k`` (or ``P_s d``). ``held``: as for :func:`summed_jacobians`, in either mode: the
    feature columns from ``held`` (no tangents or cotangents through the bias terms), the constant's
    from ``P_s`` tangents of ``fn`` (one per source position, or per group in grouped forward mode).

    Yields:
        ``(B, X, k, Y, D)`` per ``alpha``: ``X = P_t``, ``Y`` groups of source positions (forward),
        or ``X`` groups of target positions, ``Y = P_s`` (reverse), or the full ``(B, P_t, k, P_s, D)``.
    """
    if mode not in ("auto", "forward", "reverse"):
        raise ValueError(f"mode must be 'auto', 'forward' or 'reverse', not '{mode}'")
    out = _first_output(fn, points, x)
    (n_t, k), (n_s, d) = out.shape, points.shape[1:]
    full_forward = mode == "forward" or (mode == "auto" and n_s * d <= n_t * k)
    full = n_s * d if full_forward else n_t * k
    grouping = n_s > 1 and n_t > 1 and 2 * (n_t + min(d, k)) <= full  # else too little to gain: no probe
    if grouping:  # one grouping for every alpha (the integrated Jacobian sums their blocks)
        Z = sum(position_pattern(fn, alpha * points, x).to(torch.float64) for alpha in alphas.tolist())
        by_source = _greedy_groups((Z.T @ Z) > 0)  # sources that share a target conflict
        by_target = _greedy_groups((Z @ Z.T) > 0)
        cost = {"forward": len(by_source) * d, "reverse": len(by_target) * k}
        use = mode if mode != "auto" else min(cost, key=cost.__getitem__)
        grouping = cost[use] < full
    for alpha in alphas.tolist():
        a = alpha * points
        if not grouping:
            J = next(batched_jacobians(fn if held is None else held, a, x, torch.ones(1), mode))
            if held is not None:  # the constant's column: one tangent per source position
                J = J.contiguous()  # (a zero column may come back expanded)
                J[..., -1] = _tangent_images(fn, a, x, _constant_tangents(n_s, d, a)).permute(0, 2, 3, 1)
            yield J
            continue
        if use == "forward":
            V = _group_basis(by_source, n_s, d, a.dtype, a.device)
            cols = _tangent_images(fn if held is None else held, a, x, V).reshape(a.shape[0], -1, d, n_t, k)
            if held is not None:  # the constant's column of each group from fn itself
                cols[:, :, -1] = _tangent_images(fn, a, x, V.reshape(-1, d, n_s, d)[:, -1])
            yield cols.permute(0, 3, 4, 1, 2)
            continue
        U = _group_basis(by_target, n_t, k, out.dtype, out.device)

        def grouped(ai: Tensor, xi: Any, U: Tensor = U) -> Tensor:
            _, pull = vjp(lambda a_: (fn if held is None else held)(a_, xi), ai)
            return vmap(pull)(U)[0].reshape(-1, k, n_s, d)  # (X, k, P_s, D)

        with torch.no_grad():
            J = vmap(grouped)(a, x)
        if held is not None:  # the constant's column, summed over each group of target positions
            J = J.contiguous()
            E = _group_indicator(by_target, n_t, a.dtype, a.device)
            J[..., -1] = torch.einsum("bptk,xt->bxkp", _tangent_images(fn, a, x, _constant_tangents(n_s, d, a)), E)
        yield J



# ----------------------------------------------------------------------------- quadrature
RULES = ("gradient", "gauss-legendre", "midpoint", "trapezoid", "trapezoidal")


def quadrature(steps: int, rule: str = "gauss-legendre") -> tuple[Tensor, Tensor]:
    """Nodes ``alpha_m`` and weights ``w_m`` of a rule for ``int_0^1 g(alpha) d alpha``, float64.

    Args:
        steps: Number of nodes (``>= 1``; ``>= 2`` for ``"trapezoid"``; ``1`` for ``"gradient"``).
        rule: ``"gradient"`` (one node at ``alpha = 1``, weight 1: plain gradients, rib's
            ``integration_method="gradient"``), ``"gauss-legendre"`` (roots of the Legendre
            polynomial mapped to ``[0, 1]``; rib's ``_gauss_legendre_weights`` with
            ``n_intervals = steps - 1``), ``"midpoint"`` (``(m + 1/2) / steps``),
            ``"trapezoid"`` (``m / (steps - 1)``, half weights at the ends) or ``"trapezoidal"``
            (rib's ``_trapezoidal_weights``: ``steps`` equally spaced nodes in
            ``[eps, 1 - eps]``, ``eps = 10^-3 / steps``, weights ``1 / (steps - 1)`` halved at the
            ends; ``steps = 1`` is the single node ``1/2``).

    Returns:
        ``(nodes, weights)``, each of shape ``(steps,)``; the weights sum to 1.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, not '{rule}'")
    least = {"trapezoid": 2}.get(rule, 1)
    if steps < least or (rule == "gradient" and steps != 1):
        raise ValueError(f"{rule} quadrature needs {'exactly 1' if rule == 'gradient' else f'at least {least}'} "
                         f"steps, got {steps}")
    if rule == "gradient":
        return torch.ones(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    if rule == "gauss-legendre":
        x, w = np.polynomial.legendre.leggauss(steps)
        return torch.as_tensor((x + 1) / 2), torch.as_tensor(w / 2)
    if rule == "midpoint":
        nodes = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
        return nodes, torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    if rule == "trapezoidal" and steps == 1:
        return torch.full((1,), 0.5, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    eps = 1e-3 / steps if rule == "trapezoidal" else 0.0
    nodes = torch.linspace(eps, 1 - eps, steps, dtype=torch.float64)
    w = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
    w[0] = w[-1] = 0.5 / (steps - 1)
    return nodes, w


# ----------------------------------------------------------------------------- memory
def _human(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def available_memory() -> int:
    """Bytes of memory available now (``os.sysconf``; 4 GiB where the platform does not say)."""
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def plan_chunk(per_example: int, chunk_size: int | None, max_memory: int | None, what: str,
               examples: int | None = None) -> int:
    """Examples per vectorised Jacobian call.

    ``chunk_size`` if given; else the most examples whose estimated working set,
    ``per_example`` bytes each, fits in ``max_memory`` (default: a quarter of the memory
    available now, at most 2 GiB, or one example when that alone is over it but within half the
    memory available), and at most ``examples`` (the batch size). An estimate is
    printed to stderr when one chunk needs over 1 GiB.

    Raises:
        ValueError: ``chunk_size < 1`` or ``max_memory <= 0``.
        DenseTooLargeError: one example alone exceeds ``max_memory``.
    """
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        size = chunk_size
    else:
        budget = min(available_memory() // 4, 2 << 30) if max_memory is None else int(max_memory)
        if budget <= 0:
            raise ValueError(f"max_memory must be > 0 bytes, got {max_memory}")
        if max_memory is None and budget < per_example <= available_memory() // 2:
            budget = per_example  # the default budget: one example at a time still fits in memory
        if per_example > budget:
            raise DenseTooLargeError(
                f"{what}: one example needs about {_human(per_example)} of Jacobians, over the memory budget of "
                f"{_human(budget)}; raise max_memory= (CLI --max-memory) or choose fewer/smaller hook points")
        size = max(1, min(4096, budget // max(per_example, 1)))
    if examples is not None:  # a batch never yields a larger chunk than itself
        size = max(1, min(size, examples))
    if size * per_example > 1 << 30:
        print(f"wdecomp: {what}: {size} examples per chunk, about {_human(size * per_example)} each "
              f"(set chunk_size= / max_memory= to change)", file=sys.stderr)
    return size


@contextmanager
def memory_guard(what: str, chunk: int) -> Iterator[None]:
    """Turn an allocation failure inside the block into a :class:`DenseTooLargeError` naming the knobs."""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        text = str(exc).lower()
        if isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text:
            raise DenseTooLargeError(
                f"{what} ran out of memory with {chunk} examples per chunk; pass a smaller chunk_size= or "
                f"max_memory= (CLI: --chunk-size / --max-memory)") from exc
        raise
