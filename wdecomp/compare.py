"""One honest table across decompositions at one hook point.

For each decomposition of the activations at a hook (SAEs of several widths and L0s, PCA-k,
LIB-k, or any replacement ``x -> x_hat``), spliced into the model in place of the activation:

* ``CE``: the spliced model's loss; ``loss recovered`` = SAELens' ``ce_loss_score``
  ``(CE_zero - CE) / (CE_zero - CE_clean)`` against zero ablation of the hook;
* ``KL``: mean ``KL(p_clean || p_spliced)`` per token;
* ``explained variance`` (pooled, :mod:`wdecomp.sae.metrics`) and ``L0`` (latents firing per
  activation for an SAE; ``k`` coefficients for a rank-``k`` projection, which are dense);
* the **compute-equivalent** ``C*(CE) / C*(CE_clean)`` on a scaling law, with the percentile
  interval over the law's samples (:func:`wdecomp.scaling.equivalents_table`: the bootstrap
  refits of one's own fit, e.g. of the model family's sweep ``char_scaling_sweep``), and the
  parameter-equivalent when the training tokens are given.

The baselines (``CE_clean``, ``CE_zero``, ``KL_zero``) are printed with every table, and the plot
puts loss recovered against the compute-equivalent on a log axis, so the gap between the two
scales shows at a glance: 99% "recovered" can be a model worth a few percent of the compute.

PCA-k and LIB-k keep the ``k`` directions of largest eigenvalue of a
:class:`~wdecomp.bases.base.LayerBasis` and project the rest out:
``f -> mu + C^+_S C_S (f - mu)`` (:func:`truncation`).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from wdecomp.ablation import score_splice
from wdecomp.bases import interaction_basis
from wdecomp.bases.base import LayerBasis
from wdecomp.errors import SelectionError
from wdecomp.hooks import HookPoint
from wdecomp.io import atomic_write_text
from wdecomp.sae.metrics import ReconstructionStats
from wdecomp.sae.model import SparseAutoencoder
from wdecomp.sae.train import hook_activations
from wdecomp.scaling import equivalents_table

__all__ = ["ComparisonRow", "ComparisonTable", "compare_decompositions", "truncation"]


def truncation(basis: LayerBasis, k: int) -> Callable[[Tensor], Tensor]:
    """``f -> mu + C^+_S C_S (f - mu)`` with ``S`` the ``k`` directions of largest eigenvalue
    (a constant node, which writes nothing to ``f``, is not counted in ``k``); in the general folded
    form (rib's ``center: false``, where every direction carries part of the constant)
    ``f -> A_S (C_S f + b_S)``, the ``f`` part of the kept directions."""
    order = torch.argsort(basis.eigenvalues.detach().to(torch.float64).cpu(), descending=True, stable=True)
    if basis.constant is not None:
        order = order[order != 0]
    if not 0 <= k <= order.numel():
        raise SelectionError(f"k={k} directions requested from a basis of {order.numel()} at '{basis.point}'")
    idx = order[:k]
    C = basis.transform[idx]
    Cp = basis.inverse[:, idx]
    P = (C.T @ Cp.T).to(torch.float64)  # (d, d): row-vector form f -> f P
    mu = None if basis.center is None else basis.center.to(torch.float64)
    shift = None if basis.const_column is None else (Cp @ basis.const_column[idx]).to(torch.float64)

    def fn(f: Tensor) -> Tensor:
        Pf = P.to(dtype=f.dtype, device=f.device)
        if shift is not None:
            return f @ Pf + shift.to(dtype=f.dtype, device=f.device)
        if mu is None:
            return f @ Pf
        m = mu.to(dtype=f.dtype, device=f.device)
        return m + (f - m) @ Pf

    return fn


@dataclass(frozen=True)
class ComparisonRow:
    """One decomposition's row (see the module docstring); NaN where not defined."""

    label: str
    kind: str
    l0: float
    explained_variance: float
    ce: float
    loss_recovered: float
    kl: float
    compute_equivalent: float
    ce_low: float
    ce_high: float
    parameter_equivalent: float
    note: str = ""


@dataclass(frozen=True)
class ComparisonTable:
    """Result of :func:`compare_decompositions`.

    Attributes:
        hook: The hook point.
        rows: One per decomposition, in the order given (SAEs, PCA-k, LIB-k, others).
        ce_clean: The unchanged model's loss.
        ce_zero: The loss with the hook zero-ablated.
        kl_zero: KL of the zero-ablated model.
        law: The law's name (``None``: no equivalents).
        interval_source: Where the intervals come from.
        confidence: Their coverage.
        n_tokens: Loss terms evaluated.
        notes: Caveats.
    """

    hook: str
    rows: tuple[ComparisonRow, ...]
    ce_clean: float
    ce_zero: float
    kl_zero: float
    law: str | None
    interval_source: str
    confidence: float
    n_tokens: int
    notes: tuple[str, ...] = ()

    def to_markdown(self) -> str:
        pct = f"{100 * self.confidence:g}%"
        lines = [
            f"Decompositions spliced at `{self.hook}` ({self.n_tokens} tokens). Baselines: CE clean "
            f"**{self.ce_clean:.4f}**, CE zero-ablated **{self.ce_zero:.4f}** nats (KL {self.kl_zero:.3f}); "
            f"law: {self.law or '-'} (intervals: {self.interval_source}).",
            "",
            f"| decomposition | L0 | explained var. | CE | loss recovered | KL | compute-equivalent [{pct}] | "
            "parameter-equivalent |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            ci = "-" if math.isnan(r.compute_equivalent) else (
                f"{r.compute_equivalent:.3g} [{r.ce_low:.3g}, {r.ce_high:.3g}]")
            pe = "-" if math.isnan(r.parameter_equivalent) else f"{r.parameter_equivalent:.3g}"
            lines.append(f"| {r.label} | {r.l0:.1f} | {r.explained_variance:.4f} | {r.ce:.4f} | "
                         f"{100 * r.loss_recovered:.2f}% | {r.kl:.4f} | {ci} | {pe} |")
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.to_markdown()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rows"] = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                     for r in d["rows"]]
        return d

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write the table as JSON (NaN as null), atomically."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    def plot(self, path: str | os.PathLike) -> Path:
        """Loss recovered against compute-equivalent (log axis, interval bars), one point per row."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        markers = {"sae": "o", "pca": "s", "lib": "^"}
        for r in self.rows:
            if math.isnan(r.compute_equivalent):
                continue
            lo = r.compute_equivalent - r.ce_low if not math.isnan(r.ce_low) else 0.0
            hi = r.ce_high - r.compute_equivalent if not math.isnan(r.ce_high) else 0.0
            ax.errorbar([r.compute_equivalent], [100 * r.loss_recovered], xerr=[[lo], [hi]],
                        marker=markers.get(r.kind, "D"), linestyle="none", capsize=3, label=r.label)
        ax.set_xscale("log")
        ax.set_xlabel(f"compute-equivalent C*(CE)/C*(CE_clean) ({self.law or 'no law'})")
        ax.set_ylabel("loss recovered (ce_loss_score), %")
        ax.set_title(f"{self.hook}: CE clean {self.ce_clean:.3f}, zero-ablated {self.ce_zero:.3f} nats")
        ax.axvline(1.0, color="0.7", linewidth=0.8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
        plt.close(fig)
        return out


def compare_decompositions(
    model: nn.Module,
    data: Sequence[Any],
    hook: str,
    *,
    saes: Mapping[str, SparseAutoencoder] | None = None,
    pca_k: Sequence[int] = (),
    lib_k: Sequence[int] = (),
    lib_layers: Sequence[str] | None = None,
    lib_data: Sequence[Any] | None = None,
    lib_options: Mapping[str, Any] | None = None,
    others: Mapping[str, Callable[[Tensor], Tensor]] | None = None,
    law: Any = None,
    tokens: float | None = None,
    n_params: float | None = None,
    confidence: float = 0.95,
    progress: bool | None = None,
) -> ComparisonTable:
    """Splice each decomposition at ``hook`` and score all of them on one table.

    Args:
        model: The network.
        data: ``(inputs, targets)`` batches (evaluation data).
        hook: The hook point (e.g. ``"blocks.0"``, the residual stream after block 0).
        saes: Label -> trained SAE.
        pca_k: Ranks of the PCA truncations.
        lib_k: Ranks of the LIB truncations.
        lib_layers: The hook points LIB is built over (``hook`` first; default ``[hook,
            "unembed"]``).
        lib_data: Batches for building the LIB basis (default ``data``; LIB's per-position
            Jacobians cost about ``T^2`` per window, so a few short windows may be all it can
            afford). PCA is always built on ``data``.
        lib_options: Keyword options of :func:`wdecomp.bases.interaction_basis` for LIB
            (``max_memory``, ``chunk_size``, ``variant``, ...).
        others: Label -> any other replacement ``x -> x_hat`` (L0 reported as NaN).
        law: Scaling law specification for :func:`wdecomp.scaling.equivalents_table` (a
            ``ScalingFit`` gives bootstrap intervals), or ``None``.
        tokens: Training tokens ``D`` of the model (parameter-equivalent).
        n_params: Parameters ``N`` of the model.
        confidence: Interval coverage.
        progress: Progress bars.

    Returns:
        :class:`ComparisonTable`.

    Raises:
        SelectionError: nothing to compare, or a rank larger than the basis.
    """
    point = str(HookPoint.parse(hook))
    reps: dict[str, tuple[str, Callable[[Tensor], Tensor], float | None]] = {}
    for label, sae in (saes or {}).items():
        reps[label] = ("sae", sae, None)
    if pca_k:
        pca = interaction_basis(model, data, [point], method="pca", progress=progress)[point]
        for k in pca_k:
            reps[f"PCA-{k}"] = ("pca", truncation(pca, k), float(k))
    if lib_k:
        layers = list(lib_layers) if lib_layers is not None else [point, "unembed"]
        lib = interaction_basis(model, lib_data or data, layers, method="lib", progress=progress,
                                **dict(lib_options or {}))[point]
        for k in lib_k:
            reps[f"LIB-{k}"] = ("lib", truncation(lib, k), float(k))
    for label, fn in (others or {}).items():
        reps[label] = ("other", fn, math.nan)
    if not reps:
        raise SelectionError("nothing to compare: give saes=, pca_k=, lib_k= or others=")
    # one streaming pass over the hook's activations for every replacement's reconstruction stats
    stats = {label: ReconstructionStats() for label in reps}
    with torch.no_grad():
        for x in hook_activations(model, data, point, buffer_batches=1, epochs=1):
            for label, (_kind, fn, _) in reps.items():
                if isinstance(fn, SparseAutoencoder):
                    xs = x.to(fn.W_enc.dtype)
                    f = fn.encode(xs)
                    stats[label].add(xs, fn.decode(f), f)
                else:
                    stats[label].add(x, fn(x), None)
    result = score_splice(model, point, {label: fn for label, (_, fn, _) in reps.items()}, data, top_n=0,
                          progress=progress)
    ce_clean, ce_zero = result.original.loss, result.zero_baseline.loss
    kl_zero = result.zero_baseline.kl if result.zero_baseline.kl is not None else math.nan
    losses = [lv.loss for lv in result.levels]
    notes: list[str] = []
    law_name, source = None, "no law given"
    eq = None
    if law is not None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            eq = equivalents_table(losses, ce_clean, law, D=tokens, N=n_params, confidence=confidence)
        law_name = eq.laws[0]
        source = eq.interval_sources[law_name]
        notes += list(eq.notes) + [str(w.message) for w in caught if str(w.message) not in eq.notes]
    rows = []
    for i, ((label, (kind, _, k)), level) in enumerate(zip(reps.items(), result.levels)):
        rec = stats[label].metrics()
        ce = level.loss
        rec_score = 1.0 if ce == ce_clean else (ce_zero - ce) / (ce_zero - ce_clean)
        nan = math.nan
        r = eq.for_law(law_name)[i] if eq is not None else None
        rows.append(ComparisonRow(
            label=label, kind=kind, l0=rec["l0"] if k is None else k,
            explained_variance=rec["explained_variance"], ce=ce, loss_recovered=rec_score,
            kl=level.kl if level.kl is not None else nan,
            compute_equivalent=r.frontier_fraction if r else nan, ce_low=r.frontier_low if r else nan,
            ce_high=r.frontier_high if r else nan, parameter_equivalent=r.parameter_fraction if r else nan,
            note=r.note if r else "",
        ))
    return ComparisonTable(
        hook=point, rows=tuple(rows), ce_clean=ce_clean, ce_zero=ce_zero, kl_zero=kl_zero, law=law_name,
        interval_source=source, confidence=confidence, n_tokens=result.n_terms, notes=tuple(dict.fromkeys(notes)),
    )
