"""The ablation engine: remove components, splice in replacements, sweep, and score.

Every evaluated model (an ablation level, a splice, a baseline) is one forward pass per batch
with hooks; nothing is copied or rewritten in place. The work per study is

* one *reference pass* over the data: the original outputs (their log-probabilities and
  per-term losses, cached for the KL and the degradation report) and every statistic that mean
  ablation needs (data means of the hooked activations and of the owning modules' inputs, in
  float64) — computed once, shared by all levels;
* two *baseline passes* (zero- and mean-ablation of the whole hook);
* one pass per level.

Activation-space components are edited at their hook point, ``f -> f - C_S^+ (c_S - r_S)``;
weight-space components by a functional call with the group's parameters replaced by
``theta - V_S V_S^T (theta - theta_ref)`` (plus, for mean and resample ablation, a hook that puts
back the data-mean or resampled contribution; see :mod:`wdecomp.ablation.primitives`). An
ablation of nothing adds no hook and substitutes no weight, so it reproduces
:meth:`wdecomp.Objective.value` bit for bit.

**Distributed.** Given an ``Objective(model, shard, loss, distributed=True)`` as ``data``, every
rank runs the same passes on its own shard and every number is global, bitwise the same on every
rank, and equal (to float64 round-off) to one process on all the data: the activation means of
mean ablation (float64 sums and counts all-reduced), the loss, KL, accuracy, loss recovered and
compute-/parameter-equivalent of each level (the float64 summed loss, term count, summed KL and
correct count all-reduced, one collective per level), and the degradation list (the global top
``top_n``, example indices over the shards concatenated in rank order). Shards may be uneven.
Resample ablation draws the replacement from another example of the same batch, which lives on
the same rank: it stays rank-local (batch ``b`` of every rank uses the same seeded permutation
of its size), so its result depends on the sharding as it depends on the batching.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from wdecomp.ablation.metrics import Accumulator, equivalents, loss_recovered, reference_entry
from wdecomp.ablation.primitives import (
    METHODS,
    ActivationComponents,
    ComponentSet,
    WeightComponents,
    as_component_set,
)
from wdecomp.ablation.report import AblationResult, LevelMetrics
from wdecomp.errors import DataError, SelectionError, ShapeError
from wdecomp.hooks import Edit, HookPoint, call, edit, first_tensor, observe, replace_first
from wdecomp.objective import BatchLoss, LossSpec, Objective, OutputLoss
from wdecomp.progress import progress_bar


# ---------------------------------------------------------------------------- splices
class Splice:
    """A replacement registered at a hook: the activation ``f`` becomes ``replacement(f)``.

    Made by :func:`splice`; use it as a context manager or call :meth:`remove`.
    """

    def __init__(self, model: nn.Module, hook: str, replacement: Callable[[Tensor], Tensor]) -> None:
        self.model = model
        self.hook = str(HookPoint.parse(hook))
        self.replacement = replacement
        self._edit: Any = edit(model, {self.hook: replacement})
        self._edit.__enter__()

    def remove(self) -> None:
        """Unregister the replacement (idempotent)."""
        if self._edit is not None:
            self._edit.__exit__(None, None, None)
            self._edit = None

    def __enter__(self) -> nn.Module:
        return self.model

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def splice(model: nn.Module, hook: str, replacement: Callable[[Tensor], Tensor]) -> Splice:
    """Replace the activation at ``hook`` by ``replacement(activation)`` in every forward pass.

    Args:
        model: The network (hooked in place; nothing is copied).
        hook: A hook point: ``"mlp.act"`` (module output) or ``"mlp.act:input"`` (first input).
        replacement: Any callable ``(..., d) -> (..., d)`` of the same shape, e.g. a sparse
            autoencoder ``x -> dec(enc(x))`` or a low-rank projection.

    Returns:
        A :class:`Splice`: ``with splice(model, "mlp.act", sae): loss = ...``; or keep it and
        call ``.remove()``.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> x = torch.randn(4, 2)
        >>> with splice(model, "1", nn.Identity()):
        ...     y = model(x)
        >>> torch.equal(y, model(x))
        True
    """
    return Splice(model, hook, replacement)


# ---------------------------------------------------------------------------- plans
@dataclass
class _Context:
    """Per-batch state read by the edit closures."""

    perm: Tensor | None = None


@dataclass
class _Plan:
    label: str
    n_ablated: int | None
    ablated: tuple[int, ...] = ()
    local: list[Tensor] | None = None  # per-group local indices (ablation plans)
    baseline: str | None = None  # "zero" / "mean" for whole-hook baselines
    splices: Sequence[tuple[str, Callable[[Tensor], Tensor]]] = field(default_factory=tuple)


def _derangement(n: int, generator: torch.Generator) -> Tensor:
    """A random permutation without fixed points (``n >= 2``): ``x[perm]`` puts another
    example in each slot."""
    pi = torch.randperm(n, generator=generator)
    perm = torch.empty(n, dtype=torch.long)
    perm[pi] = pi.roll(-1)
    return perm


def _activation_edit(g: ActivationComponents, idx: Tensor, method: str, mean: Tensor | None,
                     ctx: _Context, dtype: torch.dtype, device: torch.device) -> Edit:
    """``f -> f - C_S^+ (C_S (f - mu) - r_S)``.

    For zero and mean ablation this is affine in ``f``: ``f (I - A) + b`` with
    ``A = C_S^T C_S^{+T}`` and ``b = mu A + r_S C_S^{+T}`` (row vectors), both formed once per
    level in the basis's precision. When ``2 k_S >= d`` the edit is one fused
    ``addmm`` with the ``(d, d)`` matrix; for fewer components the two thin products
    ``(f - mu) C_S^T`` and ``(.) C_S^{+T}`` are cheaper.
    """
    B = g.basis
    C64 = B.transform[idx]  # (k_S, d)
    Cp64 = B.inverse[:, idx]  # (d, k_S)
    mu64 = B.center
    if method == "zero":
        r64 = torch.zeros(len(idx), dtype=C64.dtype, device=C64.device) if mu64 is None else -(C64 @ mu64)
    elif method == "mean":
        assert mean is not None
        m = mean.to(dtype=C64.dtype, device=C64.device)
        r64 = C64 @ (m if mu64 is None else m - mu64)
    else:
        r64 = None
    d = B.dim

    def check(f: Tensor) -> None:
        if f.shape[-1] != d:
            raise ShapeError(f"activations at '{B.point}' have width {f.shape[-1]}, the basis expects {d}")

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
        if r is None:
            if ctx.perm is None:
                raise DataError("resample ablation needs batches of at least 2 examples")
            return f - (c - c[ctx.perm]) @ Cp.T
        return f - (c - r) @ Cp.T

    return fn


def _weight_hook(g: WeightComponents, method: str, mean_in: Tensor | None, ctx: _Context,
                 originals: Mapping[str, Tensor]) -> Any:
    """Forward hook on the owning module adding ``g(x~; theta) - g(x~; theta_S)``."""
    prefix = g.module + "." if g.module else ""
    local = {n[len(prefix):]: originals[n] for n in g.names}
    busy = [False]

    def hook(mod: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
        if busy[0]:
            return None
        x = first_tensor(args, f"{g.module}:input")
        if method == "mean":
            assert mean_in is not None
            xt = mean_in.to(dtype=x.dtype, device=x.device).expand_as(x)
        else:
            if ctx.perm is None:
                raise DataError("resample ablation needs batches of at least 2 examples")
            xt = x[ctx.perm]
        busy[0] = True
        try:
            full = functional_call(mod, local, (xt, *args[1:]), kwargs)
            cut = mod(xt, *args[1:], **kwargs)
        finally:
            busy[0] = False
        back = first_tensor(full, g.module) - first_tensor(cut, g.module)
        return replace_first(out, first_tensor(out, g.module) + back)

    return hook


class _Engine:
    def __init__(self, model: nn.Module, cset: ComponentSet | None, data: Any, loss: LossSpec, *,
                 method: str, seed: int, top_n: int, hooks: Sequence[str] | None = None) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not '{method}'")
        self.obj = data if isinstance(data, Objective) else Objective(model, data, loss)
        if isinstance(self.obj.loss, BatchLoss):
            raise TypeError(
                "ablation metrics need the model's outputs; give an (outputs, targets) loss, not a BatchLoss"
            )
        self.loss: OutputLoss = self.obj.loss
        self.model = model
        self.cset = cset
        if cset is not None:
            cset.check_model(model)
        self.method = method
        self.seed = seed
        self.top_n = top_n
        self.hooks = tuple(hooks) if hooks is not None else cset.hooks  # type: ignore[union-attr]
        self.state = self.obj.state()
        self.batches = list(self.obj.batches())
        if not self.batches:
            raise DataError("the data hold no batches")
        self.ctx = _Context()
        self.forward_seconds = 0.0
        # The objective's own all-reduce for a distributed objective; None keeps one process exact.
        self.reduce: Callable[[Tensor], Tensor] | None = self.obj.reduce if self.obj.distributed else None

    # ------------------------------------------------------------------ passes
    def _forward(self, state: Mapping[str, Tensor], batch: Any) -> Tensor:
        t0 = time.perf_counter()
        with torch.no_grad():
            if state is self.state:  # the model's own weights: no functional_call needed
                out = call(self.model, batch[0])
            else:
                out = call(self.model, batch[0], state)
        self.forward_seconds += time.perf_counter() - t0
        return out

    def _perm(self, b: int, batch: Any) -> Tensor | None:
        if self.method != "resample":
            return None
        inputs = batch[0]
        x = inputs if isinstance(inputs, Tensor) else next(iter(inputs.values() if isinstance(inputs, Mapping)
                                                                else inputs))
        n = int(x.shape[0])
        if n < 2:
            return None
        g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + b)
        return _derangement(n, g).to(x.device)

    def reference(self) -> dict[str, Any]:
        """The reference pass: original metrics, cached reference outputs, activation means."""
        points: dict[str, None] = {h: None for h in self.hooks}
        if self.cset is not None:
            for g in self.cset.groups:
                if isinstance(g, WeightComponents) and self.method == "mean":
                    points.setdefault(f"{g.module}:input", None)
        sums: dict[str, Tensor] = {}
        counts: dict[str, int] = {}

        def reader(point: str) -> Callable[[Tensor], None]:
            def fn(f: Tensor) -> None:
                flat = f.detach().reshape(-1, f.shape[-1]).to(torch.float64)
                sums[point] = flat.sum(0) + (sums[point] if point in sums else 0)
                counts[point] = counts.get(point, 0) + flat.shape[0]

            return fn

        acc = Accumulator(self.loss, self.top_n, self.reduce)
        refs = []
        offset = 0
        with observe(self.model, [(p, reader(p)) for p in points]):
            for batch in self.batches:
                out = self._forward(self.state, batch)
                ref = reference_entry(self.loss, out, batch[1], self.top_n, offset)
                acc.add(out, batch[1], ref)
                refs.append(ref)
                offset += int(out.shape[0])
        if self.reduce is None:
            missing = [p for p in points if p not in sums]
            if missing:
                raise SelectionError(f"hook points {missing} were not reached in the forward pass")
            self.means = {p: sums[p] / counts[p] for p in points}
        else:
            self.means = self._global_means(list(points), sums, counts, refs, offset)
        self.refs = refs
        return acc.finish()

    def _global_means(self, points: list[str], sums: dict[str, Tensor], counts: dict[str, int],
                      refs: list[dict[str, Any]], examples: int) -> dict[str, Tensor]:
        """Distributed reference pass: global activation means and global example offsets.

        One all-reduce agrees on the hook points some rank did not reach (every rank then raises
        alike, none waits in a collective) and sums a one-hot-by-rank vector of example counts,
        whose entries below this rank are its first global example index (an exclusive prefix
        sum); the reference entries' offsets are moved by it, so every degradation report names
        examples over the shards concatenated in rank order. A second all-reduce sums the
        float64 activation sums and their counts.
        """
        from wdecomp.distributed import get_rank, get_world_size

        assert self.reduce is not None
        world, rank, f64 = get_world_size(), get_rank(), torch.float64
        head = torch.zeros(len(points) + world, dtype=f64)
        head[: len(points)] = torch.tensor([float(p not in sums) for p in points], dtype=f64)
        head[len(points) + rank] = float(examples)
        head = self.reduce(head)
        missing = [p for p, m in zip(points, head[: len(points)].tolist()) if m > 0]
        if missing:
            raise SelectionError(f"hook points {missing} were not reached in the forward pass (on some rank)")
        start = int(head[len(points): len(points) + rank].sum())
        for ref in refs:
            ref["offset"] += start
        device = sums[points[0]].device
        packed = self.reduce(torch.cat([*(sums[p] for p in points),
                                        torch.tensor([float(counts[p]) for p in points], dtype=f64, device=device)]))
        means, at = {}, 0
        for i, p in enumerate(points):
            width = sums[p].numel()
            means[p] = packed[at: at + width] / float(packed[-len(points) + i])
            at += width
        return means

    def _build(self, plan: _Plan) -> tuple[dict[str, Tensor], list[tuple[str, Edit]], list[tuple[str, Any]]]:
        dtype, device = self.obj.dtype, self.obj.device
        state = self.state
        edits: list[tuple[str, Edit]] = []
        module_hooks: list[tuple[str, Any]] = []
        if plan.baseline is not None:
            for h in self.hooks:
                if plan.baseline == "zero":
                    edits.append((h, torch.zeros_like))
                else:
                    m = self.means[h]
                    edits.append((h, lambda f, m=m: m.to(dtype=f.dtype, device=f.device).expand_as(f).clone()))
        edits.extend(plan.splices)
        if plan.local is None:
            return state, edits, module_hooks
        assert self.cset is not None
        new_state: dict[str, Tensor] | None = None
        for g, idx in zip(self.cset.groups, plan.local):
            if idx.numel() == 0:
                continue
            if isinstance(g, ActivationComponents):
                mean = self.means.get(g.hook) if self.method == "mean" else None
                edits.append((g.hook, _activation_edit(g, idx, self.method, mean, self.ctx, dtype, device)))
                continue
            if new_state is None:
                new_state = dict(state)
            theta = torch.cat([new_state[n].reshape(-1) for n in g.names])
            cut = g.ablated(theta, idx.to(theta.device))
            start = 0
            for n, shape in zip(g.names, g.shapes):
                size = int(torch.Size(shape).numel())
                new_state[n] = cut[start:start + size].reshape(shape)
                start += size
            if self.method != "zero":
                mean_in = self.means.get(f"{g.module}:input") if self.method == "mean" else None
                module_hooks.append((g.module, _weight_hook(g, self.method, mean_in, self.ctx, self.state)))
        return (new_state if new_state is not None else state), edits, module_hooks

    def evaluate(self, plan: _Plan, bar: Any) -> dict[str, Any]:
        state, edits, module_hooks = self._build(plan)
        acc = Accumulator(self.loss, self.top_n, self.reduce)
        with edit(self.model, edits, modules=module_hooks):
            for b, (batch, ref) in enumerate(zip(self.batches, self.refs)):
                self.ctx.perm = self._perm(b, batch)
                out = self._forward(state, batch)
                acc.add(out, batch[1], ref)
                bar.update(1)
        self.ctx.perm = None
        return acc.finish()


def _law_name(law: Any) -> str | None:
    if law is None:
        return None
    return str(getattr(law, "name", None) or type(law).__name__)


def _run(engine: _Engine, plans: Sequence[_Plan], *, method: str, order: str, law: Any, tokens: float | None,
         progress: bool | None, n_components: int, desc: str) -> AblationResult:
    t0 = time.perf_counter()
    original = engine.reference()
    t_stats = time.perf_counter() - t0
    base_plans = [_Plan("zero(hook)", None, baseline="zero"), _Plan("mean(hook)", None, baseline="mean")]
    nb = len(engine.batches)
    results = []
    t1 = time.perf_counter()
    with progress_bar(total=(len(plans) + 2) * nb, desc=desc, enabled=progress) as bar:
        for plan in [*base_plans, *plans]:
            results.append(engine.evaluate(plan, bar))
    t_levels = time.perf_counter() - t1
    zero, mean, levels = results[0], results[1], results[2:]
    L0 = original["loss"]
    all_losses = [L0, zero["loss"], mean["loss"], *(r["loss"] for r in levels)]
    ce, pe, notes = equivalents(all_losses, L0, law, tokens)

    def row(i: int, label: str, r: dict[str, Any], plan: _Plan | None) -> LevelMetrics:
        return LevelMetrics(
            label=label,
            n_ablated=plan.n_ablated if plan is not None else None,
            loss=r["loss"],
            delta_loss=r["loss"] - L0,
            recovered_zero=loss_recovered(r["loss"], L0, zero["loss"]),
            recovered_mean=loss_recovered(r["loss"], L0, mean["loss"]),
            kl=r["kl"],
            accuracy=r["accuracy"],
            compute_equivalent=None if ce is None else ce[i],
            parameter_equivalent=None if pe is None else pe[i],
            degradation=r["degradation"] if plan is not None else (),
            ablated=plan.ablated if plan is not None else (),
        )

    if engine.loss.name != "cross_entropy":
        notes.append("KL divergence and accuracy apply to cross-entropy on class targets only")
    if method == "resample":
        singles = any(int(b[1].shape[0]) < 2 for b in engine.batches)
        if engine.reduce is not None:  # the same notes on every rank
            singles = bool(engine.reduce(torch.tensor(float(singles), dtype=torch.float64)) > 0)
            notes.append("resampled replacements come from the same batch of the same rank (rank-local)")
        if singles:
            notes.append("batches of one example are not resampled")
    return AblationResult(
        levels=tuple(row(3 + i, p.label, r, p) for i, (p, r) in enumerate(zip(plans, levels))),
        original=row(0, "original", original, None),
        zero_baseline=row(1, "zero(hook)", zero, None),
        mean_baseline=row(2, "mean(hook)", mean, None),
        method=method,
        order=order,
        hooks=engine.hooks,
        loss_name=engine.loss.name,
        n_terms=int(original["count"]),
        n_components=n_components,
        law=_law_name(law),
        tokens=None if tokens is None else float(tokens),
        notes=tuple(notes),
        timings={"stats": t_stats, "levels": t_levels, "forward": engine.forward_seconds,
                 "total": time.perf_counter() - t0},
    )


# ---------------------------------------------------------------------------- public API
def _which(cset: ComponentSet, which: Any) -> list[int]:
    if isinstance(which, str):
        if which != "all":
            raise ValueError(f"which must be 'all', a list of component indices or a boolean mask, not '{which}'")
        return list(range(cset.size))
    if isinstance(which, Tensor) and which.dtype == torch.bool:
        if which.shape != (cset.size,):
            raise ShapeError(f"mask has shape {tuple(which.shape)}, expected ({cset.size},)")
        return torch.nonzero(which).reshape(-1).tolist()
    idx = [int(i) for i in (which.tolist() if isinstance(which, Tensor) else which)]
    cset.split(idx)  # range and repeat checks
    return idx


def ablate(
    model: nn.Module,
    components: Any,
    which: Sequence[int] | Tensor | str = "all",
    *,
    data: Any,
    method: str = "zero",
    loss: LossSpec = "cross_entropy",
    law: Any = None,
    tokens: float | None = None,
    seed: int = 0,
    top_n: int = 10,
    progress: bool | None = None,
) -> AblationResult:
    """Ablate a set of components and score the ablated model against the original.

    Args:
        model: The network (unchanged on return).
        components: :class:`ActivationComponents`, :class:`WeightComponents`, a ``LayerBasis``,
            a ``Basis``, ``Components``, or a list of these (global indices run group by group).
        which: Global indices of the components to ablate, a boolean mask ``(n,)``, or ``"all"``.
        data: One ``(inputs, targets)`` batch, a list of batches, or an :class:`Objective`. A
            distributed objective (``distributed=True``, this rank's shard) gives global metrics,
            the same on every rank (see the module docstring); every rank must call this.
        method: ``"zero"``, ``"mean"`` or ``"resample"`` (see :mod:`wdecomp.ablation.primitives`).
        loss: The loss (``"cross_entropy"``, ``"mse"``, a callable); ignored for an Objective.
        law: A scaling law for the compute- and parameter-equivalent columns (or ``None``).
        tokens: Training tokens ``D`` for the parameter-equivalent.
        seed: Seed of the resampling permutation.
        top_n: How many most-degraded loss terms to report.
        progress: Progress bar (default: on a terminal).

    Returns:
        An :class:`AblationResult` with one level, the original and both whole-hook baselines.

    Raises:
        ModelMismatchError: the components belong to another model.
        SelectionError: an index is out of range or repeated.
    """
    cset = as_component_set(components)
    idx = _which(cset, which)
    engine = _Engine(model, cset, data, loss, method=method, seed=seed, top_n=top_n)
    plan = _Plan(f"{len(idx)} ablated", len(idx), tuple(idx), cset.split(idx))
    return _run(engine, [plan], method=method, order="given", law=law, tokens=tokens, progress=progress,
                n_components=cset.size, desc=f"{method}-ablation")


def ablation_sweep(
    model: nn.Module,
    components: Any,
    data: Any,
    k: Iterable[int] | None = None,
    *,
    order: str = "least_important",
    method: str = "zero",
    loss: LossSpec = "cross_entropy",
    law: Any = None,
    tokens: float | None = None,
    seed: int = 0,
    top_n: int = 10,
    progress: bool | None = None,
) -> AblationResult:
    """Ablate the ``k`` least (or most) important components, for each ``k`` in a list.

    The levels are nested: level ``k`` ablates the first ``k`` components of the importance
    ranking (ties in index order). Each level costs one forward pass per batch; the reference
    outputs and mean statistics are computed once.

    Args:
        model: The network.
        components: As for :func:`ablate`.
        data: Batches or an :class:`Objective` (a distributed one gives global metrics, as for
            :func:`ablate`).
        k: Numbers of components to ablate, each in ``0..n`` (default: every ``k`` from 0 to
            ``n``).
        order: ``"least_important"`` or ``"most_important"``.
        method: As for :func:`ablate`.
        loss: As for :func:`ablate`.
        law: As for :func:`ablate`.
        tokens: As for :func:`ablate`.
        seed: As for :func:`ablate`.
        top_n: As for :func:`ablate`.
        progress: As for :func:`ablate`.

    Returns:
        An :class:`AblationResult` with one level per ``k``.

    Raises:
        SelectionError: ``k`` is empty or a level is outside ``0..n``.
    """
    cset = as_component_set(components)
    n = cset.size
    ks = list(range(n + 1)) if k is None else [int(v) for v in k]
    if not ks:
        raise SelectionError("empty sweep: k holds no ablation levels")
    bad = [v for v in ks if not 0 <= v <= n]
    if bad:
        raise SelectionError(f"ablation levels {bad[:5]} outside 0..{n} (the number of components)")
    ranking = cset.ranking(order)
    engine = _Engine(model, cset, data, loss, method=method, seed=seed, top_n=top_n)
    plans = [_Plan(f"k={v}", v, tuple(ranking[:v]), cset.split(ranking[:v])) for v in ks]
    return _run(engine, plans, method=method, order=order, law=law, tokens=tokens, progress=progress,
                n_components=n, desc=f"{method}-ablation sweep")


def score_splice(
    model: nn.Module,
    hook: str,
    replacement: Callable[[Tensor], Tensor] | Mapping[str, Callable[[Tensor], Tensor]],
    data: Any,
    *,
    loss: LossSpec = "cross_entropy",
    law: Any = None,
    tokens: float | None = None,
    top_n: int = 10,
    progress: bool | None = None,
) -> AblationResult:
    """Score one or several replacements spliced at ``hook`` (e.g. SAEs of several sizes).

    Each replacement is one level of the result (labelled by its key when a mapping is given),
    with loss recovered against zero- and mean-ablation of the hook, KL, accuracy and the
    compute-/parameter-equivalent. A distributed :class:`Objective` as ``data`` gives global
    metrics, as for :func:`ablate`.
    """
    reps = dict(replacement) if isinstance(replacement, Mapping) else {"splice": replacement}
    if not reps:
        raise SelectionError("no replacement given")
    point = str(HookPoint.parse(hook))
    engine = _Engine(model, None, data, loss, method="zero", seed=0, top_n=top_n, hooks=(point,))
    plans = [_Plan(label, None, splices=((point, fn),)) for label, fn in reps.items()]
    return _run(engine, plans, method="splice", order="given", law=law, tokens=tokens, progress=progress,
                n_components=0, desc="splice")
