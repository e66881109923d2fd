"""Curvature eigenbases of a group of weights: top, bulk and null eigenspaces.

For a parameter group ``theta in R^p`` (a weight matrix, a layer, the whole network) and a
symmetric curvature matrix ``A`` (``p x p``) with eigen-decomposition ``A = sum_i lambda_i v_i v_i^T``
(``lambda_1 >= ... >= lambda_p``), the eigenvectors ``v_i`` are an orthonormal basis of weight
space ordered by how much the loss (or behaviour) changes along them. Three kinds of ``A``:

* ``"hessian"``: ``H = d^2 L / d theta^2`` of the training loss.
* ``"ggn"``: the generalised Gauss-Newton ``G = E_x J^T (d^2 l / d f^2) J``.
* ``"behavioural"``: the Hessian, at ``theta = theta*``, of the *behavioural loss*

      L_B(theta) = E_x || f(theta, x) - f(theta*, x) ||^2

  (Bushnaq, Mendel et al. 2024, "Using Degeneracy in the Loss Landscape for Mechanistic
  Interpretability", arXiv 2405.10927, sec. 2). Since ``L_B`` is a squared error on the model's
  own outputs whose residual vanishes at ``theta*``, its Hessian there is exactly its Gauss-Newton
  matrix ``H_B = 2 E_x J(x)^T J(x)`` (``J = d f / d theta``, outputs summed over every output
  entry, sequence positions included), i.e. 2x the GGN of ``(1/2)||f - f*||^2``. It is computed as the
  GGN of an :class:`~wdecomp.objective.Objective` whose targets are the model's own outputs, which
  is positive semi-definite by construction; its null space is the set of weight directions that
  leave the network's outputs on the data unchanged to first order (the degeneracies).

The **null** eigenspace holds the eigenvalues ``|lambda| <= null_threshold * max |lambda|``; the
**top** eigenspace the ``k`` largest; the **bulk** everything else. Each eigenvector is also given
reshaped into the shapes of the parameters it lives in (:meth:`CurvatureBasis.directions`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import Tensor, nn

from wdecomp.bases.protocol import ComponentModel, WeightComponents, model_signature
from wdecomp.batch import as_batches, call, split
from wdecomp.curvature import ggn, hessian
from wdecomp.errors import DenseTooLargeError
from wdecomp.objective import Objective, resolve_loss
from wdecomp.params import ParamSpec, select_parameters

__all__ = ["CURVATURE_KINDS", "CurvatureBasis", "behavioural_objective", "curvature_basis"]

CURVATURE_KINDS = ("hessian", "ggn", "behavioural")
_WHICH = ("all", "top", "bulk", "null")


def _behavioural_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """``(1/B) sum_b ||f_b - f*_b||^2``: the mean over examples of the summed squared deviation."""
    return (outputs - targets).pow(2).reshape(outputs.shape[0], -1).sum(dim=1).mean()


_behavioural_loss.__name__ = "behavioural"


def behavioural_objective(model: nn.Module, data: Iterable[Any]) -> Objective:
    """The behavioural loss ``L_B(theta) = E_x ||f(theta, x) - f(theta*, x)||^2`` (arXiv 2405.10927)
    as an :class:`Objective`: the targets are the model's own outputs at its current weights
    ``theta*`` (computed once, detached)."""
    batches = []
    with torch.no_grad():
        for batch in as_batches(data, keep=False, what="behavioural_objective"):
            inputs = split(batch)[0]
            batches.append((inputs, call(model, inputs).detach().clone()))
    return Objective(model, batches, loss=_behavioural_loss)


@dataclass(frozen=True, eq=False)
class CurvatureBasis(ComponentModel):
    """Eigenvectors of a curvature matrix over one parameter group: a
    :class:`~wdecomp.bases.protocol.ComponentModel` with one weight group
    (:class:`~wdecomp.bases.protocol.WeightComponents`: component ``i`` is eigenvector ``v_i``,
    importance ``lambda_i``; removing ``S`` projects ``theta -> theta - V_S V_S^T theta``).

    Attributes:
        names: Parameter names, in flattening order.
        shapes: Their shapes.
        eigenvalues: ``(k,)`` descending.
        eigenvectors: ``(p, k)`` orthonormal columns, ``p = sum of the parameters' sizes``.
        kind: ``"hessian"``, ``"ggn"`` or ``"behavioural"``.
        which: ``"all"``, ``"top"``, ``"bulk"`` or ``"null"``.
        spectrum: ``(p,)`` every eigenvalue when computed densely (else the ``k`` found).
        null_threshold: Relative threshold that defines the null space.
        signature: :func:`model_signature` of the model.
        info: Metadata.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    eigenvalues: Tensor
    eigenvectors: Tensor
    kind: str
    which: str
    spectrum: Tensor
    null_threshold: float
    signature: Mapping[str, list[int]]
    info: Mapping[str, Any] = field(default_factory=dict)

    method = property(lambda self: f"curvature:{self.kind}")

    @property
    def size(self) -> int:
        return self.eigenvectors.shape[1]

    @property
    def numel(self) -> int:
        return self.eigenvectors.shape[0]

    @property
    def rank(self) -> int:
        """Eigenvalues of the full spectrum above the null threshold."""
        top = float(self.spectrum.abs().max()) if self.spectrum.numel() else 0.0
        return int((self.spectrum.abs() > self.null_threshold * top).sum())

    def _slices(self) -> list[tuple[str, slice, tuple[int, ...]]]:
        out, start = [], 0
        for name, shape in zip(self.names, self.shapes):
            n = 1
            for s in shape:
                n *= s
            out.append((name, slice(start, start + n), shape))
            start += n
        return out

    def unflatten(self, vec: Tensor) -> dict[str, Tensor]:
        """A flat ``(*b, p)`` vector as named tensors ``(*b, *shape)``."""
        return {n: vec[..., sl].reshape(*vec.shape[:-1], *shape) for n, sl, shape in self._slices()}

    def flatten(self, named: Mapping[str, Tensor]) -> Tensor:
        return torch.cat([named[n].reshape(-1) for n in self.names])

    def direction(self, i: int) -> dict[str, Tensor]:
        """Eigenvector ``i`` reshaped into the parameter shapes."""
        return self.unflatten(self.eigenvectors[:, i])

    def directions(self) -> dict[str, Tensor]:
        """Every eigenvector reshaped: name -> ``(k, *shape)``."""
        return self.unflatten(self.eigenvectors.T)

    @cached_property
    def groups(self) -> tuple[WeightComponents, ...]:
        """One weight group: the eigenvectors over the parameter group, labelled by ``kind``."""
        return (WeightComponents(self.names, self.shapes, self.eigenvectors, self.eigenvalues, label=self.kind),)

    def describe(self) -> str:
        return f"this {self.kind} eigenbasis"

    def __str__(self) -> str:
        ev = self.eigenvalues
        head = ", ".join(f"{float(x):.3e}" for x in ev[:5])
        more = ", ..." if ev.numel() > 5 else ""
        return (
            f"CurvatureBasis({self.kind}, {self.which}): {self.size} of p = {self.numel} directions over "
            f"{list(self.names)}; rank {self.rank}; eigenvalues [{head}{more}]"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "which": self.which, "names": list(self.names),
            "shapes": [list(s) for s in self.shapes], "eigenvalues": self.eigenvalues.tolist(),
            "rank": self.rank, "numel": self.numel, "null_threshold": self.null_threshold, "info": dict(self.info),
        }


