"""The Local Interaction Basis (LIB) and its controls (neuron, PCA, Jacobian).

Following Bushnaq et al. 2024, "The Local Interaction Basis: Identifying Computationally-Relevant
and Sparsely Interacting Features in Neural Networks" (arXiv 2405.10928), section 2. For hook
points ``l = 1..L`` in forward order with activations ``f^l(x) in R^{d_l}``:

L1. **PCA, null directions removed** (sec. 2, step (L1)): the Gram matrix
   ``G^l = E_x f^l f^l^T = U^l D^l U^l^T``; eigenvalues at or below ``gram_threshold * max D``
   are dropped (the activations never vary there, so nothing downstream can read them).
L2. **Whitening** (step L2): ``f^^l = (D^l)^{-1/2} U^l^T f^l``, so ``E f^^ f^^^T = I``.
L3. **Interaction rotation** (step L3), from the output backwards: with the next layer already in
   its LIB coordinates ``f~^{l+1} = C^{l+1} f^{l+1}``, the interaction matrix

       M^l = E_x  J(x)^T J(x),      J(x) = d f~^{l+1} / d f^^l     (whitened source)

   is diagonalised, ``M^l = V^l Lambda^l V^l^T``, and the LIB coordinates are

       f~^l = C^l f^l,     C^l = (Lambda^l)^{1/2} V^l^T (D^l)^{-1/2} U^l^T       (k_l, d_l),
       C^l+ = U^l (D^l)^{1/2} V^l (Lambda^l)^{-1/2}                           (d_l, k_l),

   scaled so each direction's size is its importance for the next layer (step L3). Directions with
   ``Lambda <= interaction_threshold * max Lambda`` do not interact with the next layer and are
   dropped (``drop_noninteracting=True``, as the paper does) or kept unscaled.
L4. The last hook point has no next layer: it is rotated into its PCA basis ``C^L = U^L^T``.

In code ``J`` is taken in the original coordinates, ``J_f = d f~^{l+1} / d f^l`` (a ``k_{l+1} x d_l``
matrix per example, by ``torch.func.vmap`` over examples of ``jacfwd``/``jacrev``, in chunks), and
``M^l = D^{1/2} U^T (E J_f^T J_f) U D^{1/2}``, which is the same matrix.

**Sequence models** (activations ``(B, *positions, d)``): the Gram matrix averages over every
position; the Jacobian is summed over source positions (the derivative along one direction of
``f^l`` applied at every position at once) and ``J^T J`` is summed over target positions, as the
paper does for transformers (sec. 2.2, appendix on transformers).

Controls with the same interface: ``"neuron"`` (``C = I``), ``"pca"`` (``C = U^T``, centred),
``"jacobian"`` (``M`` diagonalised in the original, un-whitened coordinates restricted to the span of
the activations: ``C = V^T U^T`` orthonormal).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import jacfwd, jacrev, vmap

from wdecomp.activations import HookPoint, module_order, resolve_module, run_with_hooks
from wdecomp.bases.base import Basis, LayerBasis, model_signature
from wdecomp.bases.capture import GramResult, gram_matrices
from wdecomp.curvature._batch import slice_examples
from wdecomp.errors import DataError, NonFiniteError, SelectionError
from wdecomp.progress import progress_bar

__all__ = ["METHODS", "interaction_basis", "interaction_jacobians", "interaction_matrix"]

METHODS = ("lib", "pca", "neuron", "jacobian")


def _split(batch: Any) -> Any:
    return batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 else batch


def _num_examples(x: Any) -> int:
    if isinstance(x, Tensor):
        return int(x.shape[0])
    if isinstance(x, dict):
        return _num_examples(next(iter(x.values())))
    return _num_examples(x[0])


def _unsqueeze(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.unsqueeze(0)
    if isinstance(x, dict):
        return {k: _unsqueeze(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_unsqueeze(v) for v in x)
    return x


def interaction_jacobians(
    model: nn.Module,
    data: Iterable[Any],
    source: str,
    target: str,
    transform: Tensor | None = None,
    *,
    chunk_size: int = 256,
    mode: str = "auto",
) -> Iterator[Tensor]:
    """Per-example Jacobians of the next layer's coordinates w.r.t. this layer's activations.

    ``J(x) = T d f_target / d f_source``, where the source perturbation is one vector ``delta in
    R^{d_s}`` added at every source position (so the Jacobian is summed over source positions) and
    ``T`` (``transform``, ``(k_t, d_t)``, default identity) maps target activations to coordinates.

    Yields:
        Tensors ``(b, *target_positions, k_t, d_s)``, ``chunk_size`` examples at a time.
    """
    src, tgt = str(HookPoint.parse(source)), str(HookPoint.parse(target))
    for batch in data:
        inputs = _split(batch)
        n = _num_examples(inputs)
        for start in range(0, n, chunk_size):
            x = slice_examples(inputs, start, start + chunk_size)
            with torch.no_grad():
                _, acts = run_with_hooks(model, x, read=[src, tgt])
            a = acts[src].detach()
            d_s, d_t = a.shape[-1], acts[tgt].shape[-1]
            T = transform if transform is not None else torch.eye(d_t, dtype=torch.float64)
            T = T.to(acts[tgt].dtype)
            k_t = T.shape[0]

            def g(delta: Tensor, a1: Tensor, x1: Any, T: Tensor = T) -> Tensor:
                _, out = run_with_hooks(model, _unsqueeze(x1), read=[tgt], write={src: (a1 + delta).unsqueeze(0)})
                return out[tgt][0] @ T.T

            # forward mode: one JVP per source direction (d_s; the source is one vector shared by
            # all positions); reverse: one VJP per target entry (positions x k_t)
            n_out = acts[tgt][0].numel() // d_t * k_t
            jac = jacfwd if (mode == "forward" or (mode == "auto" and d_s <= n_out)) else jacrev
            delta0 = torch.zeros(d_s, dtype=a.dtype, device=a.device)
            with torch.no_grad():
                J = vmap(jac(g), in_dims=(None, 0, 0))(delta0, a, x)
            if not torch.isfinite(J).all():
                raise NonFiniteError(f"Jacobian d '{tgt}' / d '{src}' contains NaN or inf")
            yield J


def interaction_matrix(
    model: nn.Module,
    data: Iterable[Any],
    source: str,
    target: str,
    transform: Tensor | None = None,
    *,
    chunk_size: int = 256,
    mode: str = "auto",
    distributed: bool = False,
) -> Tensor:
    """``M = E_x sum_{target positions} J(x)^T J(x)`` in float64, ``(d_s, d_s)``, with ``J`` from
    :func:`interaction_jacobians` (arXiv 2405.10928 sec. 2, step L3, before whitening).
    ``distributed=True``: ``data`` is this rank's shard; sum and count are all-reduced."""
    M = None
    for J in interaction_jacobians(model, data, source, target, transform, chunk_size=chunk_size, mode=mode):
        J = J.to(torch.float64).reshape(-1, J.shape[-1])
        M = J.T @ J if M is None else M + J.T @ J
    count = sum(_num_examples(_split(batch)) for batch in data)
    if M is None or count == 0:
        raise DataError("the data hold no examples")
    if distributed:
        from wdecomp.distributed import all_reduce_sum_many

        M, n = all_reduce_sum_many([M, torch.tensor([float(count)], dtype=torch.float64)])
        count = int(n[0])
    M = M / count
    return (M + M.T) / 2


