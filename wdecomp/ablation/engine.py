"""The ablation engine: one reference pass, two whole-hook baselines, one pass per level, scored.

Every evaluated model (an ablation level, a splice, a baseline) is one forward pass per batch
under :func:`wdecomp.hooks.edit`; nothing is copied or rewritten in place. The work per study is

* one *reference pass* over the data: the original outputs (their log-probabilities and
  per-term losses, cached for the KL and the degradation report) and every statistic the method
  needs (data means of the hooked activations and of the owning modules' inputs, in float64) —
  computed once, shared by all levels;
* two *baseline passes* (zero- and mean-ablation of the whole hook);
* one pass per level.

Activation groups are edited at their hook point, weight groups by substituting their weights
``remove(W, S)`` (plus, for a method with a stand-in, a hook that puts back the removed
contribution on the stand-in input; :mod:`wdecomp.ablation.methods`). An ablation of nothing adds
no hook and substitutes no weight, so it reproduces :meth:`wdecomp.Objective.value` bit for bit.
The compute- and parameter-equivalents of every level are formed in one place,
:func:`wdecomp.ablation.metrics.equivalents`, from the list of level losses.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from wdecomp.ablation.edits import BatchContext, activation_edit, removed_weights, restore_hook
from wdecomp.ablation.methods import AblationMethod
from wdecomp.ablation.metrics import (
    Accumulator,
    check_laws,
    law_specs,
    level_equivalents,
    loss_recovered,
    reference_entry,
)
from wdecomp.ablation.primitives import declared_axes
from wdecomp.ablation.report import AblationResult, LevelMetrics
from wdecomp.bases.protocol import ActivationGroup, ComponentModel, WeightGroup
from wdecomp.bases.section import feature_axis
from wdecomp.distributed import get_rank, get_world_size
from wdecomp.errors import DataError, SelectionError, ShapeError
from wdecomp.hooks import Edit, HookPoint, ModuleHook, call, edit, observe, resolve_module
from wdecomp.objective import BatchLoss, LossSpec, Objective, OutputLoss
from wdecomp.progress import progress_bar

__all__ = ["Engine", "Plan", "run"]


@dataclass
class Plan:
    """One evaluated model: an ablation level, a splice, or a whole-hook baseline.

    Attributes:
        label: Its row label.
        n_ablated: Number of components removed (``None`` for splices and baselines).
        ablated: Their global indices.
        local: Per-group local index tensors (ablation levels), from ``ComponentModel.split``.
        baseline: ``"zero"`` / ``"mean"`` for the whole-hook baselines.
        splices: ``(hook, replacement)`` pairs.
    """

    label: str
    n_ablated: int | None
    ablated: tuple[int, ...] = ()
    local: list[Tensor] | None = None
    baseline: str | None = None
    splices: Sequence[tuple[str, Callable[[Tensor], Tensor]]] = field(default_factory=tuple)


def along(axis: int, fn: Edit, width: int | None = None, where: str = "") -> Edit:
    """The edit ``fn`` (written for features on the last axis) applied with the features on ``axis``:
    every other axis is a position, so a channel-space edit acts at every pixel. ``width``: the
    feature width the edit expects (checked)."""

    def wrapped(f: Tensor) -> Tensor:
        a = axis % f.dim() if f.dim() > 1 else 0
        if width is not None and f.dim() > 1 and f.shape[a] != width:
            raise ShapeError(f"activations at '{where}' have width {f.shape[a]} on their feature axis {a} (shape "
                             f"{tuple(f.shape)}), the basis expects {width}; declare the axis (feature_dim= when "
                             "building the basis, or ActivationComponents(feature_axis=...))")
        if f.dim() < 2 or a == f.dim() - 1:
            return fn(f)
        return fn(f.movedim(a, -1)).movedim(-1, a)

    return wrapped


def _derangement(n: int, generator: torch.Generator) -> Tensor:
    """A random permutation without fixed points (``n >= 2``): ``x[perm]`` puts another
    example in each slot."""
    pi = torch.randperm(n, generator=generator)
    perm = torch.empty(n, dtype=torch.long)
    perm[pi] = pi.roll(-1)
    return perm


class Engine:
    """The passes of one ablation study over fixed data (see the module docstring)."""

    def __init__(self, model: nn.Module, components: ComponentModel | None, data: Any, loss: LossSpec, *,
                 method: AblationMethod | None, seed: int, top_n: int, hooks: Sequence[str] | None = None) -> None:
        self.obj = data if isinstance(data, Objective) else Objective(model, data, loss)
        if isinstance(self.obj.loss, BatchLoss):
            raise TypeError(
                "ablation metrics need the model's outputs; give an (outputs, targets) loss, not a BatchLoss"
            )
        self.loss: OutputLoss = self.obj.loss
        self.model = model
        self.components = components
        if components is not None:
            components.check_model(model)
        self.method = method
        self.seed = seed
        self.top_n = top_n
        self.hooks = tuple(hooks) if hooks is not None else components.hooks  # type: ignore[union-attr]
        self.state = self.obj.state()
        self.batches = list(self.obj.batches())
        if not self.batches:
            raise DataError("the data hold no batches")
        self.ctx = BatchContext()
        self.forward_seconds = 0.0
        self.declared = declared_axes(components) if components is not None else {}
        self.axes: dict[str, int] = {}
        self._ndims: dict[str, int] = {}
        # The objective's own all-reduce for a distributed objective; None keeps one process exact.
        self.reduce: Callable[[Tensor], Tensor] | None = self.obj.reduce if self.obj.distributed else None

    # ------------------------------------------------------------------ passes
    def _forward(self, batch: Any) -> Tensor:
        t0 = time.perf_counter()
        with torch.no_grad():
            out = call(self.model, batch[0])
        self.forward_seconds += time.perf_counter() - t0
        return out

    def _perm(self, b: int, batch: Any) -> Tensor | None:
        if self.method is None or not self.method.needs_perm:
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
        if self.components is not None and self.method is not None and self.method.needs_mean:
            for g in self.components.groups:
                if isinstance(g, WeightGroup):
                    points.setdefault(f"{g.module}:input", None)
        sums: dict[str, Tensor] = {}
        counts: dict[str, int] = {}

        def reader(point: str) -> Callable[[Tensor], None]:
            def fn(f: Tensor) -> None:
                axis = self.axes.setdefault(point, self._axis(point, f.dim()))
                self._ndims.setdefault(point, f.dim())
                g = f.detach().movedim(axis, -1) if f.dim() > 1 else f.detach()
                flat = g.reshape(-1, g.shape[-1]).to(torch.float64)
                sums[point] = flat.sum(0) + (sums[point] if point in sums else 0)
                counts[point] = counts.get(point, 0) + flat.shape[0]

            return fn

        acc = Accumulator(self.loss, self.top_n, self.reduce)
        refs = []
        offset = 0
        with observe(self.model, [(p, reader(p)) for p in points]):
            for batch in self.batches:
                out = self._forward(batch)
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

    def _axis(self, point: str, ndim: int) -> int:
        """The feature axis at ``point``: declared by the components, else the default rule
        (:func:`~wdecomp.bases.section.feature_axis`: channels of a conv activation, else the last
        axis); a module input read for a weight group: the channels of a convolution, else the last."""
        if ndim < 2:
            return max(ndim - 1, 0)
        if point in self.declared:
            return feature_axis(self.model, point, ndim, self.declared[point])
        hp = HookPoint.parse(point)
        if hp.side == "input" and point not in self.hooks:
            return 1 if isinstance(resolve_module(self.model, hp.module), nn.modules.conv._ConvNd) else ndim - 1
        return feature_axis(self.model, point, ndim)

    def _laid_out(self, point: str) -> Tensor | None:
        """The data mean at ``point`` shaped to broadcast against the activation (``(d, 1, ..)``
        for features on an axis before the last)."""
        m = self.means.get(point)
        if m is None or point not in self.axes:
            return m
        axis, ndim = self.axes[point], self._ndims.get(point, 0)
        return m.reshape(-1, *([1] * max(ndim - 1 - axis, 0)))

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

    def _build(self, plan: Plan) -> tuple[list[tuple[str, Edit]], dict[str, Tensor], list[tuple[str, ModuleHook]]]:
        """The plan as ``hooks.edit`` arguments: activation edits, weights, module hooks."""
        dtype, device = self.obj.dtype, self.obj.device
        edits: list[tuple[str, Edit]] = []
        weights: dict[str, Tensor] = {}
        module_hooks: list[tuple[str, ModuleHook]] = []
        if plan.baseline is not None:
            for h in self.hooks:
                if plan.baseline == "zero":
                    edits.append((h, torch.zeros_like))
                else:
                    m = self._laid_out(h)
                    edits.append((h, lambda f, m=m: m.to(dtype=f.dtype, device=f.device).expand_as(f).clone()))
        edits.extend(plan.splices)
        if plan.local is None:
            return edits, weights, module_hooks
        assert self.components is not None and self.method is not None
        method = self.method
        for g, idx in zip(self.components.groups, plan.local):
            if idx.numel() == 0:
                continue
            if isinstance(g, ActivationGroup):
                mean = self.means.get(g.hook) if method.needs_mean else None
                fn = activation_edit(g, idx, method, mean, self.ctx, dtype, device)
                width = int(g.transform.shape[1]) if hasattr(g, "transform") else None
                edits.append((g.hook, along(self.axes.get(g.hook, -1), fn, width, g.label)))
                continue
            weights.update(removed_weights(g, {**self.state, **weights}, idx))
            mean_in = self._laid_out(f"{g.module}:input") if method.needs_mean else None
            module_hooks.append((g.module, restore_hook(g, method, mean_in, self.ctx, self.state)))
        return edits, weights, module_hooks

    def evaluate(self, plan: Plan, bar: Any) -> dict[str, Any]:
        """One pass over the data with ``plan`` applied; its metrics."""
        edits, weights, module_hooks = self._build(plan)
        acc = Accumulator(self.loss, self.top_n, self.reduce)
        with edit(self.model, edits, weights=weights, modules=module_hooks):
            for b, (batch, ref) in enumerate(zip(self.batches, self.refs)):
                self.ctx.perm = self._perm(b, batch)
                out = self._forward(batch)
                acc.add(out, batch[1], ref)
                bar.update(1)
        self.ctx.perm = None
        return acc.finish()


def run(engine: Engine, plans: Sequence[Plan], *, method: str, order: str, law: Any, tokens: float | None,
        progress: bool | None, n_components: int, desc: str, laws: Any = None,
        training_compute: float | None = None, n_params: float | None = None,
        trivial_loss: float | None = None) -> AblationResult:
    """Reference pass, both baselines and every plan; the scored :class:`AblationResult`.

    The scaling laws (``laws``, else ``law``) are checked against the original loss right after
    the reference pass, before any baseline or level is evaluated.
    """
    t0 = time.perf_counter()
    original = engine.reference()
    resolved = check_laws(original["loss"], law_specs(law, laws), trivial_loss)
    t_stats = time.perf_counter() - t0
    base_plans = [Plan("zero(hook)", None, baseline="zero"), Plan("mean(hook)", None, baseline="mean")]
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
    table, notes = level_equivalents(all_losses, L0, resolved, tokens=tokens, training_compute=training_compute,
                                     n_params=n_params, trivial_loss=trivial_loss)
    ce = None if table is None else table.first("frontier_fraction")
    pe = None if table is None or tokens is None else table.first("parameter_fraction")
    tf = None if table is None or table.training_compute is None else table.first("training_fraction")

    def row(i: int, label: str, r: dict[str, Any], plan: Plan | None) -> LevelMetrics:
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
            training_fraction=None if tf is None else tf[i],
            degradation=r["degradation"] if plan is not None else (),
            ablated=plan.ablated if plan is not None else (),
        )

    if engine.loss.name != "cross_entropy":
        notes.append("KL divergence and accuracy apply to cross-entropy on class targets only")
    if engine.method is not None and engine.method.needs_perm:
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
        law=None if table is None else table.laws[0],
        tokens=None if tokens is None else float(tokens),
        equivalents=table,
        notes=tuple(notes),
        timings={"stats": t_stats, "levels": t_levels, "forward": engine.forward_seconds,
                 "total": time.perf_counter() - t0},
    )
