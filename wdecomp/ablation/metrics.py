"""Metrics of an ablated (or spliced) model against the original, accumulated batch by batch.

For ``N`` loss terms (examples, or tokens of a sequence model), original outputs ``z`` and
ablated outputs ``z'``:

* **loss** ``L' = (1/N) sum_b S_b(z')``: the objective's loss (cross-entropy in nats, or MSE),
  accumulated exactly as :meth:`wdecomp.Objective.value` does (per-batch sums in float64), so an
  ablation of nothing gives the original loss bit for bit.
* **loss recovered** against a baseline loss ``L_base`` (Marks et al. 2024, arXiv 2403.19647;
  the "CE loss score" of SAELens):

      R = 1 - (L' - L) / (L_base - L),

  reported for two baselines, zero-ablation and mean-ablation of every hook the components live
  at, since the number depends on the baseline more than on the ablation.
* **KL divergence** from the original predictive distribution, per loss term (token), averaged:

      KL = (1/N) sum_terms sum_y p(y|z) (log p(y|z) - log p(y|z')),

  for cross-entropy losses (``p = softmax``); not defined for other losses.
* **accuracy**: share of loss terms whose argmax equals the integer target (classification).
* **compute-equivalent** ``C_eq(L') / C_eq(L)`` (the *frontier* fraction: compute-optimal
  compute reaching the degraded loss over compute-optimal compute reaching the original loss)
  and **parameter-equivalent** ``N_eq(L', D) / N_eq(L, D)`` on a scaling law
  (:mod:`wdecomp.scaling`). With the original model's training compute (``training_compute``,
  or ``n_params`` and ``tokens``) also the **training fraction** ``C_eq(L') / C_train``, the
  fraction of the model's own training compute (Gao et al. 2024's quantity; the frontier
  fraction equals it only for a model on the law's frontier). 1.0 for an unchanged model; a
  model whose loss rises from 1.5 to 2.0 nats loses far more compute than one going from 4.5 to
  5.0, which loss recovered hides. With several laws (``laws=``) every law's numbers, with
  intervals and per-level notes, are in :attr:`AblationResult.equivalents`.
* **per-input degradation**: the ``top_n`` loss terms (inputs, or tokens with their position)
  whose loss rises most, ``l'_t - l_t`` (ties: the smallest example index, then position).

For a distributed :class:`~wdecomp.objective.Objective` (``distributed=True``, each rank holding
a shard) every metric is global and the same on every rank: the sums above run over all ranks'
loss terms (all-reduced in float64, so uneven shards are weighted exactly), and the degradation
list is the global top ``top_n``, with example indices over the shards concatenated in rank order.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from wdecomp.errors import NonFiniteError
from wdecomp.objective import OutputLoss
from wdecomp.scaling import (
    EquivalentsTable,
    LawSamples,
    check_reference,
    compute_equivalent,
    equivalents_table,
    parameter_equivalent,
)


@dataclass(frozen=True)
class Degradation:
    """One loss term that degrades under an ablation.

    Attributes:
        example: Index of the example over the whole data (batches concatenated; for a
            distributed objective, every rank's shard concatenated in rank order).
        position: Token position within the example (0 for non-sequence outputs).
        original: Its loss in the original model.
        ablated: Its loss in the ablated model.
    """

    example: int
    position: int
    original: float
    ablated: float

    @property
    def increase(self) -> float:
        return self.ablated - self.original


def per_term_losses(loss: OutputLoss, outputs: Tensor, targets: Tensor) -> Tensor:
    """Loss of every term, shape ``(B, T)`` (``T = 1`` unless the outputs are a sequence).

    Cross-entropy with integer targets gives one term per position; any other loss gives the
    per-example loss (``loss.per_example``) as a single column.
    """
    b = outputs.shape[0]
    if loss.name == "cross_entropy" and not targets.is_floating_point():
        classes = outputs.shape[-1]
        terms = F.cross_entropy(outputs.reshape(-1, classes), targets.reshape(-1), reduction="none")
        return terms.reshape(b, -1)
    return loss.per_example(outputs, targets).reshape(b, 1)


def is_classification(loss: OutputLoss, targets: Tensor) -> bool:
    """Cross-entropy on integer class targets: where KL and accuracy apply."""
    return loss.name == "cross_entropy" and not targets.is_floating_point()


def reference_entry(loss: OutputLoss, outputs: Tensor, targets: Tensor, top_n: int, offset: int) -> dict[str, Any]:
    """What the ablated passes compare against, for one batch of the original model's outputs.

    For cross-entropy on class targets: the log-probabilities ``log p`` (flattened to
    ``(terms, classes)``, in the outputs' dtype) and ``p = exp(log p)``, cached once for the KL of
    every level. ``fast`` records whether ``nll_loss(log_softmax(z))`` reproduces the loss's own
    summed value bit for bit on this batch (it does for the built-in cross-entropy, which is
    defined so); only then do the levels reuse one ``log_softmax`` for the loss, the KL and the
    per-term losses. ``terms`` (for ``top_n > 0``) are the per-term losses of the batch.
    """
    z = outputs.detach()
    ref: dict[str, Any] = {"offset": offset, "examples": int(z.shape[0])}
    if is_classification(loss, targets):
        flat = z.log_softmax(dim=-1).reshape(-1, z.shape[-1])
        t = targets.reshape(-1)
        s, _ = loss.summed(z, targets)
        ref["fast"] = flat.shape[0] == t.shape[0] and torch.equal(
            F.nll_loss(flat, t, reduction="sum"), s.detach()
        )
        ref["logp"] = flat
        ref["p"] = flat.exp()
        ref["p_positive"] = bool((ref["p"] > 0).all())
    if top_n > 0:
        terms = per_term_losses(loss, z, targets)
        ref["width"] = int(terms.shape[1])
        ref["terms"] = terms.reshape(-1)
    return ref


class Accumulator:
    """Running sums for one ablation level over batches (internal to the engine).

    ``add`` takes one batch's ablated outputs and the cached reference of that batch (from
    :func:`reference_entry`). Sums stay tensors until :meth:`finish` (no per-batch ``.item()``);
    the per-term losses of every batch are kept, and the ``top_n`` most degraded terms are taken
    by one ``topk`` over the whole level (ties broken by example, then position, the smallest
    first).

    Per batch of ``N`` terms and ``V`` classes, cross-entropy costs one ``log_softmax``, one
    subtraction and one dot product for the KL (``sum p (log p - log p')``, the difference taken
    elementwise, so small KLs do not cancel), one ``argmax`` for the accuracy and two ``nll_loss``
    over ``N`` entries: a few passes over the ``N x V`` logits, in their dtype.

    Args:
        loss: The objective's output loss.
        top_n: How many most-degraded loss terms :meth:`finish` reports.
        reduce: Sum over processes for a distributed objective (its
            :meth:`~wdecomp.objective.Objective.reduce`), or ``None`` for one process. When given,
            :meth:`finish` returns global metrics, the same on every rank (see there).
    """

    def __init__(self, loss: OutputLoss, top_n: int, reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        self.loss = loss
        self.top_n = top_n
        self.reduce = reduce
        self.total: Tensor | None = None
        self.count = 0
        self.kl: Tensor | None = None
        self.correct: Tensor | None = None
        self.classification = True
        self.terms: list[Tensor] = []
        self.refs: list[dict[str, Any]] = []

    def add(self, outputs: Tensor, targets: Tensor, ref: dict[str, Any], offset: int | None = None) -> None:
        z = outputs.detach()
        cls = is_classification(self.loss, targets)
        self.classification = self.classification and cls
        terms = None
        if cls and ref.get("fast", False):
            flat = z.log_softmax(dim=-1).reshape(-1, z.shape[-1])
            t = targets.reshape(-1)
            s = F.nll_loss(flat, t, reduction="sum")
            n = flat.shape[0]
            if self.top_n > 0:
                terms = F.nll_loss(flat, t, reduction="none")
        else:
            s, n = self.loss.summed(z, targets)
            s = s.detach()
            flat = z.log_softmax(dim=-1).reshape(-1, z.shape[-1]) if cls else None
        s64 = s.to(torch.float64)
        self.total = s64 if self.total is None else self.total + s64
        self.count += int(n)
        if cls:
            assert flat is not None
            p = ref["p"]
            if ref["p_positive"]:
                kl = torch.dot(p.reshape(-1), torch.sub(ref["logp"], flat).reshape(-1))
            else:  # terms with p = 0 count 0, also where log p = -inf
                kl = torch.where(p > 0, p * (ref["logp"] - flat), torch.zeros_like(p)).sum()
            kl = kl.to(torch.float64)
            self.kl = kl if self.kl is None else self.kl + kl
            hit = (z.argmax(dim=-1) == targets).sum()
            self.correct = hit if self.correct is None else self.correct + hit
        if self.top_n > 0:
            if terms is None:
                terms = per_term_losses(self.loss, z, targets).reshape(-1)
            self.terms.append(terms)
            self.refs.append(ref)

    @property
    def value(self) -> float:
        """The mean loss over the batches added here (as :meth:`Objective.value` computes it for
        one process; :meth:`finish` gives the global one of a distributed objective)."""
        assert self.total is not None
        value = float(self.total) / self.count
        return value

    def _worst(self) -> list[tuple[int, int, float, float]]:
        """This process's ``top_n`` most degraded terms, ``(example, position, original, ablated)``,
        largest increase first, ties by ``(example, position)`` ascending.

        The example index is ``ref["offset"]`` plus the index within the batch, so it is global
        when the engine has made the offsets global. Ties at the cut-off are taken in that order
        too (not as ``topk`` happens to return them), so the selection is deterministic and the
        union of every rank's list contains the global top ``top_n``.
        """
        if not self.terms:
            return []
        terms = torch.cat([t.to(torch.float64) for t in self.terms])
        ref = torch.cat([r["terms"].to(torch.float64) for r in self.refs])
        inc = terms - ref
        k = min(self.top_n, inc.numel())
        if k == 0:
            return []
        kth = torch.topk(inc, k).values[-1]
        above = torch.nonzero(inc > kth).reshape(-1)
        # flat index order is (example, position) order: batches in order, rows of width `width`
        tied = torch.nonzero(inc == kth).reshape(-1)[: max(k - above.numel(), 0)]
        idx = torch.cat([above, tied])
        starts = [0]
        for t in self.terms:
            starts.append(starts[-1] + t.numel())
        out = []
        for i in idx.tolist():
            b = bisect.bisect_right(starts, i) - 1
            local = i - starts[b]
            width = self.refs[b]["width"]
            out.append((self.refs[b]["offset"] + local // width, local % width, float(ref[i]), float(terms[i])))
        return out

    def finish(self) -> dict[str, Any]:
        """The level's metrics: mean loss, number of terms, KL, accuracy and the ``top_n`` most
        degraded terms.

        With ``reduce`` (a distributed objective) every entry is global and bitwise the same on
        every rank: the float64 summed loss, the term count, the summed KL and the number of
        correct argmaxes are summed over ranks in one all-reduce, together with a
        ``(world, top_n, 5)`` table in which each rank fills its own slot with its local
        ``top_n`` rows (example indices already global, see the engine) and a validity flag;
        every rank then takes the global ``top_n`` from that table with the same order and
        tie-break as one process.
        """
        rows = self._worst()
        cls = self.classification and self.kl is not None
        assert self.total is not None
        total: Any = self.total
        count = self.count
        kl: Any = self.kl
        correct: Any = self.correct
        if self.reduce is not None:
            total, count, kl, correct, cls, rows = self._reduce(rows, cls)
        value = float(total) / count
        if not math.isfinite(value):
            raise NonFiniteError(f"the ablated loss is {value}")
        rows.sort(key=lambda t: (-(t[3] - t[2]), t[0], t[1]))
        return {
            "loss": value,
            "count": count,
            "kl": float(kl) / count if cls else None,
            "accuracy": int(correct) / count if cls else None,
            "degradation": tuple(Degradation(e, p, o, a) for e, p, o, a in rows[: self.top_n]),
        }

    def _reduce(self, rows: list[tuple[int, int, float, float]], cls: bool) -> tuple[Any, ...]:
        """Sum the level's statistics over ranks (one all-reduce) and merge the top-``n`` lists."""
        from wdecomp.distributed import get_rank, get_world_size

        assert self.reduce is not None and self.total is not None
        world, rank, n = get_world_size(), get_rank(), self.top_n
        f64 = torch.float64
        # float() of a float64 sum is exact; the last entry counts ranks without KL / accuracy
        scalars = torch.tensor([float(self.total), float(self.count), float(self.kl) if cls else 0.0,
                                float(self.correct) if cls else 0.0, 0.0 if cls else 1.0], dtype=f64)
        table = torch.zeros(world, n, 5, dtype=f64)
        if rows:
            table[rank, : len(rows), :4] = torch.tensor(rows, dtype=f64)
            table[rank, : len(rows), 4] = 1.0
        summed = self.reduce(torch.cat([scalars, table.reshape(-1)]))
        scalars, table = summed[:5], summed[5:].reshape(world, n, 5)
        valid = table[table[..., 4] == 1.0]
        merged = [(int(e), int(p), float(o), float(a)) for e, p, o, a, _ in valid.tolist()]
        return scalars[0], int(scalars[1]), scalars[2], scalars[3], bool(scalars[4] == 0), merged


def loss_recovered(loss: float, original: float, baseline: float) -> float:
    """``1 - (loss - original) / (baseline - original)``; NaN when the baseline equals the original."""
    if loss == original:
        return 1.0
    if baseline == original:
        return math.nan
    return 1.0 - (loss - original) / (baseline - original)


def _check_loss(value: float, what: str) -> None:
    if not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value):
        raise NonFiniteError(f"{what} is {value}; an equivalent needs a finite loss")
    if value < 0:
        raise ValueError(f"{what} is {value} < 0; a loss on a scaling law is a positive cross-entropy")


def equivalents(
    losses: Sequence[float], reference: float, law: Any, tokens: float | None = None
) -> tuple[list[float] | None, list[float] | None, list[str]]:
    """Compute- and parameter-equivalent fractions of ``losses`` relative to ``reference``.

    Args:
        losses: Losses of the ablated models (nats).
        reference: The original model's loss.
        law: A scaling law of :mod:`wdecomp.scaling` (``CHINCHILLA``, a fitted law), or ``None``.
        tokens: ``D``, training tokens, for the parameter-equivalent (skipped if ``None``).

    Returns:
        ``(compute_eq, parameter_eq, notes)``; a column is ``None`` (with a note) when it
        cannot be computed for want of a law or of ``tokens``.

    Raises:
        NonFiniteError: a loss is NaN or infinite.
        ValueError: a loss is negative.
        ScalingLawRangeError: a loss is at or below the law's irreducible loss (from
            :mod:`wdecomp.scaling`).
    """
    _check_loss(reference, "the reference loss")
    for i, value in enumerate(losses):
        _check_loss(value, f"loss {i}")
    notes: list[str] = []
    if law is None:
        notes.append("compute- and parameter-equivalent skipped: no scaling law given (law=...)")
        return None, None, notes
    ce = [float(compute_equivalent(v, reference, law)) for v in losses]
    pe = None
    if tokens is None:
        notes.append("parameter-equivalent skipped: give the training tokens D (tokens=...)")
    else:
        pe = [float(parameter_equivalent(v, reference, law, tokens)) for v in losses]
    return ce, pe, notes


def law_specs(law: Any = None, laws: Any = None) -> list[Any] | None:
    """The scaling laws of a sweep: ``laws`` (one or a list of names, laws or fits), else ``law``."""
    if laws is None:
        laws = law
    if laws is None:
        return None
    if isinstance(laws, (list, tuple)):
        return list(laws) or None
    return [laws]


def check_laws(reference: float, specs: list[Any] | None, trivial_loss: float | None = None) -> list[LawSamples] | None:
    """Check the original loss against every law before any level is evaluated
    (:func:`wdecomp.scaling.check_reference`); the resolved laws, or None without laws.

    Raises:
        ScalingLawRangeError: the original loss is at or below a law's irreducible loss.
        DataError: it is no better than ``trivial_loss``.
    """
    if specs is None:
        return None
    return check_reference(reference, specs, trivial_loss=trivial_loss)


def level_equivalents(
    losses: Sequence[float],
    reference: float,
    laws: list[LawSamples] | None,
    *,
    tokens: float | None = None,
    training_compute: float | None = None,
    n_params: float | None = None,
    trivial_loss: float | None = None,
) -> tuple[EquivalentsTable | None, list[str]]:
    """Every level's equivalents on every law (:func:`wdecomp.scaling.equivalents_table`): frontier
    fraction, training fraction (Gao et al. 2024) and parameter fraction, each with an interval;
    a level a law cannot score gets NaN and a note, the others keep their numbers."""
    if laws is None:
        return None, ["compute- and parameter-equivalent skipped: no scaling law given (law=... or laws=...)"]
    notes = []
    if tokens is None:
        notes.append("parameter-equivalent skipped: give the training tokens D (tokens=...)")
    table = equivalents_table(losses, reference, laws, training_compute=training_compute, N=n_params, D=tokens,
                              trivial_loss=trivial_loss)
    return table, notes
