"""Second moments of activations at hook points, accumulated in float64 over streamed data.

For a hook point with activations ``f(x) in R^d`` (every axis between the batch axis and the
feature axis, e.g. sequence positions, counts as more samples), the Gram matrix over ``n``
activation vectors is

    G = (1/n) sum_x f(x) f(x)^T                       (d, d)

(Bushnaq et al. 2024, "The Local Interaction Basis", arXiv 2405.10928, sec. 2, step L1, there as a sum;
we use the mean so thresholds do not depend on the data size). With ``constant=True`` a
constant ``1`` is appended to every activation vector, ``f~ = [f; 1]``, so that a bias acting on
the layer is the weight of an ordinary direction (how LIB and RIB fold biases in):

    G~ = (1/n) sum_x [f; 1][f; 1]^T = [[G, mu], [mu^T, 1]]     (d+1, d+1).

With ``center=True`` the covariance ``G - mu mu^T`` is returned instead (PCA). Sums are kept in
float64 whatever the model's dtype, one batch at a time, so memory is ``O(d^2)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from wdecomp import hooks
from wdecomp.bases.section import feature_axis, to_rows
from wdecomp.batch import as_batches, split
from wdecomp.distributed import all_reduce_sum_many
from wdecomp.errors import DataError, NonFiniteError
from wdecomp.progress import progress_bar

__all__ = ["GramResult", "flatten_positions", "gram_matrices"]


def flatten_positions(f: Tensor, axis: int = -1) -> Tensor:
    """``(B, ...)`` with features on ``axis`` -> ``(B * positions, d)`` (every other axis is a
    position); a ``(B,)`` activation becomes ``(B, 1)``."""
    if f.dim() == 1:
        return f.unsqueeze(1)
    rows = to_rows(f, axis % f.dim())
    return rows.reshape(-1, rows.shape[-1])


@dataclass(frozen=True, eq=False)
class GramResult:
    """The second moments of one hook point's activations.

    Attributes:
        point: The hook point.
        gram: ``(d, d)`` float64: the uncentred mean Gram matrix ``G``, the covariance (``centered``),
            or the ``(d+1, d+1)`` matrix with the constant direction last (``constant``).
        mean: ``(d,)`` float64 mean activation ``mu``.
        count: Number of activation vectors ``n`` (examples times positions).
        examples: Number of examples.
        centered: Whether ``gram`` is the covariance.
        constant: Whether a constant-1 direction was appended.
    """

    point: str
    gram: Tensor
    mean: Tensor
    count: int
    examples: int
    centered: bool = False
    constant: bool = False

    @property
    def dim(self) -> int:
        """``d``, the activation width (without the constant direction)."""
        return self.mean.shape[0]

    def eigh(self, threshold: float = 1e-10) -> tuple[Tensor, Tensor]:
        """Eigenpairs of ``gram`` kept above ``threshold * max eigenvalue`` (descending).

        Returns:
            ``(D, U)``: eigenvalues ``(r,)`` and orthonormal eigenvectors ``(d, r)``.
        """
        evals, evecs = torch.linalg.eigh(self.gram)
        evals, evecs = evals.flip(0), evecs.flip(1)
        top = float(evals[0]) if evals.numel() else 0.0
        keep = evals > max(threshold * top, torch.finfo(evals.dtype).tiny)
        return evals[keep], evecs[:, keep]

    def __str__(self) -> str:
        kind = "covariance" if self.centered else "Gram"
        extra = " + constant" if self.constant else ""
        return (f"{kind} at '{self.point}': d = {self.dim}{extra}, n = {self.count} vectors "
                f"from {self.examples} examples")

    def to_dict(self) -> dict[str, Any]:
        return {"point": self.point, "dim": self.dim, "count": self.count, "examples": self.examples,
                "centered": self.centered, "constant": self.constant, "trace": float(self.gram.trace())}


def gram_matrices(
    model: nn.Module,
    data: Iterable[Any],
    points: Sequence[str],
    *,
    constant: bool = False,
    center: bool = False,
    progress: bool | None = None,
    distributed: bool = False,
    feature_dim: int | dict[str, int | None] | None = None,
) -> dict[str, GramResult]:
    """Gram matrices (or covariances) of the activations at ``points``, streamed over ``data``.

    Args:
        model: The network.
        data: A data argument (:mod:`wdecomp.batch`; one pass).
        points: Hook points (``"mlp.act"``, ``"blocks.0:input"``).
        constant: Append a constant-1 direction (for biases, as LIB does).
        center: Return the covariance instead of the uncentred Gram matrix (not with ``constant``).
        progress: Progress bar over batches.
        distributed: ``data`` is this rank's shard: sums and counts are all-reduced over the
            process group (:mod:`wdecomp.distributed`), so every rank gets the global result.
        feature_dim: The feature axis, for all points or per point (default:
            :func:`~wdecomp.bases.section.feature_axis`); every other axis is a position.

    Returns:
        Point -> :class:`GramResult`.

    Raises:
        NonFiniteError: An activation is NaN or infinite.
        SelectionError: A hook point does not exist or is never reached.
        DataError: The data are empty.
    """
    if constant and center:
        raise ValueError("choose constant=True (affine, uncentred) or center=True (covariance), not both")
    keys = [str(hooks.HookPoint.parse(p)) for p in points]
    fdims = feature_dim if isinstance(feature_dim, dict) else dict.fromkeys(keys, feature_dim)
    sums: dict[str, Tensor] = {}
    firsts: dict[str, Tensor] = {}
    counts = dict.fromkeys(keys, 0)
    examples = 0
    batches = as_batches(data, what="gram_matrices")
    try:
        total = len(batches)  # type: ignore[arg-type]
    except TypeError:
        total = None
    bar = progress_bar(total, desc="gram", enabled=progress)
    with bar:
        for batch in batches:
            with torch.no_grad():
                acts = hooks.run(model, split(batch)[0], read=keys)[1]
            for key in keys:
                a = acts[key].detach()
                if not torch.isfinite(a).all():
                    raise NonFiniteError(f"activation at '{key}' contains NaN or inf")
                axis = feature_axis(model, key, a.dim(), fdims.get(key))
                f = flatten_positions(a, axis).to(torch.float64)
                if key not in sums:
                    sums[key] = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64, device=f.device)
                    firsts[key] = torch.zeros(f.shape[1], dtype=torch.float64, device=f.device)
                sums[key] += f.T @ f
                firsts[key] += f.sum(0)
                counts[key] += f.shape[0]
            examples += int(acts[keys[0]].shape[0]) if keys else 0
            bar.update(1)
    if not sums:
        raise DataError("the data hold no batches")
    if distributed:
        packed = all_reduce_sum_many({**{f"s{k}": sums[k] for k in keys}, **{f"m{k}": firsts[k] for k in keys},
                                      "n": torch.tensor([float(counts[k]) for k in keys] + [float(examples)])})
        sums, firsts = {k: packed[f"s{k}"] for k in keys}, {k: packed[f"m{k}"] for k in keys}
        counts, examples = {k: int(packed["n"][i]) for i, k in enumerate(keys)}, int(packed["n"][-1])
    out = {}
    for key in keys:
        n = counts[key]
        g = sums[key] / n
        mu = firsts[key] / n
        if center:
            g = g - torch.outer(mu, mu)
        elif constant:
            d = g.shape[0]
            ext = torch.empty(d + 1, d + 1, dtype=torch.float64, device=g.device)
            ext[:d, :d], ext[:d, d], ext[d, :d], ext[d, d] = g, mu, mu, 1.0
            g = ext
        g = (g + g.T) / 2
        out[key] = GramResult(key, g, mu, n, examples, centered=center, constant=constant)
    return out
