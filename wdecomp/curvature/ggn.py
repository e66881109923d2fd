"""Generalised Gauss-Newton ``G = sum_i J_i^T M_i J_i`` and, with the output Fisher, the true Fisher.

``J_i = d f(x_i) / d theta`` is the Jacobian of the model's outputs for example ``i`` and
``M_i`` a positive semi-definite matrix in output space: the Hessian of the loss with respect
to the outputs (GGN; Schraudolph 2002, Martens 2020 arXiv 1412.1193 sec. 8) or the Fisher of
the predictive distribution (true Fisher). For cross-entropy on logits and for squared error
the two coincide (the losses are exponential-family NLLs in their natural parameters), which
the tests check between two independently written code paths.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.func import grad, jacrev, jvp, vjp

from wdecomp import batch as batching
from wdecomp.curvature._cache import CachedProducts, check_cache_setting, jacobian_maps
from wdecomp.curvature.base import FactoredOperator, map_columns, map_rows
from wdecomp.objective import Batch, Objective
from wdecomp.params import ParamSet, ParamSpec


class OutputSpaceOperator(CachedProducts, FactoredOperator):
    """``A v = sum_b J_b^T M_b J_b v``: a Jacobian-vector product, an output-space product
    ``M u``, and a vector-Jacobian product.

    Uncached, a block of ``k`` vectors costs one forward with its ``vjp`` record, ``k`` batched
    forward-mode JVPs and ``k`` batched VJPs per batch. Cached (``cache``), each batch's
    pullback ``u -> J^T u`` is recorded once, and ``v -> J v`` is the pullback of that linear
    map (:func:`wdecomp.curvature._cache.jacobian_maps`), so a product is backward sweeps only,
    with no forward pass; the records are kept, and checked bit for bit before every
    product, exactly as the Hessian's (:class:`~wdecomp.curvature.hessian.HessianOperator`).

    Args:
        objective: The loss (a loss of ``(outputs, targets)``, not a :class:`BatchLoss`).
        params: Parameter selection.
        output_matrix: ``"hessian"`` (GGN) or ``"fisher"`` (true Fisher, closed form).
        cache: ``"auto"`` (default: cache when the objective has one batch), ``True`` (every
            batch; memory: one model-output graph and its pullback per batch) or ``False``.
    """

    def __init__(
        self,
        objective: Objective,
        params: ParamSpec | ParamSet = None,
        *,
        output_matrix: str = "hessian",
        cache: bool | str = "auto",
        chunk_size: int | None = None,
        progress: bool | None = None,
    ) -> None:
        check_cache_setting(cache, "GGN/Fisher")
        super().__init__(objective, params, chunk_size=chunk_size, progress=progress)
        self.cache = cache
        self._reset_cache()
        self.loss = objective.output_loss()
        if output_matrix not in ("hessian", "fisher"):
            raise ValueError(f"output_matrix must be 'hessian' or 'fisher', not '{output_matrix}'")
        if output_matrix == "fisher" and self.loss.output_fisher is None:
            raise TypeError(
                f"the true Fisher needs the predictive distribution of loss '{self.loss.name}'; "
                "it is known for 'cross_entropy' and 'mse' (use the GGN or empirical Fisher)"
            )
        self.output_matrix = output_matrix
        self.kind = "ggn" if output_matrix == "hessian" else "fisher_true"

    def _output_product(self, outputs: Tensor, targets: Tensor):
        total = float(self.objective.total_count)
        if self.output_matrix == "fisher":
            fisher = self.loss.output_fisher
            return lambda u: fisher(outputs, targets, u) / total
        g = grad(lambda o: self.loss.summed(o, targets)[0] / total)
        return lambda u: jvp(g, (outputs,), (u,))[1]

    def _build_record(self, flat: Tensor, rest: dict[str, Tensor], batch: Batch) -> Callable:
        """``v -> J_b^T M_b J_b v`` (flat) from recorded pullbacks (no forward pass per product)."""
        inputs, targets = self.objective.inputs_targets(batch)
        fn = self.objective.output_function(inputs, rest)
        outputs, jv, jtu = jacobian_maps(lambda x: fn(self._views(x)), flat)
        m_product = self._output_product(outputs, targets)
        return lambda v: jtu(m_product(jv(v)))

    def _record_product(self, record: Callable, rows: Tensor) -> Tensor:
        return map_rows(record, rows)

    def _batch_matmat(self, theta: dict[str, Tensor], batch: Batch, V: dict[str, Tensor]) -> Tensor:
        """The uncached product: forward with a ``vjp`` record, JVPs, VJPs."""
        inputs, targets = self.objective.inputs_targets(batch)
        f = self.objective.output_function(inputs)
        outputs, pullback = vjp(f, theta)
        outputs = outputs.detach()
        m_product = self._output_product(outputs, targets)

        def column(v: dict[str, Tensor]) -> dict[str, Tensor]:
            jv = jvp(f, (theta,), (v,))[1]
            return pullback(m_product(jv))[0]

        return self._join_rows(map_columns(column, V))

    def _finite_difference(self, v: Tensor, eps: float) -> Tensor:
        """``J^T M [(f(theta + eps v) - f(theta - eps v)) / 2 eps]``, the JVP by differences."""
        plus, minus = self._shifted_state(v, eps)
        theta = self.params.as_dict()
        out = torch.zeros(self.params.numel, dtype=self.dtype, device=self.device)
        for batch in self.objective.batches():
            inputs, targets = self.objective.inputs_targets(batch)
            f = self.objective.output_function(inputs)
            outputs, pullback = vjp(f, theta)
            jv = (f(plus) - f(minus)) / (2 * eps)
            out += self.params.flatten(pullback(self._output_product(outputs.detach(), targets)(jv))[0])
        return self.objective.reduce(out)

    def factor_chunks(self, chunk_size: int = 64) -> Iterator[Tensor]:
        """Rows ``L_i^T J_i / sqrt(N)`` (``M_i = L_i L_i^T`` per output position), ``chunk_size``
        examples at a time; the operator equals ``sum_j F_j^T F_j``."""
        self._refuse_if_distributed()
        sqrt_fn = self.loss.output_hessian_sqrt
        if sqrt_fn is None:
            raise TypeError(f"no closed-form square root of the output Hessian for loss '{self.loss.name}'")
        theta = self.params.as_dict()
        scale = float(self.objective.total_count) ** -0.5
        for batch in self.objective.batches():
            for chunk in batching.chunks(batch, chunk_size):
                inputs, targets = self.objective.inputs_targets(chunk)
                f = self.objective.output_function(inputs)
                outputs = f(theta).detach()
                jac = self.params.flatten(jacrev(f)(theta))  # (m, *out, p)
                root = sqrt_fn(outputs, targets)  # (m, ..., C, C)
                rows = torch.einsum("...cr,...cp->...rp", root, jac)
                yield scale * rows.reshape(-1, self.params.numel)


def ggn(
    objective: Objective,
    params: ParamSpec | ParamSet = None,
    *,
    cache: bool | str = "auto",
    chunk_size: int | None = None,
    progress: bool | None = None,
) -> OutputSpaceOperator:
    """The generalised Gauss-Newton matrix ``G = sum_i J_i^T (d^2 l / d f^2) J_i / N``.

    Positive semi-definite whenever the loss is convex in the outputs (cross-entropy, MSE);
    equals the Hessian minus the term ``sum_i (dl/df_i) d^2 f_i / d theta^2`` that carries the
    network's own curvature.

    Args:
        objective: The loss over the data (a loss of outputs and targets).
        params: Parameter selection (``None`` = all trainable).
        cache: Reuse each batch's recorded pullbacks across products at unchanged weights and
            data: ``"auto"`` (one-batch objectives), ``True`` (every batch) or ``False``; exact
            either way (see :class:`OutputSpaceOperator`).
        chunk_size: Largest block of vectors per ``vmap`` call.
        progress: Progress bar over batches (``None``: only on a TTY).
    """
    return OutputSpaceOperator(
        objective, params, output_matrix="hessian", cache=cache, chunk_size=chunk_size, progress=progress
    )