def _check_layers(model: nn.Module, data: Any, layers: Sequence[str]) -> list[str]:
    if not layers:
        raise SelectionError("interaction_basis needs at least one layer (hook point)")
    keys = [str(HookPoint.parse(p)) for p in layers]
    if len(set(keys)) != len(keys):
        raise SelectionError(f"duplicate hook points in {keys}")
    for p in keys:
        resolve_module(model, HookPoint.parse(p).module)
    first = next(iter(data))
    order = module_order(model, keys, _split(first))
    if order != list(range(len(keys))):
        forward = [keys[i] for i in order]
        raise SelectionError(f"layers must be given in forward order; the forward pass reaches them as {forward}")
    return keys


def _sorted_eigh(A: Tensor) -> tuple[Tensor, Tensor]:
    evals, evecs = torch.linalg.eigh((A + A.T) / 2)
    return evals.flip(0), evecs.flip(1)


def interaction_basis(
    model: nn.Module,
    data: Iterable[Any],
    layers: Sequence[str],
    method: str = "lib",
    *,
    center: bool | None = None,
    gram_threshold: float = 1e-10,
    interaction_threshold: float = 1e-10,
    drop_noninteracting: bool = True,
    chunk_size: int = 256,
    mode: str = "auto",
    progress: bool | None = None,
    distributed: bool = False,
) -> Basis:
    """A basis for the activations at each of ``layers``: LIB or a control.

    Args:
        model: The network (eval mode).
        data: A re-iterable of batches ``(inputs, targets)`` or bare inputs (several passes).
        layers: Hook points in forward order (``["embed", "mlp.act", "unembed"]``).
        method: ``"lib"`` (arXiv 2405.10928 sec. 2), ``"pca"``, ``"neuron"`` or ``"jacobian"``.
        center: Subtract the mean activation before the basis (default: ``True`` for ``"pca"``,
            ``False`` otherwise, as in the paper's uncentred Gram matrix). The mean is stored as
            ``LayerBasis.center``.
        gram_threshold: Gram eigenvalues ``<= gram_threshold * max`` are null directions, dropped.
        interaction_threshold: ``M`` eigenvalues ``<= interaction_threshold * max`` are
            non-interacting directions.
        drop_noninteracting: Drop those (the paper) or keep them unscaled (the basis then stays
            invertible on the data's span, so the network is unchanged exactly).
        chunk_size: Examples per ``vmap`` Jacobian call (bounds memory).
        mode: ``"forward"``, ``"reverse"`` or ``"auto"`` Jacobians.
        progress: Progress bar over layers.
        distributed: ``data`` is this rank's shard: Gram and interaction matrices are
            all-reduced (:mod:`wdecomp.distributed`); every rank computes the same basis.

    Returns:
        A :class:`Basis` with ``basis[layer].transform`` ``(k, d)``, ``.inverse`` ``(d, k)``,
        ``.eigenvalues`` ``(k,)`` (``Lambda`` for LIB/Jacobian, ``D`` for PCA and the last layer).

    Raises:
        SelectionError: A hook point does not exist, or ``layers`` is not in forward order.
        NonFiniteError: NaN or infinite activations or Jacobians.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}'; choose from {METHODS}")
    if not isinstance(data, (list, tuple)):
        data = list(data)
    keys = _check_layers(model, data, layers)
    center = (method == "pca") if center is None else bool(center)
    grams = gram_matrices(model, data, keys, center=center, progress=progress, distributed=distributed)
    info: dict[str, Any] = {
        "gram_threshold": gram_threshold, "interaction_threshold": interaction_threshold,
        "drop_noninteracting": drop_noninteracting, "center": center,
        "examples": grams[keys[0]].examples, "reference": "Bushnaq et al. 2024, arXiv 2405.10928, sec. 2",
    }
    bases: dict[str, LayerBasis] = {}
    if method in ("neuron", "pca"):
        for key in keys:
            bases[key] = _static_basis(grams[key], method, gram_threshold)
        return Basis(tuple(keys), bases, method, model_signature(model), info)

    bar = progress_bar(len(keys), desc=f"{method} basis", enabled=progress)
    with bar:
        last = keys[-1]
        bases[last] = _static_basis(grams[last], "pca", gram_threshold, method=method)
        bar.update(1)
        for i in range(len(keys) - 2, -1, -1):
            key, nxt = keys[i], bases[keys[i + 1]]
            M = interaction_matrix(model, data, key, keys[i + 1], nxt.transform, chunk_size=chunk_size, mode=mode,
                                   distributed=distributed)
            bases[key] = _interaction_layer(
                grams[key], M, method, gram_threshold, interaction_threshold, drop_noninteracting
            )
            bar.update(1)
    return Basis(tuple(keys), {k: bases[k] for k in keys}, method, model_signature(model), info)


def _static_basis(gram: GramResult, kind: str, threshold: float, *, method: str | None = None) -> LayerBasis:
    name = method or kind
    mu = gram.mean if gram.centered else None
    if kind == "neuron":
        d = gram.dim
        eye = torch.eye(d, dtype=torch.float64)
        return LayerBasis(gram.point, eye, eye.clone(), gram.gram.diagonal().clone(), mu, "neuron")
    D, U = gram.eigh(threshold)
    return LayerBasis(gram.point, U.T.contiguous(), U.contiguous(), D, mu, name)


def _interaction_layer(gram: GramResult, M: Tensor, method: str, gram_threshold: float,
                       interaction_threshold: float, drop: bool) -> LayerBasis:
    D, U = gram.eigh(gram_threshold)
    mu = gram.mean if gram.centered else None
    if method == "lib":
        s = D.sqrt()
        Mw = (U * s).T @ M @ (U * s)  # D^{1/2} U^T M U D^{1/2}, step L3 in whitened coordinates
        lam, V = _sorted_eigh(Mw)
        lam = lam.clamp_min(0)
        live = lam > interaction_threshold * float(lam[0]) if lam.numel() else lam > 0
        if drop:
            lam, V = lam[live], V[:, live]
            scale = lam.sqrt()
        else:
            scale = torch.where(live, lam.sqrt(), torch.ones_like(lam))
        # C = Lambda^{1/2} V^T D^{-1/2} U^T  and  C^+ = U D^{1/2} V Lambda^{-1/2}  (step L3)
        C = scale[:, None] * (V.T @ (U / s).T)
        Cinv = ((U * s) @ V) / scale[None, :]
    else:  # "jacobian": the same rotation without whitening or scaling
        lam, V = _sorted_eigh(U.T @ M @ U)
        lam = lam.clamp_min(0)
        live = lam > interaction_threshold * float(lam[0]) if lam.numel() else lam > 0
        if drop:
            lam, V = lam[live], V[:, live]
        C = V.T @ U.T
        Cinv = U @ V
    return LayerBasis(gram.point, C.contiguous(), Cinv.contiguous(), lam.contiguous(), mu, method)
