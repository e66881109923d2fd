"""The Hessian of the objective, ``H = d^2 L / d theta^2``, by Hessian-vector products."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torch.func import grad, jvp, vjp

from wdecomp.curvature._cache import CachedProducts, check_cache_setting
from wdecomp.curvature.base import map_columns, map_rows
from wdecomp.objective import Batch, Objective
from wdecomp.params import ParamSet, ParamSpec

_METHODS = ("auto", "forward-over-reverse", "reverse-over-reverse")
Pullback = Callable[[Tensor], tuple[Tensor]]


class HessianOperator(CachedProducts):
    """The Hessian ``H`` of the objective ``L(theta) = sum_b S_b(theta) / N``, known by its products.

    For a tangent ``v``, ``H v = sum_b d/d eps [grad S_b(theta + eps v) / N]`` at ``eps = 0``:
    the directional derivative of each batch's share of the gradient, summed over batches (and,
    for a distributed objective, over processes, after the local products). Two exact product
    rules compute it:

    * forward-over-reverse, ``jvp(grad(f), theta, v)`` (Pearlmutter 1994): one forward-mode
      sweep through the gradient computation per vector, nothing kept between calls; ``vmap``
      over tangents pushes a block of vectors through one sweep.
    * reverse-over-reverse (double backward): ``_, pull = vjp(grad(f), theta)`` records the
      gradient computation once, then ``H v = pull(v)`` is one backward sweep through that
      record per vector (``vmap(pull)`` for a block). Since ``H`` is symmetric, this vector-
      Jacobian product of the gradient is the Hessian-vector product.

    Both are exact to rounding; reverse-over-reverse is also an independent autodiff path, a
    cross-check for models whose forward-mode rules are suspect (see :meth:`check`).

    **Caching.** The record ``pull`` depends only on ``theta`` and the batch, not on ``v``, so at
    a fixed ``theta`` it can be built once and reused by every product, as an eigensolver calling
    the operator 50-100 times at one ``theta`` does. On 2 CPU cores (85k MLP, 117k transformer,
    float32) a cached single product costs about 2 gradients against 3-3.5 rebuilt, and a cached
    block of 16 about 5-15% less per vector than uncached forward-over-reverse. Caching is exact, not an
    approximation: a cached product is the same reverse-over-reverse computation on the same
    values, and it is used only while those values are unchanged. The operator keeps a private
    copy of every parameter and buffer the loss reads (its own selected tensors, the model's
    others) and of each cached batch, builds the record on those copies, and on every product
    compares them, bit for bit, with the current ones (and the modules' train/eval flags);
    any difference drops the records and builds new ones (this machinery,
    :class:`wdecomp.curvature._cache.CachedProducts`, is shared with the GGN and Fisher). So
    in-place updates of any kind (``optimizer.step()``, ``p.add_()`` under ``no_grad``,
    ``load_state_dict``, writes through ``p.data``, ``torch.nn.utils.vector_to_parameters``) never
    give a stale product. What the
    comparison cannot see is a change of the *function* itself (a new forward hook, a patched
    ``forward``, a loss with internal state): call :meth:`clear_cache` after such a change. A
    batch entry that is neither a tensor nor a plain value (number, string, ``None``) cannot be
    compared, so its batch is recorded anew on every call (exact, but not faster).

    Memory while cached: one copy of the model's parameters and buffers, and for each cached
    batch a copy of the batch plus its gradient graph, about the activations of one training step
    on that batch (a double-backward graph). Build a new operator, or call :meth:`clear_cache`, to
    free it; :meth:`restrict` and :meth:`resample` return operators with caches of their own.

    Args:
        objective: The loss over the data.
        params: Which weights (see :func:`wdecomp.params.select_parameters`).
        method: ``"auto"`` (default), ``"forward-over-reverse"`` or ``"reverse-over-reverse"``.
            ``"auto"`` uses the cached reverse-over-reverse rule whenever caching is active;
            otherwise it picks per call the rule measured faster on 2 CPU cores
            (``benchmarks/results/products.md``): reverse-over-reverse for a single vector (about
            2.6-2.9x a gradient against 3-3.9x), forward-over-reverse for a block (1.6-1.9x per
            vector against 2.1x).
        cache: ``"auto"`` (default) caches when the objective has exactly one batch, the usual
            "Hessian of a fixed batch", holding one training step's graph; ``True`` caches every
            batch, holding every batch's graph at once; ``False`` never caches. Caching implies
            reverse-over-reverse, so ``cache=True`` with ``method="forward-over-reverse"`` is an
            error, and ``cache="auto"`` with that method does not cache.
        chunk_size: Largest number of tangent columns pushed through one ``vmap`` call
            (``None``: 16).
        progress: Progress bar over batches for long products (``None``: only on a TTY).

    Raises:
        ValueError: an unknown ``method`` or ``cache``, or ``cache=True`` with
            ``method="forward-over-reverse"``.
    """

    kind = "hessian"

    def __init__(
        self,
        objective: Objective,
        params: ParamSpec | ParamSet = None,
        *,
        method: str = "auto",
        cache: bool | str = "auto",
        chunk_size: int | None = None,
        progress: bool | None = None,
    ) -> None:
        if method not in _METHODS:
            raise ValueError(f"unknown Hessian product method '{method}'; choose from {_METHODS}")
        check_cache_setting(cache, "Hessian")
        if cache is True and method == "forward-over-reverse":
            raise ValueError(
                "cache=True keeps reverse-over-reverse pullbacks, which method='forward-over-reverse' "
                "does not use; pass method='auto' or 'reverse-over-reverse' to cache, or cache=False"
            )
        super().__init__(objective, params, chunk_size=chunk_size, progress=progress)
        self.method = method
        self.cache = cache
        self._reset_cache()

    # ---------------------------------------------------------------- cache
    @property
    def caching(self) -> bool:
        """Whether products reuse cached pullbacks (decided by ``cache``, ``method`` and the batches)."""
        return self.method != "forward-over-reverse" and super().caching

    def _build_record(self, flat: Tensor, rest: dict[str, Tensor], batch: Batch) -> Pullback:
        """``pull`` with ``pull(v) = (H_b v,)`` for flat ``v``: the pullback of this batch's gradient."""
        f = self.objective.batch_objective(batch, self.params)
        _, pullback = vjp(grad(lambda x: f({**rest, **self._views(x)})), flat)
        return pullback

    def _record_product(self, record: Pullback, rows: Tensor) -> Tensor:
        return map_rows(lambda v: record(v)[0], rows)

    # ---------------------------------------------------------------- products
    def _batch_matmat(self, theta: dict[str, Tensor], batch: Batch, V: dict[str, Tensor]) -> Tensor:
        """The uncached product: the gradient graph is recorded anew for this call."""
        g = grad(self.objective.batch_objective(batch, self.params))
        method = self.method
        if method == "auto":
            method = "reverse-over-reverse" if next(iter(V.values())).shape[0] == 1 else "forward-over-reverse"
        if method == "reverse-over-reverse":
            _, pullback = vjp(g, theta)
            return self._join_rows(map_columns(lambda v: pullback(v)[0], V))

        def hvp(v: dict[str, Tensor]) -> dict[str, Tensor]:
            return jvp(g, (theta,), (v,))[1]

        return self._join_rows(map_columns(hvp, V))

    def _finite_difference(self, v: Tensor, eps: float) -> Tensor:
        """``(grad L(theta + eps v) - grad L(theta - eps v)) / (2 eps)``."""
        plus, minus = self._shifted_state(v, eps)
        return (self._gradient_at(plus) - self._gradient_at(minus)) / (2 * eps)


def hessian(
    objective: Objective,
    params: ParamSpec | ParamSet = None,
    *,
    method: str = "auto",
    cache: bool | str = "auto",
    chunk_size: int | None = None,
    progress: bool | None = None,
) -> HessianOperator:
    """The Hessian of ``objective`` over the selected parameters, as a matrix-free operator.

    Args:
        objective: The loss over the data.
        params: Parameter selection (glob, regex, module, list; ``None`` = all trainable).
        method: ``"auto"``, ``"forward-over-reverse"`` or ``"reverse-over-reverse"``.
        cache: Reuse the reverse-over-reverse graph across products at unchanged weights:
            ``"auto"`` (one-batch objectives), ``True`` (every batch) or ``False``; exact either
            way (see :class:`HessianOperator` for the memory it holds).
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
    return HessianOperator(objective, params, method=method, cache=cache, chunk_size=chunk_size, progress=progress)
