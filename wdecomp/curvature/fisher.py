"""Fisher information matrices: the empirical Fisher and the true Fisher.

* Empirical: ``F_emp = (1/N) sum_i g_i g_i^T`` with ``g_i = grad s_i`` the gradient of example
  ``i``'s summed loss (one loss term per example for classification; all of its tokens for a
  sequence), ``N`` the number of loss terms. Products need no per-sample gradients:
  ``G v`` is one forward-mode JVP of the vector of per-example losses and ``G^T u`` one VJP.
* True: ``F = E_x E_{y ~ p(y|x)} [grad log p grad log p^T] = sum_i J_i^T F_out,i J_i / N`` with the
  output-space Fisher in closed form (``diag(p) - p p^T`` for softmax), computed exactly rather
  than by sampling labels (Martens 2020, arXiv 1412.1193; Kunstner et al. 2019, arXiv 1905.12558
  on why the empirical Fisher is not a curvature estimate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.func import jacrev, jvp, vjp

from wdecomp import batch as batching
from wdecomp.curvature._cache import CachedProducts, check_cache_setting, jacobian_maps
from wdecomp.curvature.base import FactoredOperator, map_columns, map_rows
from wdecomp.curvature.ggn import OutputSpaceOperator
from wdecomp.objective import Batch, Objective
from wdecomp.params import ParamSet, ParamSpec


def per_example_loss_function(
    objective: Objective, batch: Batch, base: dict[str, Tensor] | None = None
) -> Callable[[dict[str, Tensor]], Tensor]:
    """``theta_sel -> (s_1, ..., s_B)``, the summed loss of each example in ``batch`` (the other
    weights from ``base``, default the model's own)."""
    inputs, targets = objective.inputs_targets(batch)
    loss = objective.output_loss()
    f = objective.output_function(inputs, base)
    return lambda p: loss.per_example(f(p), targets)


class EmpiricalFisherOperator(CachedProducts, FactoredOperator):
    """``F_emp v = G^T (G v) / N`` with ``G`` the (examples x p) per-example gradient matrix.

    Uncached: one forward with a ``vjp`` record, a forward-mode JVP and a VJP per vector.
    Cached (``cache``, as for :class:`~wdecomp.curvature.ggn.OutputSpaceOperator`): the pullback
    ``u -> G^T u`` is recorded once per batch and ``v -> G v`` is its transpose by the double-vjp
    identity, checked bit for bit before every product.
    """

    kind = "fisher_empirical"

    def __init__(
        self, objective: Objective, params: ParamSpec | ParamSet = None, *, cache: bool | str = "auto", **kw: Any
    ) -> None:
        check_cache_setting(cache, "Fisher")
        super().__init__(objective, params, **kw)
        objective.output_loss()
        self.cache = cache
        self._reset_cache()

    def _build_record(self, flat: Tensor, rest: dict[str, Tensor], batch: Batch) -> Callable:
        """``v -> G_b^T G_b v / N`` (flat) from recorded pullbacks."""
        losses = per_example_loss_function(self.objective, batch, rest)
        _, gv, gtu = jacobian_maps(lambda x: losses(self._views(x)), flat)
        total = float(self.objective.total_count)
        return lambda v: gtu(gv(v) / total)

    def _record_product(self, record: Callable, rows: Tensor) -> Tensor:
        return map_rows(record, rows)

    def _batch_matmat(self, theta: dict[str, Tensor], batch: Batch, V: dict[str, Tensor]) -> Tensor:
        e = per_example_loss_function(self.objective, batch)
        _, pullback = vjp(e, theta)
        total = float(self.objective.total_count)

        def column(v: dict[str, Tensor]) -> dict[str, Tensor]:
            return pullback(jvp(e, (theta,), (v,))[1] / total)[0]

        return self._join_rows(map_columns(column, V))

    def _finite_difference(self, v: Tensor, eps: float) -> Tensor:
        """``G^T [(s(theta + eps v) - s(theta - eps v)) / 2 eps] / N``."""
        plus, minus = self._shifted_state(v, eps)
        theta = self.params.as_dict()
        out = torch.zeros(self.params.numel, dtype=self.dtype, device=self.device)
        total = float(self.objective.total_count)
        for batch in self.objective.batches():
            e = per_example_loss_function(self.objective, batch)
            _, pullback = vjp(e, theta)
            out += self.params.flatten(pullback((e(plus) - e(minus)) / (2 * eps) / total)[0])
        return self.objective.reduce(out)

    def factor_chunks(self, chunk_size: int = 64) -> Iterator[Tensor]:
        """Per-example gradients ``g_i / sqrt(N)``, ``chunk_size`` examples at a time."""
        self._refuse_if_distributed()
        theta = self.params.as_dict()
        scale = float(self.objective.total_count) ** -0.5
        for batch in self.objective.batches():
            for sub in batching.chunks(batch, chunk_size):
                yield scale * self.params.flatten(jacrev(per_example_loss_function(self.objective, sub))(theta))


def fisher(
    objective: Objective,
    params: ParamSpec | ParamSet = None,
    *,
    kind: str = "empirical",
    cache: bool | str = "auto",
    chunk_size: int | None = None,
    progress: bool | None = None,
) -> FactoredOperator:
    """The empirical (``kind="empirical"``) or true (``kind="true"``) Fisher information matrix.

    Both are positive semi-definite and scaled per loss term (``1/N``) like the Hessian.

    Args:
        objective: The loss over the data (a loss of outputs and targets).
        params: Parameter selection (``None`` = all trainable).
        kind: ``"empirical"`` or ``"true"``.
        cache: Reuse each batch's recorded pullbacks across products at unchanged weights and
            data: ``"auto"`` (one-batch objectives), ``True`` (every batch) or ``False``; exact
            either way.
        chunk_size: Largest block of vectors per ``vmap`` call.
        progress: Progress bar over batches (``None``: only on a TTY).
    """
    if kind == "empirical":
        return EmpiricalFisherOperator(objective, params, cache=cache, chunk_size=chunk_size, progress=progress)
    if kind == "true":
        return OutputSpaceOperator(
            objective, params, output_matrix="fisher", cache=cache, chunk_size=chunk_size, progress=progress
        )
    raise ValueError(f"Fisher kind must be 'empirical' or 'true', not '{kind}'")
