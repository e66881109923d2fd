"""The Hessian of the objective, ``H = d^2 L / d theta^2``, by Hessian-vector products."""

from __future__ import annotations

from torch import Tensor
from torch.func import grad, jvp, vjp

from wdecomp.curvature.base import CurvatureOperator, map_columns
from wdecomp.objective import Batch, Objective
from wdecomp.params import ParamSet, ParamSpec

_METHODS = ("auto", "forward-over-reverse", "reverse-over-reverse")


class HessianOperator(CurvatureOperator):
    """``H v = sum_b d/d eps [grad S_b(theta + eps v) / N]`` at ``eps = 0``.

    Two exact product rules are offered, and ``"auto"`` (the default) picks per call the one
    measured faster on 2 CPU cores (``benchmarks/results/products.md``): reverse-over-reverse for a
    single vector (about 2.6-2.9x a gradient against 3-3.9x for forward-over-reverse, on a 670k MLP
    and a 1M transformer), forward-over-reverse for a block (1.6-1.9x per vector against 2.1x):

    * ``"forward-over-reverse"`` (default): ``jvp(grad(f), theta, v)`` (Pearlmutter 1994). One
      forward-mode sweep over a reverse sweep, about 2-3 gradients per vector, no graph kept
      between vectors; ``vmap`` over tangents batches a block of vectors into one sweep, the
      cheapest per vector.
    * ``"reverse-over-reverse"``: ``vjp(grad(f))`` evaluated once, then ``vmap`` over the
      cotangents (double backward). Builds the gradient graph once per batch and reuses it for
      every column; the cheapest for one vector, and a second, independent autodiff path — use
      it to cross-check a model whose forward-mode rules are suspect (see :meth:`check`).
    """

    kind = "hessian"

    def __init__(
        self,
        objective: Objective,
        params: ParamSpec | ParamSet = None,
        *,
        method: str = "auto",
        chunk_size: int | None = None,
        progress: bool | None = None,
    ) -> None:
        if method not in _METHODS:
            raise ValueError(f"unknown Hessian product method '{method}'; choose from {_METHODS}")
        super().__init__(objective, params, chunk_size=chunk_size, progress=progress)
        self.method = method

    def _batch_matmat(self, theta: dict[str, Tensor], batch: Batch, V: dict[str, Tensor]) -> Tensor:
        g = grad(self.objective.batch_objective(batch, self.params))
        method = self.method
        if method == "auto":
            method = "reverse-over-reverse" if next(iter(V.values())).shape[0] == 1 else "forward-over-reverse"
        if method == "reverse-over-reverse":
            _, pullback = vjp(g, theta)
            return self.params.flatten(map_columns(lambda v: pullback(v)[0], V))

        def hvp(v: dict[str, Tensor]) -> dict[str, Tensor]:
            return jvp(g, (theta,), (v,))[1]

        return self.params.flatten(map_columns(hvp, V))

    def _finite_difference(self, v: Tensor, eps: float) -> Tensor:
        """``(grad L(theta + eps v) - grad L(theta - eps v)) / (2 eps)``."""
        plus, minus = self._shifted_state(v, eps)
        return (self._gradient_at(plus) - self._gradient_at(minus)) / (2 * eps)


def hessian(
    objective: Objective,
    params: ParamSpec | ParamSet = None,
    *,
    method: str = "auto",
    chunk_size: int | None = None,
    progress: bool | None = None,
) -> HessianOperator:
    """The Hessian of ``objective`` over the selected parameters, as a matrix-free operator.

    Args:
        objective: The loss over the data.
        params: Parameter selection (glob, regex, module, list; ``None`` = all trainable).
        method: ``"auto"``, ``"forward-over-reverse"`` or ``"reverse-over-reverse"``.
        chunk_size: Largest block of vectors per ``vmap`` call.
        progress: Progress bar over batches (``None``: only on a TTY).

    Example:
        >>> import torch, wdecomp as wd
        >>> model = torch.nn.Linear(3, 1, bias=False).double()
        >>> x = torch.eye(3, dtype=torch.float64); y = torch.zeros(3, 1, dtype=torch.float64)
        >>> H = wd.hessian(wd.Objective(model, (x, y), loss="mse"))
        >>> H.dense()  # L = mean ||Wx||^2 over the 3 unit inputs: H = (2/3) I
        tensor([[0.6667, 0.0000, 0.0000],
                [0.0000, 0.6667, 0.0000],
                [0.0000, 0.0000, 0.6667]], dtype=torch.float64)
    """
    return HessianOperator(objective, params, method=method, chunk_size=chunk_size, progress=progress)
