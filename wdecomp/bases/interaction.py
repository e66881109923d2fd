r"""The Local Interaction Basis (LIB) as rib runs it, its named variants, and its controls.

Bushnaq et al. 2024, "The Local Interaction Basis: Identifying Computationally-Relevant and Sparsely
Interacting Features in Neural Networks" (arXiv 2405.10928), sec. 2 (steps L1-L3) and the appendix
on transformers; reference implementation Apollo Research's ``rib`` (commit 7a6199f,
``rib.interaction_algos.calculate_interaction_rotations``). The default (``variant="rib"``) is
the configuration of the paper's runs (``rib_scripts/rib_build/sample_configs_modadd``:
``center: true``, ``basis_formula: jacobian``, ``integration_method: gradient``,
``rotate_final_node_layer: false``, float64). See ``docs/concepts/lib-variants.md`` for the table.

For hook points ``l = 1..L`` in forward order, activation rows ``f^l_p(x) in R^{d_l}`` at positions
``p = 1..P_l`` (every axis but the batch and feature axes; :mod:`wdecomp.bases.section`) and the
bias folded in as a constant input ``a = [f; s]``, ``s = 1`` (:class:`~wdecomp.bases.section.Section`):

**L1, L2 (PCA, centred, constant first).** ``mu = E f``, ``Cov = E (f - mu)(f - mu)^T = U D U^T``
(directions with ``D <= gram_threshold`` dropped, relative to ``max D`` unless
``truncation="absolute"``). The Gram matrix of the centred extended activation ``[f - mu s; s]``
is ``diag(Cov, 1)``: its constant eigenvector comes first (rib's ``centering_matrix``,
``move_const_dir_first``). Whitened coordinates ``z = P^+ a`` with

    P = [[mu, U D^{1/2}], [1, 0]]          (d+1, 1+r),    a = P z,   z_0 = s.

**L3 (interaction rotation, ``formula="jacobian"``, rib's ``basis_formula="jacobian"``).** With the
next layer's coordinates ``c^{l+1} = C^{l+1}(a^{l+1})`` already built (from the output back) and
``J_{tp}(x) = d c^{l+1}_t / d a^l_p`` (``(k_{l+1}, d_l + 1)`` for target position ``t``, source
position ``p``), rib's ``M'`` sums over source positions *outside* the product
(``M_dash_and_Lambda_dash_pre_forward_hook_fn``, ``"r batch s j, r batch s jprime -> j jprime"``):

    M' = 1/(N P_l) sum_x sum_p sum_t J_{tp}(x)^T J_{tp}(x),          M = P^T M' P.

The constant direction is kept apart (rib's ``masked_eigendecompose`` with one masked direction):
``Lambda_0 = M_00`` and ``M_{1:,1:} = V Lambda V^T`` (descending). Coordinates

    c_0 = Lambda_0^{1/2} s,     c_{1:} = Lambda^{1/2} V^T D^{-1/2} U^T (f - mu s)

(``C = P Vbar Lambda^{1/2}`` in rib's row convention), so ``E c c^T`` restricted to the
non-constant directions is ``diag(Lambda)``. Directions with ``Lambda <= interaction_threshold``
(relative to the largest, or absolute) are dropped (rib's ``build_sorted_lambda_matrices``), or
kept unscaled with ``drop_noninteracting=False``. With ``integration`` other than
``"gradient"``, ``J`` is the integrated Jacobian ``sum_m w_m J(alpha_m a)`` along ``alpha a``
(rib's ``calc_basis_jacobian`` with ``n_intervals > 0``; "integrated-gradient M").

**The last hook point** (no next layer, ``rotate_final=False``, rib's
``rotate_final_node_layer: false``): the identity on ``f`` (its neurons); when it is not the model's
output it also carries the constant ``s`` as node 0, as rib's non-output node layers do.
``rotate_final=True``: PCA with the constant first (rib's ``basis_formula="svd"`` with centring).

Named variants (select by ``variant=``; each option can also be set on its own):

* ``"rib"`` (default): the above.
* ``"rib-uncentred"``: rib's ``center: false`` (``center=False, constant=True``). The Gram matrix
  of ``a = [f; s]`` itself, ``E a a^T = U D U^T`` (no centring matrix: rib's ``W = U``; the
  constant is one more input column, so it mixes into the PCA directions), ``R = U D^{-1/2}``,
  ``M = R^+ M' R^{+T}`` with ``M'`` as above, and no direction masked (``masked_eigendecompose``
  with ``n_masked = 0``): ``M = V Lambda V^T`` whole, ``C = R V L``, ``C^+ = L^{-1} V^T R^+``
  (``build_sorted_lambda_matrices``, ``ignore_first_n = 0``). Every coordinate is affine in
  ``f``, ``c = Lambda^{1/2} V^T D^{-1/2} U^T [f; s]``, and no node is constant: the
  :class:`~wdecomp.bases.base.LayerBasis` holds the general folded form (``const_column``,
  ``const_row``). The last hook point (``rotate_final=False``, not the output) is the identity on
  ``[f; s]`` (rib's ``C = None`` on the folded activation); ``rotate_final=True`` and
  ``method="pca"`` give rib's uncentred ``svd``, ``C = U``. ``method="jacobian"`` with
  ``constant=True`` is refused (that control has no folded form).
* ``"wdecomp-uncentred"``: wdecomp before this version: uncentred Gram ``E f f^T``, no constant
  node, the Jacobian summed over source positions before the product
  (``M = 1/N sum_x (sum_p J_p)^T (sum_p J_p)``, ``sequence="summed"``), the last layer rotated to
  PCA. Not a rib mode (rib's ``center=false`` keeps the constant mixed into the Gram matrix:
  ``"rib-uncentred"``).
* ``"wdecomp-centred"``: as ``"wdecomp-uncentred"`` with centred activations; on the non-constant
  directions this equals ``"rib"`` for non-sequence models.

Other rib options: ``formula="(1-0)*alpha"`` (the default ``basis_formula`` of rib's
``calc_basis_integrated_gradient`` and ``M_dash_and_Lambda_dash_pre_forward_hook_fn``; rib's
``RibBuildConfig`` defaults to ``"jacobian"``): ``g_p = sum_m w_m sum_t J_{tp}(alpha_m a)^T c^{l+1}_t(a)``
(``a = [f; s]``, the constant scaled by ``alpha`` too), ``M' = 1/(NP) sum g_p g_p^T``, and ``Lambda``
the attribution ``|diag(Vbar^T P^T Lambda' P^{+T} Vbar)|`` with ``Lambda' = 1/(NP) sum g_p a_p^T``
(rib's ``(V.T @ R_pinv @ Lambda_dash @ R @ V).diag().abs()``), directions sorted by it
(``build_sorted_lambda_matrices``); and ``formula="(1-alpha)^2"`` (the October version: ``g_p = sum_m
w_m 2 sum_t J_{tp}(alpha_m a)^T (c^{l+1}_t(a) - c^{l+1}_t(alpha_m a))``; it needs a quadrature rule,
``integration="gradient"`` is refused). Both equal an independent numpy re-implementation of rib's
formulas to 1e-10 (Lambda, coordinates, ``C``, ``C^+``; centred and ``"rib-uncentred"``; Gauss-Legendre,
trapezoidal and, for ``"(1-0)*alpha"``, gradient rules) in
``tests/bases/test_bases_lib_rib.py::test_attribution_formulas_equal_rib_on_mlp`` /
``..._on_sequence_model``; ``truncation="rib"`` (rib's ``truncation_threshold``,
``1e-15`` in the paper's configs, on ``|eigenvalue|`` as rib's ``eigendecompose`` takes absolute
values) or ``"absolute"`` (on the signed eigenvalue). The default here is relative ``1e-10``; rib's
rule also keeps round-off directions (on rib's own modular-addition checkpoint: 110 directions
at ``ln2.0`` against 26 with the default, the extra ones with ``Lambda`` below ``1e-10`` of the
largest) whose eigenvectors are set by round-off; the constant's ``Lambda`` at ``ln1.0`` comes
out 116,700 with the default, 116,762 with ``"rib"``, and rib saved 116,758
(``benchmarks/results/lib_rib_modular.md``).
**Layer-norm variance points** (``"ln:variance"``, :class:`~wdecomp.hooks.HookPoint`: ``[v; f]``,
rib's ``ln1_out`` / ``ln2_out`` node layers): with ``isolate_ln_var=True`` (rib's default) the
variance coordinate ``v`` (0) is kept out of the PCA mixing (rib's ``masked_eigendecompose(gram, 1)``:
``U = diag(1, U')`` with ``Cov_{1:,1:} = U' D' U'^T``, ``D = [Cov_00, D']``) and out of the rotation
(``masked_eigendecompose(M, n_masked)``, ``n_masked`` = 1 for ``v`` plus 1 for the constant):
``Lambda_v = M_vv``, the variance node's coordinate ``c_v = Lambda_v^{1/2} (v - mu_v) / Cov_00^{1/2}``,
node 1 after the constant (node 0 without one), unsorted; its index is recorded in
``basis.info["ln_variance_nodes"]``. rib applies this only at node layers named ``ln1_out`` and
``ln2_out`` (not ``ln_final_out``); here at every variance point.

Cost (``formula="jacobian"``; ``benchmarks/results/lib.md``): ``sequence="summed"`` takes the
Jacobian along one direction shared by all source positions (``d + 1`` tangents per example,
:func:`~wdecomp.bases.section.summed_jacobians`); the per-position ``M'`` needs every block
``J_tp``, but source (target) positions that share no target (source) position share tangents
(:func:`~wdecomp.bases.section.position_jacobians`: ``d + 1`` for a position-wise section instead
of ``P (d + 1)``; a causal attention layer takes the whole Jacobian); ``stochastic_sources=R``
takes ``R k`` VJPs. The feature columns are taken with the folded constant held fixed (no tangents
through the bias terms), the constant's column from separate tangents.

Controls with the same interface: ``"pca"`` (rib's ``"svd"``), ``"neuron"`` (``C = I``),
``"jacobian"`` (a wdecomp control: ``M`` diagonalised without whitening or scaling, ``C = V^T U^T``
orthonormal; no constant node).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import vmap

from wdecomp import hooks
from wdecomp.bases.base import Basis, LayerBasis, model_signature
from wdecomp.bases.capture import GramResult, gram_matrices
from wdecomp.bases.section import (
    Section,
    TargetCoordinates,
    batched_jacobians,
    build_section,
    feature_axis,
    jacobian_working_set,
    memory_guard,
    plan_chunk,
    position_jacobians,
    quadrature,
    summed_jacobians,
    to_rows,
)
from wdecomp.batch import as_batches, chunks, num_examples, slice_examples, split
from wdecomp.distributed import all_reduce_sum_many
from wdecomp.errors import ArgumentError, DataError, NonFiniteError, SelectionError
from wdecomp.progress import progress_bar

__all__ = ["FORMULAS", "METHODS", "VARIANTS", "LibOptions", "interaction_basis", "interaction_jacobians",
           "interaction_matrix"]

METHODS = ("lib", "pca", "neuron", "jacobian")
FORMULAS = ("jacobian", "(1-0)*alpha", "(1-alpha)^2")
SEQUENCE_FORMS = ("per-position", "summed")
TRUNCATIONS = ("relative", "absolute", "rib")


@dataclass(frozen=True)
class LibOptions:
    """The choices that make one LIB variant (see the module docstring for each).

    Attributes:
        center: Centre the activations (rib's ``center``).
        constant: Fold biases in as a constant input: with ``center`` a constant node, first; without
            it rib's uncentred mode (the constant mixed into every direction, ``"rib-uncentred"``).
        formula: rib's ``basis_formula``: ``"jacobian"``, ``"(1-0)*alpha"`` or ``"(1-alpha)^2"``.
        integration: Quadrature rule for ``M`` (rib's ``integration_method``): ``"gradient"`` or a
            rule of :func:`~wdecomp.bases.section.quadrature`.
        steps: Quadrature nodes (rib's ``n_intervals + 1``).
        sequence: ``"per-position"`` (rib) or ``"summed"`` (wdecomp before).
        rotate_final: Rotate the last hook point to PCA (rib's ``rotate_final_node_layer``).
        truncation: ``"relative"`` (thresholds times the largest eigenvalue), ``"absolute"``, or
            ``"rib"`` (absolute on ``|eigenvalue|``: rib's ``eigendecompose`` takes absolute values, so
            round-off-negative eigenvalues above the threshold in magnitude are kept, as rib does).
        stochastic_sources: ``R`` random +-1 combinations of the target positions instead of every
            target position (rib's ``n_stochastic_sources_basis_pos``): an unbiased estimate of ``M'``,
            ``1/(N P R) sum_x sum_r sum_p J_{rp}^T J_{rp}`` with ``J_{rp} = sum_t phi_{rt} J_{tp}``,
            at ``R/P_t`` of the cost; exact without positions. ``None``: exact.
        seed: Seed of the random signs.
        isolate_ln_var: At a layer-norm variance point (``"ln:variance"``) the variance is its own node,
            second after the constant (rib's ``isolate_ln_var``; module docstring).
    """

    center: bool = True
    constant: bool = True
    formula: str = "jacobian"
    integration: str = "gradient"
    steps: int = 1
    sequence: str = "per-position"
    rotate_final: bool = False
    truncation: str = "relative"
    stochastic_sources: int | None = None
    seed: int = 0
    isolate_ln_var: bool = True


VARIANTS: dict[str, LibOptions] = {
    "rib": LibOptions(),
    "wdecomp-uncentred": LibOptions(center=False, constant=False, sequence="summed", rotate_final=True),
    "wdecomp-centred": LibOptions(center=True, constant=False, sequence="summed", rotate_final=True),
    "rib-uncentred": LibOptions(center=False, constant=True),
}


def _options(variant: str, overrides: dict[str, Any]) -> LibOptions:
    if variant not in VARIANTS:
        raise ValueError(f"unknown LIB variant '{variant}'; choose from {sorted(VARIANTS)}")
    base = VARIANTS[variant].__dict__
    opts = LibOptions(**{**base, **{k: v for k, v in overrides.items() if v is not None}})
    if opts.formula not in FORMULAS:
        raise ValueError(f"formula must be one of {FORMULAS}, not '{opts.formula}'")
    if opts.sequence not in SEQUENCE_FORMS:
        raise ValueError(f"sequence must be one of {SEQUENCE_FORMS}, not '{opts.sequence}'")
    if opts.truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {TRUNCATIONS}, not '{opts.truncation}'")
    if opts.stochastic_sources is not None and (opts.stochastic_sources < 1 or opts.formula != "jacobian"
                                                or opts.sequence != "per-position"):
        raise ValueError("stochastic_sources must be >= 1 and needs formula='jacobian', sequence='per-position'")
    if opts.formula != "jacobian" and opts.sequence != "per-position":
        raise ValueError(f"formula '{opts.formula}' is defined per position only (sequence='per-position')")
    if opts.formula == "(1-alpha)^2" and opts.integration == "gradient":
        raise ArgumentError("formula='(1-alpha)^2' with integration='gradient' (the one node alpha = 1, where "
                            "c(a) - c(alpha a) = 0) has M' = Lambda' = 0 (rib asserts Lambda' != 0): pass a "
                            "quadrature rule, e.g. integration='gauss-legendre'")
    quadrature(opts.steps, opts.integration)  # validates the rule and steps
    return opts


# ----------------------------------------------------------------------------- Jacobians
@dataclass
class _Pair:
    """Everything needed to evaluate ``a^l -> c^{l+1}`` on chunks of data."""

    section: Section
    target: TargetCoordinates
    d: int

    def fn(self, a: Tensor, x: Any) -> Tensor:
        rows, s = self.section(a, x)
        return self.target(rows, s)

    def held(self, a: Tensor, x: Any) -> Tensor:
        """:meth:`fn` with the constant held fixed (no tangents on the bias terms; ``d / d s = 0``)."""
        rows, s = dataclasses.replace(self.section, hold_constant=True)(a, x)
        return self.target(rows, s)

    def projected(self, a: Tensor, xp: tuple[Any, Tensor]) -> Tensor:
        """``(R, k)``: the target coordinates combined over positions by signs ``phi`` ``(R, P_t)``."""
        x, phi = xp
        return phi @ self.fn(a, x)

    def rows(self, acts: dict[str, Tensor]) -> Tensor:
        """Source rows ``(B, P, d [+1])`` (the constant column appended when folded)."""
        r = to_rows(acts[self.section.source], self.section.source_axis)
        if self.section.constant:
            r = torch.cat([r, torch.ones_like(r[..., :1])], dim=-1)
        return r


def _pair(model: nn.Module, x: Any, source: str, target: str, target_basis: LayerBasis | None, constant: bool,
          feature_dims: dict[str, int | None]) -> _Pair:
    sec = build_section(model, x, source, target, constant=constant, feature_dims=feature_dims)
    d = sec.source_shape[sec.source_axis - 1] if sec.source_shape else 1
    return _Pair(sec, TargetCoordinates(target_basis), int(d))


def _per_example_bytes(model: nn.Module, x: Any, source: str, target: str, k_t: int | None, steps: int,
                       summed_over: int | None = None) -> int:
    """``summed_over``: the source's feature axis when the Jacobian is taken along one direction
    shared by every position (:func:`summed_jacobians`: ``d + 1`` inputs, not ``P (d + 1)``)."""
    def coordinates(a_s: Tensor, a_t: Tensor) -> tuple[int, int]:  # the constant is one more source input
        out = a_t.numel() if k_t is None else a_t.numel() // max(a_t.shape[-1], 1) * k_t
        n_in = a_s.numel() if summed_over is None or a_s.dim() == 0 else a_s.shape[summed_over - 1]
        return n_in + 1, max(out, 1)

    return jacobian_working_set(model, x, source, target, coordinates, steps)


def interaction_jacobians(
    model: nn.Module,
    data: Any,
    source: str,
    target: str,
    transform: Tensor | None = None,
    *,
    chunk_size: int | None = None,
    max_memory: int | None = None,
    mode: str = "auto",
    feature_dim: int | None = None,
) -> Iterator[Tensor]:
    """Per-example, per-position Jacobians of the next layer's coordinates (no constant node).

    ``J_{tp}(x) = T d f^target_t / d f^source_p`` (``transform`` ``T``: ``(k_t, d_t)``, default
    the identity) for source position ``p`` and target position ``t``.

    Yields:
        Tensors ``(b, P_t, k_t, P_s, d_s)``, a chunk of examples at a time.
    """
    src, tgt = str(hooks.HookPoint.parse(source)), str(hooks.HookPoint.parse(target))
    T = None if transform is None else transform.to(torch.float64)
    lb = None if T is None else LayerBasis(tgt, T, torch.linalg.pinv(T), torch.ones(T.shape[0], dtype=T.dtype))
    batches = as_batches(data, what="interaction_jacobians")
    pair = None
    for batch in batches:
        inputs = split(batch)[0]
        if pair is None:
            first = next(iter(chunks(inputs, 1)))
            pair = _pair(model, first, src, tgt, lb, False, {src: feature_dim})
            size = plan_chunk(_per_example_bytes(model, first, src, tgt, None if T is None else T.shape[0], 1),
                              chunk_size, max_memory, f"Jacobians {src} -> {tgt}", num_examples(inputs))
        for x in chunks(inputs, size):
            with memory_guard(f"Jacobians {src} -> {tgt}", size):
                acts = hooks.run(model, x, read=[src, tgt])[1]
                J = next(batched_jacobians(pair.fn, pair.rows(acts), x, torch.ones(1), mode))
            if not torch.isfinite(J).all():
                raise NonFiniteError(f"Jacobian d '{tgt}' / d '{src}' contains NaN or inf")
            yield J


def interaction_matrix(
    model: nn.Module,
    data: Any,
    source: str,
    target: str,
    transform: Tensor | None = None,
    *,
    sequence: str = "per-position",
    chunk_size: int | None = None,
    max_memory: int | None = None,
    mode: str = "auto",
    feature_dim: int | None = None,
    distributed: bool = False,
) -> Tensor:
    """``M'`` over the source's features in float64, ``(d_s, d_s)``, no constant node.

    ``sequence="per-position"`` (rib): ``M' = 1/(N P_s) sum_x sum_p sum_t J_{tp}^T J_{tp}``;
    ``"summed"`` (wdecomp before): ``M' = 1/N sum_x sum_t (sum_p J_{tp})^T (sum_p J_{tp})``.
    Without positions both are ``E_x J^T J``. ``data`` may be a one-shot iterator (read once).
    ``distributed=True``: ``data`` is this rank's shard; sums and counts are all-reduced.

    Raises:
        DataError: The data hold no examples.
    """
    if sequence not in SEQUENCE_FORMS:
        raise ValueError(f"sequence must be one of {SEQUENCE_FORMS}, not '{sequence}'")
    M, count, positions = None, 0, 1
    for J in interaction_jacobians(model, data, source, target, transform, chunk_size=chunk_size,
                                   max_memory=max_memory, mode=mode, feature_dim=feature_dim):
        part, positions = _second_moment(J.to(torch.float64), sequence), J.shape[3]
        M = part if M is None else M + part
        count += J.shape[0]
    if M is None or count == 0:
        raise DataError("the data hold no examples")
    if distributed:
        M, n = all_reduce_sum_many([M, torch.tensor([float(count)], dtype=torch.float64)])
        count = int(n[0])
    M = M / (count * (positions if sequence == "per-position" else 1))
    return (M + M.T) / 2


def _second_moment(J: Tensor, sequence: str) -> Tensor:
    """``sum_x sum_p sum_t J_{tp}^T J_{tp}`` (or the summed form) of a ``(B, P_t, k, P_s, D)`` chunk."""
    if sequence == "summed":
        S = J.sum(3).reshape(-1, J.shape[-1])
        return S.T @ S
    rows = J.reshape(-1, J.shape[-1])  # (b, t, k, p) flattened: one GEMM
    return rows.T @ rows


# ----------------------------------------------------------------------------- the basis
def _check_layers(model: nn.Module, first_inputs: Any, layers: Sequence[str]) -> list[str]:
    if not layers:
        raise SelectionError("interaction_basis needs at least one layer (hook point)")
    keys = [str(hooks.HookPoint.parse(p)) for p in layers]
    if len(set(keys)) != len(keys):
        raise SelectionError(f"duplicate hook points in {keys}")
    for p in keys:
        hooks.resolve_module(model, hooks.HookPoint.parse(p).module)
    order = hooks.forward_order(model, keys, first_inputs)
    if order != list(range(len(keys))):
        raise SelectionError(f"layers must be given in forward order; the forward pass reaches them as "
                             f"{[keys[i] for i in order]}")
    return keys


def _sorted_eigh(A: Tensor) -> tuple[Tensor, Tensor]:
    evals, evecs = torch.linalg.eigh((A + A.T) / 2)
    return evals.flip(0), evecs.flip(1)


def _rib_abs(evals: Tensor, evecs: Tensor, truncation: str) -> tuple[Tensor, Tensor]:
    """rib's ``eigendecompose``: eigenvalues by absolute value, sorted descending (``truncation="rib"``)."""
    if truncation != "rib":
        return evals, evecs
    order = torch.argsort(evals.abs(), descending=True, stable=True)
    return evals.abs()[order], evecs[:, order]


def _keep(values: Tensor, threshold: float, truncation: str, top: float | None = None) -> Tensor:
    if truncation in ("absolute", "rib"):
        return values > threshold
    top = float(values.max()) if top is None and values.numel() else (top or 0.0)
    return values > max(threshold * top, torch.finfo(torch.float64).tiny)


def _masked_eigh(A: Tensor, n: int, truncation: str) -> tuple[Tensor, Tensor]:
    """rib's ``masked_eigendecompose``: coordinates ``0..n-1`` kept as they are (their diagonal entries
    and unit vectors, first), the rest eigendecomposed, descending."""
    evals, evecs = _rib_abs(*_sorted_eigh(A[n:, n:]), truncation)
    return torch.cat([A.diagonal()[:n], evals]), torch.block_diag(torch.eye(n, dtype=A.dtype), evecs)


def _ln_var(point: str, opts: LibOptions, U: Tensor | None = None) -> int:
    """1 at a layer-norm variance point with ``isolate_ln_var`` (and, given ``U``, its variance direction
    ``e_0`` kept by the truncation as ``U``'s first column), else 0."""
    if not (opts.isolate_ln_var and hooks.HookPoint.parse(point).side == "variance"):
        return 0
    return int(U is None or (U.shape[1] > 0 and bool(U[0, 0] == 1) and not bool(U[1:, 0].any())))


def _variance_nodes(bases: dict[str, LayerBasis], opts: LibOptions) -> dict[str, int]:
    """Point -> index of the node that reads the variance coordinate alone, at isolated variance points."""
    found = {}
    for key, lb in bases.items():
        i, T = (0 if lb.constant is None else 1), lb.transform
        if _ln_var(key, opts) and T.shape[0] > i and bool(T[i, 0] != 0) and not bool(T[i, 1:].any()):
            found[key] = i
    return found


def _pca(gram: GramResult, opts: LibOptions, threshold: float) -> tuple[Tensor, Tensor]:
    """``(D, U)`` of the covariance (``center``) or Gram matrix, truncated; at a variance point the
    variance coordinate first, unmixed (``isolate_ln_var``; module docstring)."""
    evals, evecs = _masked_eigh(gram.gram, _ln_var(gram.point, opts), opts.truncation)
    keep = _keep(evals, threshold, opts.truncation)
    return evals[keep].clamp_min(0), evecs[:, keep]


def interaction_basis(
    model: nn.Module,
    data: Any,
    layers: Sequence[str],
    method: str = "lib",
    *,
    variant: str = "rib",
    center: bool | None = None,
    constant: bool | None = None,
    formula: str | None = None,
    integration: str | None = None,
    steps: int | None = None,
    sequence: str | None = None,
    rotate_final: bool | None = None,
    truncation: str | None = None,
    stochastic_sources: int | None = None,
    seed: int = 0,
    isolate_ln_var: bool | None = None,
    gram_threshold: float = 1e-10,
    interaction_threshold: float = 1e-10,
    drop_noninteracting: bool = True,
    feature_dim: int | dict[str, int] | None = None,
    chunk_size: int | None = None,
    max_memory: int | None = None,
    mode: str = "auto",
    progress: bool | None = None,
    distributed: bool = False,
) -> Basis:
    """A basis for the activations at each of ``layers``: LIB (as rib runs it by default) or a control.

    Args:
        model: The network (eval mode).
        data: One batch (a tensor, dict or ``(inputs, targets)`` tuple), a list of batches, a
            ``DataLoader``, or a one-shot iterator (kept in memory for the several passes needed);
            see :mod:`wdecomp.batch`.
        layers: Hook points in forward order (``["embed", "mlp.act", "unembed"]``).
        method: ``"lib"``, ``"pca"`` (rib's ``"svd"``), ``"neuron"`` or ``"jacobian"`` (module docstring).
        variant: ``"rib"`` (default; the paper's configuration), ``"rib-uncentred"`` (rib's
            ``center: false``: the Gram matrix of ``[f; 1]``, no masked direction, the constant mixed
            into every direction; module docstring), ``"wdecomp-uncentred"`` or ``"wdecomp-centred"``
            (:data:`VARIANTS`); the options below override it one by one.
        center: Centre the activations (``LayerBasis.center`` holds the mean).
        constant: Fold the biases in as a constant input (:mod:`wdecomp.bases.section`): with
            ``center`` a constant node first, without it rib's uncentred form (``"rib-uncentred"``;
            ``LayerBasis.const_column`` / ``const_row``, no constant node).
        formula: rib's ``basis_formula`` (:data:`FORMULAS`).
        integration: ``"gradient"`` or a quadrature rule for ``M`` (integrated-gradient M).
        steps: Quadrature nodes.
        sequence: ``"per-position"`` (rib) or ``"summed"``.
        rotate_final: Rotate the last hook point to its PCA basis.
        truncation: ``"relative"``, ``"absolute"`` or ``"rib"`` (rib's ``truncation_threshold``
            applied to ``|eigenvalue|``; :class:`LibOptions`).
        stochastic_sources: Estimate ``M'`` with this many random sign combinations of the target
            positions (rib's ``n_stochastic_sources_basis_pos``; :class:`LibOptions`), or exactly (``None``).
        seed: Seed of those signs.
        isolate_ln_var: At a layer-norm variance point (``"ln:variance"``) the variance is its own
            node, second after the constant (default on, as rib's ``isolate_ln_var``).
        gram_threshold: Covariance (Gram) eigenvalues at or below it are null directions, dropped.
        interaction_threshold: ``Lambda`` at or below it: non-interacting directions.
        drop_noninteracting: Drop those (rib) or keep them unscaled (then the basis stays
            invertible on the data's span and the network is unchanged exactly).
        feature_dim: The feature axis of the activations, one for all hook points or per point
            (default: channels for convolutions and 4-D/5-D activations, else the last axis).
            Every other axis is a position.
        chunk_size: Examples per vectorised Jacobian call; default from ``max_memory``.
        max_memory: Memory budget in bytes for one chunk's Jacobians (default a quarter of the
            memory available, at most 2 GiB).
        mode: ``"forward"``, ``"reverse"`` or ``"auto"`` Jacobians.
        progress: Progress bar over layers.
        distributed: ``data`` is this rank's shard: Gram and interaction matrices are
            all-reduced (:mod:`wdecomp.distributed`); every rank computes the same basis.

    Returns:
        A :class:`Basis`; ``basis[layer].eigenvalues`` are ``Lambda`` (LIB; the constant's first),
        ``D`` (PCA) or ``M``'s eigenvalues (``"jacobian"``); ``basis.info`` records every option.

    Raises:
        SelectionError: A hook point does not exist, or ``layers`` is not in forward order.
        NonFiniteError: NaN or infinite activations or Jacobians.
        DataError: Malformed or empty data.
        DenseTooLargeError: Out of memory (names ``chunk_size`` / ``max_memory``).
        ArgumentError: ``method="jacobian"`` with ``constant=True`` and ``center=False``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}'; choose from {METHODS}")
    opts = _options(variant, dict(center=center, constant=constant, formula=formula, integration=integration,
                                  steps=steps, sequence=sequence, rotate_final=rotate_final, truncation=truncation,
                                  stochastic_sources=stochastic_sources, seed=seed,
                                  isolate_ln_var=isolate_ln_var))
    if method == "neuron" or (method == "jacobian" and constant is None):
        opts = LibOptions(**{**opts.__dict__, "constant": False})
    if method == "jacobian" and opts.constant and not opts.center:
        raise ArgumentError("method='jacobian' (a wdecomp control without a constant node) has no form with the "
                            "constant folded in uncentred (variant='rib-uncentred', center=False, constant=True); "
                            "pass constant=False")
    batches = as_batches(data, what="interaction_basis")
    first = next(iter(batches), None)
    if first is None:
        raise DataError("the data hold no batches")
    first_inputs = split(first)[0]
    keys = _check_layers(model, first_inputs, layers)
    probe = next(iter(chunks(first_inputs, 1)))
    acts = hooks.run(model, probe, read=keys)[1]
    fdims = feature_dim if isinstance(feature_dim, dict) else dict.fromkeys(keys, feature_dim)
    fdims = {str(hooks.HookPoint.parse(k)): v for k, v in fdims.items()}
    axes = {k: feature_axis(model, k, acts[k].dim(), fdims.get(k)) for k in keys}
    center_ = opts.center and method != "neuron"
    grams = gram_matrices(model, batches, keys, center=center_, constant=opts.constant and not center_,
                          progress=progress, distributed=distributed, feature_dim={k: axes[k] for k in keys})
    out = hooks.run(model, probe)[0]
    is_output = {k: isinstance(out, Tensor) and out.shape == acts[k].shape and torch.equal(out, acts[k])
                 for k in keys}
    info: dict[str, Any] = {
        **opts.__dict__, "variant": variant, "gram_threshold": gram_threshold,
        "interaction_threshold": interaction_threshold, "drop_noninteracting": drop_noninteracting,
        "examples": grams[keys[0]].examples, "feature_axes": axes,
        "reference": "Bushnaq et al. 2024, arXiv 2405.10928, sec. 2; rib calculate_interaction_rotations",
    }
    bases: dict[str, LayerBasis] = {}
    if method in ("neuron", "pca"):
        for key in keys:
            bases[key] = _static_basis(grams[key], method, opts, gram_threshold, not is_output[key])
        return Basis(tuple(keys), bases, method, model_signature(model), {**info, "ln_variance_nodes":
                                                                           _variance_nodes(bases, opts)})

    bar = progress_bar(len(keys), desc=f"{method} basis", enabled=progress)
    with bar:
        last = keys[-1]
        kind = "pca" if opts.rotate_final else "identity"
        bases[last] = _static_basis(grams[last], kind, opts, gram_threshold, not is_output[last], method=method)
        bar.update(1)
        for i in range(len(keys) - 2, -1, -1):
            key, nxt = keys[i], bases[keys[i + 1]]
            moments = _moments(model, batches, key, keys[i + 1], nxt, opts, fdims, axes, chunk_size, max_memory,
                               mode, distributed)
            bases[key] = _interaction_layer(grams[key], moments, method, opts, gram_threshold, interaction_threshold,
                                            drop_noninteracting)
            bar.update(1)
    ordered = {k: bases[k] for k in keys}
    info["ln_variance_nodes"] = _variance_nodes(ordered, opts)
    return Basis(tuple(keys), ordered, method, model_signature(model), info)


@dataclass
class _Moments:
    M: Tensor  # (D, D) over [f; s] (or f)
    Lam: Tensor | None  # Lambda' for the alpha formulas


def _moments(model: nn.Module, batches: Iterable[Any], source: str, target: str, target_basis: LayerBasis,
             opts: LibOptions, fdims: dict[str, int | None], axes: dict[str, int], chunk_size: int | None,
             max_memory: int | None, mode: str, distributed: bool) -> _Moments:
    """rib's ``M'`` (and ``Lambda'``) for one layer pair, streamed over the data."""
    nodes, weights = quadrature(opts.steps, opts.integration)
    M: Tensor | None = None
    Lam: Tensor | None = None
    count, positions = 0, 1
    pair = None
    size = 1
    what = f"LIB {source} -> {target}"
    R = opts.stochastic_sources
    gen = torch.Generator().manual_seed(opts.seed)
    for batch in batches:
        inputs = split(batch)[0]
        if pair is None:
            probe = next(iter(chunks(inputs, 1)))
            pair = _pair(model, probe, source, target, target_basis, opts.constant, {source: axes[source],
                                                                                     target: axes[target]})
            summed = opts.sequence == "summed" and opts.formula == "jacobian"
            size = plan_chunk(_per_example_bytes(model, probe, source, target, target_basis.size, 1,
                                                 axes[source] if summed else None),
                              chunk_size, max_memory, what, num_examples(inputs))
        for x in chunks(inputs, size):
            with memory_guard(what, size):
                acts = hooks.run(model, x, read=[source, target])[1]
                a = pair.rows(acts)
                grads: Tensor | None = None
                if opts.formula != "jacobian":
                    with torch.no_grad():
                        h1 = vmap(pair.fn)(a, x)
                fn, xs = pair.fn, x
                jacobians = batched_jacobians
                if R is not None:  # rib's stochastic sources over target positions
                    p_t = vmap(pair.fn)(a[:1], slice_examples(x, 0, 1)).shape[1]
                    phi = (torch.randint(0, 2, (a.shape[0], R, p_t), generator=gen) * 2 - 1).to(a.dtype)
                    fn, xs = pair.projected, (x, phi)
                elif opts.formula == "jacobian":  # only J^T J is needed: fewer tangents, same sums
                    jacobians = summed_jacobians if opts.sequence == "summed" else position_jacobians
                extra = {"held": pair.held} if jacobians is not batched_jacobians and opts.constant else {}
                for alpha, w, J in zip(nodes.tolist(), weights.tolist(), jacobians(fn, a, xs, nodes, mode, **extra)):
                    J = J.to(torch.float64)
                    if opts.formula == "jacobian":
                        grads = w * J if grads is None else grads + w * J
                        continue
                    if opts.formula == "(1-0)*alpha":
                        coef = h1
                    else:
                        with torch.no_grad():
                            coef = 2 * (h1 - vmap(pair.fn)(alpha * a, x))
                    g = w * torch.einsum("btk,btkpj->bpj", coef.to(torch.float64), J)
                    grads = g if grads is None else grads + g
            assert grads is not None
            if not torch.isfinite(grads).all():
                raise NonFiniteError(f"Jacobian d '{target}' / d '{source}' contains NaN or inf")
            if opts.formula == "jacobian":
                part, positions = _second_moment(grads, opts.sequence), a.shape[1]
            else:
                positions = grads.shape[1]
                part = torch.einsum("bpi,bpj->ij", grads, grads)
                lam = torch.einsum("bpi,bpj->ij", grads, a.detach().to(torch.float64))
                Lam = lam if Lam is None else Lam + lam
            M = part if M is None else M + part
            count += num_examples(x)
    if M is None or count == 0:
        raise DataError("the data hold no examples")
    if distributed:
        extra = [Lam] if Lam is not None else []
        reduced = all_reduce_sum_many([M, torch.tensor([float(count)], dtype=torch.float64), *extra])
        M, count = reduced[0], int(reduced[1][0])
        Lam = reduced[2] if Lam is not None else None
    norm = count * (positions if opts.sequence == "per-position" else 1) * (R or 1)
    M = M / norm
    return _Moments((M + M.T) / 2, None if Lam is None else Lam / norm)


def _identity(point: str, d: int, constant: bool, method: str) -> LayerBasis:
    eye = torch.eye(d, dtype=torch.float64)
    if not constant:
        return LayerBasis(point, eye, eye.clone(), torch.ones(d, dtype=torch.float64), None, method)
    C = torch.cat([torch.zeros(1, d, dtype=torch.float64), eye])
    return LayerBasis(point, C, C.T.contiguous(), torch.ones(d + 1, dtype=torch.float64), None, method, 1.0)


def _general(point: str, C: Tensor, A: Tensor, eigenvalues: Tensor, method: str) -> LayerBasis:
    """The general folded :class:`LayerBasis` from ``C`` ``(k, d+1)`` and ``A`` ``(d+1, k)`` over ``[f; s]``
    (the constant last): ``c = C [f; s]``, ``[f; s] = A c``."""
    d = C.shape[1] - 1
    return LayerBasis(point, C[:, :d].contiguous(), A[:d].contiguous(), eigenvalues.contiguous(), None, method,
                      None, C[:, d].contiguous(), A[d].contiguous())


def _unfolded(gram: GramResult) -> GramResult:
    """The Gram matrix of ``f`` alone from one of ``[f; 1]``."""
    d = gram.dim
    return dataclasses.replace(gram, gram=gram.gram[:d, :d], constant=False) if gram.constant else gram


def _static_basis(gram: GramResult, kind: str, opts: LibOptions, threshold: float, allow_constant: bool, *,
                  method: str | None = None) -> LayerBasis:
    name = method or kind
    constant = opts.constant and allow_constant
    if constant and gram.constant:  # rib's center=false: identity / PCA on [f; s], the constant mixed in
        if kind == "identity":  # rib's C = None on the folded activation: c = [f; s]
            eye = torch.eye(gram.dim + 1, dtype=torch.float64)
            return _general(gram.point, eye, eye.clone(), torch.ones(gram.dim + 1, dtype=torch.float64), name)
        D, U = _pca(gram, opts, threshold)  # rib's basis_formula="svd" with center=false: C = U
        return _general(gram.point, U.T, U, D, name)
    gram = _unfolded(gram)
    if kind in ("neuron", "identity"):
        if kind == "neuron":
            d = gram.dim
            eye = torch.eye(d, dtype=torch.float64)
            return LayerBasis(gram.point, eye, eye.clone(), gram.gram.diagonal().clone(), None, "neuron")
        return _identity(gram.point, gram.dim, constant, name)
    D, U = _pca(gram, opts, threshold)
    mu = gram.mean if gram.centered else None
    if not constant:
        return LayerBasis(gram.point, U.T.contiguous(), U.contiguous(), D, mu, name)
    d = gram.dim
    C = torch.cat([torch.zeros(1, d, dtype=torch.float64), U.T])
    Cinv = torch.cat([torch.zeros(d, 1, dtype=torch.float64), U], dim=1)
    ev = torch.cat([torch.ones(1, dtype=torch.float64), D])
    return LayerBasis(gram.point, C.contiguous(), Cinv.contiguous(), ev, mu, name, 1.0)


def _interaction_layer(gram: GramResult, mom: _Moments, method: str, opts: LibOptions, gram_threshold: float,
                       interaction_threshold: float, drop: bool) -> LayerBasis:
    D, U = _pca(gram, opts, gram_threshold)  # over [f; 1] (the constant last) in rib's center=false mode
    mu = gram.mean if gram.centered else None
    d = gram.dim
    node = opts.constant and not gram.constant  # the constant node (centred); else no node is constant
    M = mom.M
    if method == "jacobian":  # wdecomp's control: no whitening, no scaling, no constant
        lam, V = _sorted_eigh(U.T @ M[:d, :d] @ U)
        lam = lam.clamp_min(0)
        if drop:
            live = _keep(lam, interaction_threshold, opts.truncation)
            lam, V = lam[live], V[:, live]
        return LayerBasis(gram.point, (V.T @ U.T).contiguous(), (U @ V).contiguous(), lam.contiguous(), mu, method)
    s = D.sqrt()
    W = U * s  # (d, r) or (d+1, r) over [f; 1]: whitened -> (centred) activations; rib's R^{+T}
    if node:
        P = torch.zeros(d + 1, W.shape[1] + 1, dtype=torch.float64)
        P[:d, 0], P[d, 0], P[:d, 1:] = mu, 1.0, W
    else:
        P = W
    Mz = P.T @ M @ P
    off = 1 if node else 0
    n_var = _ln_var(gram.point, opts, U)  # the variance node: kept apart, unsorted (rib's n_masked)
    lam, V = _masked_eigh(Mz[off:, off:], n_var, opts.truncation)
    if opts.formula != "jacobian":  # rib: Lambda is the attribution, directions sorted by it
        assert mom.Lam is not None
        Pplus = torch.zeros_like(P.T)
        if node:
            Pplus[0, d] = 1.0
            Pplus[1:, :d] = (U / s).T
            Pplus[1:, d] = -(U / s).T @ mu
        else:
            Pplus = (U / s).T
        Lz = P.T @ mom.Lam @ Pplus.T
        lam = torch.einsum("ij,ik,kj->j", V, Lz[off:, off:], V).abs()
        order = torch.cat([torch.arange(n_var), n_var + torch.argsort(lam[n_var:], descending=True)])
        lam, V = lam[order], V[:, order]
        lam0 = Lz[0, 0].abs() if node else None
    else:
        lam = lam.clamp_min(0)
        lam0 = Mz[0, 0].clamp_min(0) if node else None
    top = max(float(lam.max()) if lam.numel() else 0.0, float(lam0) if lam0 is not None else 0.0)
    live = _keep(lam, interaction_threshold, opts.truncation, top)
    if drop:
        lam, V = lam[live], V[:, live]
        scale = lam.sqrt()
    else:
        scale = torch.where(live, lam.sqrt(), torch.ones_like(lam))
    # c = Lambda^{1/2} V^T D^{-1/2} U^T (f - mu s)  and  C^+ = U D^{1/2} V Lambda^{-1/2}
    C = scale[:, None] * (V.T @ (U / s).T)
    Cinv = (W @ V) / scale[None, :]
    if gram.constant:  # rib's center=false: C = R V L and C^+ = L^{-1} V^T R^+ over [f; 1]
        return _general(gram.point, C, Cinv, lam, method)
    if lam0 is None:
        return LayerBasis(gram.point, C.contiguous(), Cinv.contiguous(), lam.contiguous(), mu, method)
    value = math.sqrt(float(lam0)) if float(lam0) > 0 else 1.0
    C = torch.cat([torch.zeros(1, d, dtype=torch.float64), C])
    Cinv = torch.cat([torch.zeros(d, 1, dtype=torch.float64), Cinv], dim=1)
    ev = torch.cat([lam0.reshape(1), lam])
    return LayerBasis(gram.point, C.contiguous(), Cinv.contiguous(), ev.contiguous(), mu, method, value)