def curvature_basis(
    model: nn.Module,
    data: Any,
    params: ParamSpec = None,
    *,
    kind: str = "ggn",
    loss: Any = "cross_entropy",
    which: str = "all",
    k: int | None = None,
    null_threshold: float = 1e-8,
    dense_limit: int = 4096,
    chunk_size: int | None = None,
) -> CurvatureBasis:
    """Eigenbasis of the Hessian, GGN or behavioural-loss Hessian over a parameter group.

    Args:
        model: The network at ``theta*``.
        data: Batches ``(inputs, targets)`` (targets unused for ``"behavioural"``).
        params: Parameter selection (``"mlp.hidden.weight"``, ``"mlp.*"``, a module; ``None``: all).
        kind: ``"hessian"``, ``"ggn"`` or ``"behavioural"`` (arXiv 2405.10927).
        loss: The training loss for ``"hessian"`` / ``"ggn"``.
        which: ``"all"`` (complete basis), ``"top"`` (``k`` largest), ``"bulk"`` (neither top-``k``
            nor null), ``"null"`` (``|lambda| <= null_threshold * max |lambda|``).
        k: Size of the top eigenspace (required for ``"top"`` and ``"bulk"``).
        null_threshold: Relative size below which an eigenvalue counts as zero.
        dense_limit: Largest ``p`` for the dense path (``op.dense()`` + ``torch.linalg.eigh``);
            above it only ``"top"`` is available, by block Lanczos (:func:`wdecomp.spectral.eigh`).

    Returns:
        A :class:`CurvatureBasis`; ``basis.direction(i)`` has the parameters' shapes.
    """
    if kind not in CURVATURE_KINDS:
        raise ValueError(f"kind must be one of {CURVATURE_KINDS}, not '{kind}'")
    if which not in _WHICH:
        raise ValueError(f"which must be one of {_WHICH}, not '{which}'")
    if which in ("top", "bulk") and (k is None or k < 1):
        raise ValueError(f"which='{which}' needs k >= 1 (the size of the top eigenspace)")
    pset = select_parameters(model, params)
    if kind == "behavioural":
        objective = behavioural_objective(model, data if isinstance(data, list) else list(data))
        op = ggn(objective, pset, chunk_size=chunk_size)
    else:
        objective = Objective(model, data, loss=loss if not isinstance(loss, str) else resolve_loss(loss))
        op = (hessian if kind == "hessian" else ggn)(objective, pset, chunk_size=chunk_size)
    p = pset.numel
    info: dict[str, Any] = {"p": p}
    if p <= dense_limit:
        A = op.dense()
        evals, evecs = torch.linalg.eigh((A + A.T) / 2)
        evals, evecs = evals.flip(0), evecs.flip(1)
        spectrum = evals.clone()
        top = float(evals.abs().max()) if evals.numel() else 0.0
        null = evals.abs() <= null_threshold * top
        idx = torch.arange(p)
        if which == "all":
            sel = idx
        elif which == "top":
            sel = idx[: min(k, p)]
        elif which == "null":
            sel = idx[null]
        else:
            sel = idx[(idx >= k) & ~null]
        info["method"] = "dense"
        values, vectors = evals[sel], evecs[:, sel]
    else:
        if which != "top":
            raise DenseTooLargeError(
                f"which='{which}' needs the full spectrum, but p = {p} > dense_limit = {dense_limit}; "
                "use which='top' (Lanczos) or raise dense_limit"
            )
        from wdecomp.spectral import eigh

        res = eigh(op, k=k, which="largest")
        values, vectors, spectrum = res.eigenvalues, res.eigenvectors, res.eigenvalues.clone()
        info.update(method="lanczos", residuals=res.residuals.tolist(), matvecs=res.matvecs)
    return CurvatureBasis(
        names=pset.names, shapes=tuple(tuple(s) for s in pset.shapes), eigenvalues=values.contiguous(),
        eigenvectors=vectors.contiguous(), kind=kind, which=which, spectrum=spectrum,
        null_threshold=null_threshold, signature=model_signature(model), info=info,
    )
