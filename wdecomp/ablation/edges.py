r"""Edge ablation between consecutive LIB layers, as rib runs it, and the number of edges needed.

rib's ``ablate_edges_and_eval`` (``rib/ablations.py``, Bushnaq et al. 2024, arXiv 2405.10928,
sec. 3 "edge ablation"): for one pair of consecutive hook points ``l -> l+1`` at a time, keep the
``n`` edges with the largest weights ``E_ij`` of the interaction graph (rib's ``_get_edge_mask``)
and recompute every coordinate of layer ``l+1`` from only the coordinates of layer ``l`` it keeps
an edge from (rib's ``edge_ablation_forward_hook_fn``):

    c'^{l+1}_i = h_{x,i}(m_i * c^l),        m_{ij} = 1 if edge (j -> i) is kept, else 0,

where ``h_x`` is the section from ``l`` to ``l+1`` in coordinates (with a constant node the
coordinates are linear in ``[f; s]`` and the constant scales the section's biases, so a removed
constant edge removes them: :mod:`wdecomp.bases.section`), evaluated through the basis as rib's
``module_hat`` does. Layer ``l+1``'s activation is replaced by ``f' = C^+ c' (+ mu s)`` and the rest
of the network runs as usual. Keeping every edge is the original network (evaluated without any
edit); keeping none replaces layer ``l+1`` by the section's value at the all-zero input with
biases off, ``h_x(0)`` (*rib's baseline*).

The fewest edges meeting a tolerance is found by bisection on ``n`` (rib's ``BisectSchedule``;
``metric="accuracy"``: accuracy ``>= original - tolerance``, ``"loss"``: loss ``<= original +
tolerance``), assuming the score improves with ``n``; every evaluated ``n`` is part of the curve,
plus ``curve_points`` log-spaced ones. Each point is scored with the ablation metrics
(:func:`~wdecomp.ablation.metrics.loss_recovered` against rib's baseline, accuracy, and the
compute-equivalent of :func:`~wdecomp.ablation.metrics.equivalents` when a scaling ``law`` is
given).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from wdecomp import hooks
from wdecomp.ablation.metrics import equivalents, loss_recovered, per_term_losses
from wdecomp.bases.base import Basis, LayerBasis
from wdecomp.bases.section import Section, TargetCoordinates, build_section, from_rows, to_rows
from wdecomp.batch import as_batches, chunks, split
from wdecomp.errors import DataError, SelectionError
from wdecomp.graph import InteractionGraph, interaction_graph
from wdecomp.objective import OutputLoss, resolve_loss
from wdecomp.progress import progress_bar

__all__ = ["EdgeAblationResult", "EdgeCurvePoint", "PairAblation", "edge_ablation", "edge_mask"]


def edge_mask(weights: np.ndarray, n_kept: int, keep_constant: bool = False) -> np.ndarray:
    """Boolean ``(k_t, k_s)`` mask of the ``n_kept`` largest edges (ties broken by position, so
    exactly ``n_kept``; rib's ``_get_edge_mask`` keeps ties at the threshold). With
    ``keep_constant`` the constant node's edges (column 0) are kept for free, as rib's
    ``always_keep_const_dir``."""
    w = np.asarray(weights, dtype=float)
    mask = np.zeros(w.shape, dtype=bool)
    start = 1 if keep_constant else 0
    sub = w[:, start:]
    order = np.lexsort((np.arange(sub.size), -sub.ravel()))[:max(0, min(n_kept, sub.size))]
    flat = np.zeros(sub.size, dtype=bool)
    flat[order] = True
    mask[:, start:] = flat.reshape(sub.shape)
    if keep_constant:
        mask[:, 0] = True
    return mask


@dataclass(frozen=True)
class EdgeCurvePoint:
    """One evaluated edge count.

    Attributes:
        n_kept: Edges kept (not counting free constant edges).
        loss: Mean loss over all loss terms.
        accuracy: Share of correct argmax predictions (``None``: not classification).
        recovered: Loss recovered, ``1 - (loss - original) / (baseline - original)``, against
            rib's baseline (no edges kept).
        compute_equivalent: ``C_eq(loss) / C_eq(original)`` under the scaling law (``None``: none given).
    """

    n_kept: int
    loss: float
    accuracy: float | None
    recovered: float
    compute_equivalent: float | None = None


@dataclass(frozen=True)
class PairAblation:
    """Edge ablation of one layer pair.

    Attributes:
        source: Earlier hook point.
        target: Later hook point.
        total_edges: ``k_l k_{l+1}``.
        edges_needed: The fewest edges meeting the tolerance (``None`` when no count meets it).
        met: Whether some count meets the tolerance.
        curve: Every evaluated point, most edges first.
        note: Why the tolerance was not met, or ``""``.
    """

    source: str
    target: str
    total_edges: int
    edges_needed: int | None
    met: bool
    curve: tuple[EdgeCurvePoint, ...]
    note: str = ""


@dataclass(frozen=True)
class EdgeAblationResult:
    """Edge ablation over consecutive layer pairs.

    Attributes:
        pairs: One :class:`PairAblation` per layer pair.
        original_loss: The network's loss.
        original_accuracy: Its accuracy (``None``: not classification).
        metric: ``"accuracy"`` or ``"loss"``.
        tolerance: Allowed drop in accuracy (or rise in loss).
        notes: Remarks (skipped columns).
    """

    pairs: tuple[PairAblation, ...]
    original_loss: float
    original_accuracy: float | None
    metric: str
    tolerance: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def edges_needed(self) -> dict[str, int | None]:
        """Source hook point -> the fewest edges meeting the tolerance."""
        return {p.source: p.edges_needed for p in self.pairs}

    def to_dict(self) -> dict[str, Any]:
        return {"original_loss": self.original_loss, "original_accuracy": self.original_accuracy,
                "metric": self.metric, "tolerance": self.tolerance, "notes": list(self.notes),
                "pairs": [{**{k: v for k, v in p.__dict__.items() if k != "curve"},
                           "curve": [dict(c.__dict__) for c in p.curve]} for p in self.pairs]}

    def __str__(self) -> str:
        acc = "-" if self.original_accuracy is None else f"{self.original_accuracy:.4f}"
        lines = [f"edge ablation ({self.metric} within {self.tolerance:g}): original loss {self.original_loss:.4g}, "
                 f"accuracy {acc}"]
        for p in self.pairs:
            need = "not met" if p.edges_needed is None else f"{p.edges_needed} of {p.total_edges} edges needed"
            lines += ["", f"{p.source} -> {p.target}: {need}" + (f" ({p.note})" if p.note else ""),
                      f"{'kept':>8} {'loss':>10} {'recovered':>10} {'accuracy':>9} {'compute_eq':>11}"]
            for c in p.curve:
                ce = "-" if c.compute_equivalent is None else f"{c.compute_equivalent:.4g}"
                a = "-" if c.accuracy is None else f"{c.accuracy:.4f}"
                lines.append(f"{c.n_kept:>8} {c.loss:>10.4g} {c.recovered:>10.4f} {a:>9} {ce:>11}")
        lines += list(self.notes)
        return "\n".join(lines)


# ----------------------------------------------------------------------------- evaluation
@dataclass
class _PairEval:
    model: nn.Module
    src: LayerBasis
    tgt: LayerBasis
    section: Section
    target_axis: int
    loss: OutputLoss

    def point(self, c: Tensor) -> Tensor:
        return self.section.source_rows(self.src, c)

    def replaced(self, x: Any, mask: np.ndarray | None) -> Tensor:
        """Layer ``l+1``'s activation with only the edges in ``mask`` (``None``: none kept)."""
        with torch.no_grad():
            acts = hooks.run(self.model, x, read=[self.src.point, self.tgt.point])[1]
            c = self.src.to_coordinates(to_rows(acts[self.src.point], self.section.source_axis))
            a_t = acts[self.tgt.point]
            m = np.zeros((self.tgt.size, self.src.size), dtype=bool) if mask is None else mask
            new = None
            rows_unique, inverse = np.unique(m, axis=0, return_inverse=True)
            for u, row in enumerate(rows_unique):
                keep = torch.as_tensor(row, dtype=c.dtype, device=c.device)
                rows, s_t = self.section.batched(self.point(c * keep), x)
                ct = TargetCoordinates(self.tgt)(rows, s_t)
                if new is None:
                    new = torch.zeros_like(ct)
                sel = torch.as_tensor(np.asarray(inverse).reshape(-1) == u, device=c.device)
                new[..., sel] = ct[..., sel]
            assert new is not None
            f = self.tgt.from_coordinates(new)
            return from_rows(f.to(a_t.dtype), a_t.shape, self.target_axis)

    def score(self, batches: Any, mask: np.ndarray | None, all_kept: bool) -> tuple[float, float | None]:
        """Mean loss and accuracy over the data with ``mask`` (``all_kept``: no edit at all)."""
        total, count, correct, n_pred = 0.0, 0, 0, 0
        classify = None
        for batch in batches:
            inputs, targets = split(batch)
            if targets is None:
                raise DataError("edge ablation scores a loss: the data need targets, (inputs, targets) batches")
            with torch.no_grad():
                if all_kept:
                    out = hooks.call(self.model, inputs)
                else:
                    out, _ = hooks.run(self.model, inputs, write={self.tgt.point: self.replaced(inputs, mask)})
            terms = per_term_losses(self.loss, out, targets)
            total += float(terms.double().sum())
            count += terms.numel()
            if classify is None:
                classify = self.loss.name == "cross_entropy" and not targets.is_floating_point()
            if classify:
                pred = out.argmax(-1).reshape(-1)
                correct += int((pred == targets.reshape(-1)).sum())
                n_pred += pred.numel()
        if count == 0:
            raise DataError("the data hold no examples")
        return total / count, (correct / n_pred if classify else None)


def edge_ablation(
    model: nn.Module,
    data: Any,
    basis: Basis,
    graph: InteractionGraph | None = None,
    *,
    loss: Any = "cross_entropy",
    metric: str = "accuracy",
    tolerance: float = 0.01,
    keep_constant_edges: bool = False,
    curve_points: int = 8,
    layers: Sequence[str] | None = None,
    law: Any = None,
    chunk_size: int | None = None,
    progress: bool | None = None,
) -> EdgeAblationResult:
    """Edge ablation between consecutive layers of ``basis`` (module docstring).

    Args:
        model: The network.
        data: A data argument with targets (:mod:`wdecomp.batch`); read once per evaluated count.
        basis: An activation basis (LIB by default).
        graph: Its interaction graph (default: :func:`~wdecomp.graph.interaction_graph` on ``data``).
        loss: Loss name or callable (:func:`wdecomp.objective.resolve_loss`).
        metric: ``"accuracy"`` or ``"loss"``.
        tolerance: Allowed accuracy drop (``"accuracy"``) or loss rise (``"loss"``).
        keep_constant_edges: Keep the constant node's edges for free (rib's ``always_keep_const_dir``,
            which rib sets to ``center``): a basis without a constant node, such as
            ``variant="rib-uncentred"``, frees none.
        curve_points: Extra log-spaced edge counts evaluated for the curve.
        layers: A subsequence of ``basis.layers`` (default all).
        law: A scaling law for the compute-equivalent column (:mod:`wdecomp.scaling`), or ``None``.
        chunk_size: Examples per chunk when building the graph.
        progress: Progress bar.

    Returns:
        An :class:`EdgeAblationResult` (print it for the table).

    Raises:
        SelectionError: Layers not in the basis or the graph.
        DataError: Data without targets.
    """
    if metric not in ("accuracy", "loss"):
        raise ValueError(f"metric must be 'accuracy' or 'loss', not '{metric}'")
    if not math.isfinite(float(tolerance)):
        raise ValueError(f"tolerance must be a finite number, got {tolerance}")
    batches = as_batches(data, what="edge_ablation")
    names = list(basis.layers if layers is None else layers)
    missing = [p for p in names if p not in basis.layers]
    if missing or len(names) < 2:
        raise SelectionError(f"edge ablation needs at least two layers of the basis {list(basis.layers)}; got {names}")
    if graph is None:
        graph = interaction_graph(model, batches, basis, layers=names, chunk_size=chunk_size, progress=progress)
    if list(graph.layers) != names:
        raise SelectionError(f"the graph covers {list(graph.layers)}, the ablation {names}")
    resolved = resolve_loss(loss)
    if not isinstance(resolved, OutputLoss):
        raise ValueError("edge ablation needs a loss of the outputs and targets (a name or (outputs, targets) -> loss)")
    first = split(next(iter(batches)))[0]
    probe = next(iter(chunks(first, 1)))
    axes = dict(basis.info.get("feature_axes", {})) if isinstance(basis.info, dict) else {}
    pairs: list[PairAblation] = []
    original = None
    notes: list[str] = []
    bar = progress_bar(len(names) - 1, desc="edge ablation", enabled=progress)
    with bar:
        for li, (sp, tp) in enumerate(zip(names[:-1], names[1:])):
            src, tgt = basis[sp], basis[tp]
            sec = build_section(model, probe, sp, tp, constant=src.folded, feature_dims=axes)
            ev = _PairEval(model, src, tgt, sec, sec.target_axis, resolved)
            if original is None:
                original = ev.score(batches, None, all_kept=True)
            weights = graph.attribution_matrix(li)
            free = keep_constant_edges and src.constant is not None
            total = weights.size - (weights.shape[0] if free else 0)
            results: dict[int, tuple[float, float | None]] = {total: original}

            def evaluate(n: int, ev: _PairEval = ev, weights: np.ndarray = weights, free: bool = free,
                         total: int = total, results: dict = results) -> tuple[float, float | None]:
                if n not in results:
                    results[n] = ev.score(batches, edge_mask(weights, n, free), all_kept=False) if n < total else \
                        ev.score(batches, None, all_kept=True)
                return results[n]

            def good(n: int, evaluate: Any = evaluate, orig: tuple[float, float | None] = original) -> bool:
                loss_n, acc_n = evaluate(n)
                if metric == "accuracy":
                    if acc_n is None or orig[1] is None:
                        raise ValueError("metric='accuracy' needs a classification loss with integer targets; "
                                         "use metric='loss'")
                    return acc_n >= orig[1] - tolerance
                return loss_n <= orig[0] + tolerance

            baseline = evaluate(0)
            needed, note = None, ""
            if tolerance < 0:
                note = f"no edge count meets a tolerance of {tolerance:g} < 0: all edges give the original score"
            elif good(0):
                needed = 0
            else:
                lo, hi = 0, total  # lo fails, hi (all edges) meets the tolerance
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if good(mid):
                        hi = mid
                    else:
                        lo = mid
                needed = hi
            for n in np.unique(np.geomspace(1, max(total, 1), max(curve_points, 0)).astype(int)) if total else []:
                evaluate(int(n))
            counts = sorted(results, reverse=True)
            losses = [results[n][0] for n in counts]
            ce = None
            if law is not None:
                ce, _, law_notes = equivalents(losses, original[0], law)
                notes += [n for n in law_notes if n not in notes]
            curve = tuple(EdgeCurvePoint(n, results[n][0], results[n][1],
                                         loss_recovered(results[n][0], original[0], baseline[0]),
                                         None if ce is None else ce[i]) for i, n in enumerate(counts))
            pairs.append(PairAblation(sp, tp, total, needed, needed is not None, curve, note))
            bar.update(1)
    if law is None:
        notes.append("compute-equivalent skipped: no scaling law given (law=...)")
    assert original is not None
    return EdgeAblationResult(tuple(pairs), original[0], original[1], metric, float(tolerance), tuple(notes))
