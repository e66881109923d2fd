"""Ablations scored side by side: :func:`ablate` (one set of components) and
:func:`ablation_sweep` (nested levels by importance).

The way down is one-directional: the components are normalised to one
:class:`~wdecomp.bases.protocol.ComponentModel` (:func:`~wdecomp.ablation.primitives.as_component_set`),
the method is looked up in the registry (:mod:`wdecomp.ablation.methods`), the levels become
:class:`~wdecomp.ablation.engine.Plan` s, and :func:`~wdecomp.ablation.engine.run` evaluates and
scores them (:mod:`wdecomp.ablation.edits` turns each group's removal into a hooks edit).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from wdecomp.ablation.engine import Engine, Plan, run
from wdecomp.ablation.methods import get_method
from wdecomp.ablation.primitives import as_component_set
from wdecomp.ablation.report import AblationResult
from wdecomp.bases.protocol import ComponentModel
from wdecomp.errors import SelectionError, ShapeError
from wdecomp.objective import LossSpec

__all__ = ["ablate", "ablation_sweep"]


def _which(cset: ComponentModel, which: Any) -> list[int]:
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
    laws: Any = None,
    training_compute: float | None = None,
    n_params: float | None = None,
    trivial_loss: float | None = None,
    seed: int = 0,
    top_n: int = 10,
    progress: bool | None = None,
) -> AblationResult:
    """Ablate a set of components and score the ablated model against the original.

    Args:
        model: The network (unchanged on return).
        components: Any :class:`~wdecomp.bases.protocol.ComponentModel` (a ``Basis``, a
            ``CurvatureBasis``, ``Components``, a parameter decomposition), one component group
            (:class:`ActivationComponents`, :class:`WeightComponents`, a ``LayerBasis``), or a list of
            these (global indices run group by group).
        which: Global indices of the components to ablate, a boolean mask ``(n,)``, or ``"all"``.
        data: One ``(inputs, targets)`` batch, a list of batches, or an :class:`Objective`. A
            distributed objective (``distributed=True``, this rank's shard) gives global metrics,
            the same on every rank (see the module docstring); every rank must call this.
        method: A registered method: ``"zero"``, ``"mean"`` or ``"resample"``
            (:mod:`wdecomp.ablation.methods`).
        loss: The loss (``"cross_entropy"``, ``"mse"``, a callable); ignored for an Objective.
        law: A scaling law for the compute- and parameter-equivalent columns (or ``None``).
        tokens: Training tokens ``D`` of the original model, for the parameter-equivalent.
        laws: Several laws at once (names ``"chinchilla"``, ``"epoch"``, ``"kaplan"``, laws, or
            :class:`~wdecomp.scaling.ScalingFit` s for bootstrap intervals); the table gets a
            "which law" column and intervals (:attr:`AblationResult.equivalents`). Every law is
            checked against the original loss before any level is evaluated.
        training_compute: FLOPs the original model was trained with (or give ``n_params`` and
            ``tokens``: ``6 N D``); adds the training fraction ``C_eq(loss) / C_train``, the
            fraction of the model's own training compute (Gao et al. 2024).
        n_params: Parameters ``N`` of the original model.
        trivial_loss: Loss of a trivial model of the data (``log(vocab)``); levels at or above
            it get NaN and the note "no better than a trivial model".
        seed: Seed of the resampling permutation.
        top_n: How many most-degraded loss terms to report.
        progress: Progress bar (default: on a terminal).

    Returns:
        An :class:`AblationResult` with one level, the original and both whole-hook baselines.

    Raises:
        ModelMismatchError: the components belong to another model.
        SelectionError: an index is out of range or repeated.
    """
    how = get_method(method)
    cset = as_component_set(components)
    idx = _which(cset, which)
    engine = Engine(model, cset, data, loss, method=how, seed=seed, top_n=top_n)
    plan = Plan(f"{len(idx)} ablated", len(idx), tuple(idx), cset.split(idx))
    return run(engine, [plan], method=method, order="given", law=law, tokens=tokens, progress=progress,
                laws=laws, training_compute=training_compute, n_params=n_params, trivial_loss=trivial_loss,
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
    laws: Any = None,
    training_compute: float | None = None,
    n_params: float | None = None,
    trivial_loss: float | None = None,
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
        laws: As for :func:`ablate`.
        training_compute: As for :func:`ablate`.
        n_params: As for :func:`ablate`.
        trivial_loss: As for :func:`ablate`.
        seed: As for :func:`ablate`.
        top_n: As for :func:`ablate`.
        progress: As for :func:`ablate`.

    Returns:
        An :class:`AblationResult` with one level per ``k``.

    Raises:
        SelectionError: ``k`` is empty or a level is outside ``0..n``.
    """
    how = get_method(method)
    cset = as_component_set(components)
    n = cset.size
    ks = list(range(n + 1)) if k is None else [int(v) for v in k]
    if not ks:
        raise SelectionError("empty sweep: k holds no ablation levels")
    bad = [v for v in ks if not 0 <= v <= n]
    if bad:
        raise SelectionError(f"ablation levels {bad[:5]} outside 0..{n} (the number of components)")
    ranking = cset.ranking(order)
    engine = Engine(model, cset, data, loss, method=how, seed=seed, top_n=top_n)
    plans = [Plan(f"k={v}", v, tuple(ranking[:v]), cset.split(ranking[:v])) for v in ks]
    return run(engine, plans, method=method, order=order, law=law, tokens=tokens, progress=progress,
                laws=laws, training_compute=training_compute, n_params=n_params, trivial_loss=trivial_loss,
                n_components=n, desc=f"{method}-ablation sweep")
