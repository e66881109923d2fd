"""The per-sample gradient matrix ``G`` (examples x parameters), never materialised unless asked.

Row ``i`` is ``g_i = grad s_i(theta)``, the gradient of example ``i``'s summed loss. ``G v``
is a single forward-mode JVP of the vector of per-example losses (one sweep for the whole
batch), ``G^T u = grad (u . s)`` a single reverse sweep; the dense matrix comes from
``jacrev`` in chunks. ``rank(G) = rank(F_emp)`` and ``G G^T`` is the small Gram matrix used for
exact ranks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.func import jacrev, jvp, vjp, vmap

from wdecomp import batch as batching
from wdecomp.curvature.base import CurvatureOperator
from wdecomp.curvature.fisher import per_example_loss_function
from wdecomp.errors import NonFiniteError, ShapeError
from wdecomp.objective import Objective
from wdecomp.params import ParamSet, ParamSpec


class PerSampleGradients(CurvatureOperator):
    """``G`` of shape ``(n, p)``: ``G @ v`` (``(p,)`` or ``(p, k)``) and ``G.rmatvec(u)`` / ``G.T @ u``."""

    kind = "per_sample_gradients"
    symmetric = False

    def __init__(self, objective: Objective, params: ParamSpec | ParamSet = None, **kw: Any) -> None:
        if objective.distributed:
            from wdecomp.distributed import DistributedError

            raise DistributedError(
                "per-sample gradients are rows of this rank's examples and are not reduced; build them "
                "from a distributed=False Objective on the local shard (rows stay on their rank)"
            )
        super().__init__(objective, params, **kw)
        objective.output_loss()
        self._sizes: list[int] | None = None

    @property
    def example_counts(self) -> list[int]:
        """Examples per batch."""
        if self._sizes is None:
            self._sizes = [batching.num_examples(b) for b in self.objective.batches()]
        return self._sizes

    @property
    def shape(self) -> tuple[int, int]:
        return (sum(self.example_counts), self.params.numel)

    def _rebuild(self, objective: Objective, params: ParamSet) -> PerSampleGradients:
        new = super()._rebuild(objective, params)
        new._sizes = None
        return new

    def _matmat(self, V: Tensor) -> Tensor:
        theta = self.params.as_dict()
        rows = []
        for batch in self.objective.batches():
            e = per_example_loss_function(self.objective, batch)
            tangents = self.params.unflatten(V.T.contiguous())
            rows.append(vmap(lambda v, e=e: jvp(e, (theta,), (v,))[1])(tangents).T)
        out = torch.cat(rows, dim=0)
        if not torch.isfinite(out).all():
            raise NonFiniteError("per-sample gradient product is not finite")
        return out

    def rmatmat(self, U: Tensor) -> Tensor:
        """``G^T U`` for ``U`` of shape ``(n,)`` or ``(n, k)``."""
        vector = U.dim() == 1
        U = U.unsqueeze(1) if vector else U
        if U.dim() != 2 or U.shape[0] != self.shape[0]:
            raise ShapeError(f"G^T needs ({self.shape[0]},) or ({self.shape[0]}, k), got {tuple(U.shape)}")
        U = U.to(self.device, self.dtype)
        theta = self.params.as_dict()
        out = torch.zeros(self.params.numel, U.shape[1], dtype=self.dtype, device=self.device)
        start = 0
        for batch, size in zip(self.objective.batches(), self.example_counts):
            e = per_example_loss_function(self.objective, batch)
            _, pullback = vjp(e, theta)
            block = U[start : start + size].T.contiguous()
            out += self.params.flatten(vmap(pullback)(block)[0]).T
            start += size
        return out[:, 0] if vector else out

    def rmatvec(self, u: Tensor) -> Tensor:
        """``G^T u``."""
        return self.rmatmat(u)

    @property
    def T(self) -> _Transposed:
        return _Transposed(self)

    def _rmatvec_numpy(self, x: np.ndarray) -> np.ndarray:
        return self.rmatmat(torch.as_tensor(np.ascontiguousarray(x))).detach().cpu().numpy()

    def rows(self, chunk_size: int = 64) -> Iterator[Tensor]:
        """Dense rows ``g_i`` in blocks of ``chunk_size`` examples, in data order."""
        theta = self.params.as_dict()
        for batch in self.objective.batches():
            for sub in batching.chunks(batch, chunk_size):
                yield self.params.flatten(jacrev(per_example_loss_function(self.objective, sub))(theta))

    def dense(self, max_bytes: int | None = None) -> Tensor:
        from wdecomp.curvature.base import DEFAULT_DENSE_BYTES
        from wdecomp.errors import DenseTooLargeError

        limit = DEFAULT_DENSE_BYTES if max_bytes is None else max_bytes
        need = self.shape[0] * self.shape[1] * torch.empty((), dtype=self.dtype).element_size()
        if need > limit:
            raise DenseTooLargeError(
                f"per-sample gradients of shape {self.shape} need {need / 2**30:.2f} GiB "
                f"(limit {limit / 2**30:.2f} GiB); stream them with .rows() instead"
            )
        return torch.cat(list(self.rows()), dim=0)

    def _finite_difference(self, v: Tensor, eps: float) -> Tensor:
        plus, minus = self._shifted_state(v, eps)
        parts = []
        for batch in self.objective.batches():
            e = per_example_loss_function(self.objective, batch)
            parts.append((e(plus) - e(minus)) / (2 * eps))
        return torch.cat(parts)


class _Transposed:
    def __init__(self, op: PerSampleGradients) -> None:
        self.op = op
        self.shape = (op.shape[1], op.shape[0])

    def __matmul__(self, u: Tensor) -> Tensor:
        return self.op.rmatmat(u)


def per_sample_gradients(
    objective: Objective, params: ParamSpec | ParamSet = None, **kw: Any
) -> PerSampleGradients:
    """The ``n x p`` matrix of per-example gradients ``G`` (rows ``grad s_i``), matrix-free."""
    return PerSampleGradients(objective, params, **kw)
