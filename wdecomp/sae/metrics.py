"""SAE evaluation with SAELens' metric names, next to the compute-equivalent.

Names and definitions follow SAELens' ``sae_lens/evals.py`` (v6.18.0; functions
``get_downstream_reconstruction_metrics``, ``get_recons_loss``, ``_kl`` and
``get_sparsity_and_variance_metrics``), re-implemented here. Over all ``T`` activations
``x_t`` at the hook (every position of every example), with ``x_hat_t`` the SAE's reconstruction
and ``f_t`` its latents:

* ``ce_loss_score = (CE_zero - CE_sae) / (CE_zero - CE_clean)``: cross-entropy of the model with
  the hook zero-ablated, with the SAE spliced in, and unchanged (SAELens'
  ``get_downstream_reconstruction_metrics``). Identical to "loss recovered" against zero
  ablation (:func:`wdecomp.ablation.loss_recovered`).
* ``kl_div_score = (KL_zero - KL_sae) / KL_zero`` with ``KL = mean_t KL(p_clean || p_edited)``
  over next-token distributions (SAELens' ``_kl``).
* ``l0 = mean_t #{j : f_tj > 0}``.
* ``explained_variance = 1 - mean_t ||x_t - x_hat_t||^2 / (mean_t ||x_t||^2 - ||mean_t x_t||^2)``,
  the pooled definition (one variance over all activations, not a mean of per-batch ratios),
  as SAELens PR #443 ("Use conventional explained variance definition") states it. Note: the
  code of v6.18.0 subtracts ``(mean_d mean_t x_td^2)^2`` instead of ``||mean_t x_t||^2`` (its
  ``mean_act_per_dimension`` holds squares); we use the definition, not that line.
* ``mse = mean_t ||x_t - x_hat_t||^2`` (squared error summed over the ``d`` coordinates, the
  training loss's convention; SAELens' eval additionally divides each token's sum by the
  batch's token count, which makes its number depend on the eval batch size).
* ``cossim = mean_t <x_t, x_hat_t> / (||x_t|| ||x_hat_t||)``.
* ``l2_ratio = mean_t ||x_hat_t|| / ||x_t||`` (a norm below 1e-4 counts as 1, as in SAELens).
* ``relative_reconstruction_bias = mean_t ||x_hat_t||^2 / mean_t <x_t, x_hat_t>`` (Rajamanoharan
  et al. 2024, arXiv 2404.16014, eq. 10), pooled over all activations (SAELens takes it per
  batch and averages the batches).
* ``feature_density_j = #{t : f_tj > 0} / T``; ``dead_fraction``: share of latents with density 0
  on the evaluation data.

Next to them, from :func:`wdecomp.ablation.score_splice`: the compute-equivalent
``C*(CE_sae) / C*(CE_clean)`` and parameter-equivalent on a scaling law passed in, with the
percentile interval over the law's samples (:func:`wdecomp.scaling.equivalents_table`), and
the baselines ``CE_clean``, ``CE_zero`` and ``KL_zero`` printed in every table.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from wdecomp.ablation import score_splice
from wdecomp.errors import NonFiniteError, SelectionError, ShapeError
from wdecomp.hooks import HookPoint
from wdecomp.io import atomic_write_text
from wdecomp.sae.model import SparseAutoencoder
from wdecomp.sae.train import hook_activations
from wdecomp.scaling import equivalents_table

__all__ = ["ReconstructionStats", "SAEMetrics", "evaluate_sae", "reconstruction_stats"]


@dataclass
class ReconstructionStats:
    """Float64 running sums over activations; :meth:`metrics` turns them into SAELens' numbers.

    Attributes:
        n: Activations seen ``T``.
        sum_x: ``sum_t x_t`` (``(d,)``).
        sum_xx: ``sum_t ||x_t||^2``.
        sum_res: ``sum_t ||x_t - x_hat_t||^2``.
        sum_hat2: ``sum_t ||x_hat_t||^2``.
        sum_dot: ``sum_t <x_t, x_hat_t>``.
        sum_cos: ``sum_t cos(x_t, x_hat_t)``.
        sum_ratio: ``sum_t ||x_hat_t|| / ||x_t||``.
        sum_l0: ``sum_t #{j: f_tj > 0}``.
        fired: ``(n_latents,)`` firing counts.
    """

    n: int = 0
    sum_x: Tensor | None = None
    sum_xx: float = 0.0
    sum_res: float = 0.0
    sum_hat2: float = 0.0
    sum_dot: float = 0.0
    sum_cos: float = 0.0
    sum_ratio: float = 0.0
    sum_l0: float = 0.0
    fired: Tensor | None = None

    def add(self, x: Tensor, x_hat: Tensor, f: Tensor | None) -> None:
        """Add a chunk: activations ``x``, reconstructions ``x_hat`` (``(T_i, d)``), latents ``f``
        (``None`` for a replacement without latents: L0 and densities are then NaN/absent)."""
        x64 = x.detach().to(torch.float64).reshape(-1, x.shape[-1])
        h64 = x_hat.detach().to(torch.float64).reshape(-1, x.shape[-1])
        nx = x64.norm(dim=-1)
        nh = h64.norm(dim=-1)
        dot = (x64 * h64).sum(-1)
        self.n += x64.shape[0]
        self.sum_x = x64.sum(0) if self.sum_x is None else self.sum_x + x64.sum(0)
        self.sum_xx += float(x64.pow(2).sum())
        self.sum_res += float((x64 - h64).pow(2).sum())
        self.sum_hat2 += float(h64.pow(2).sum())
        self.sum_dot += float(dot.sum())
        self.sum_cos += float((dot / (nx * nh)).sum())
        self.sum_ratio += float((nh / torch.where(nx.abs() < 1e-4, torch.ones_like(nx), nx)).sum())
        if f is None:
            self.sum_l0 = math.nan
            return
        on = (f.detach().reshape(x64.shape[0], -1) > 0).to(torch.float64)
        self.sum_l0 += float(on.sum())
        self.fired = on.sum(0).cpu() if self.fired is None else self.fired + on.sum(0).cpu()

    def metrics(self) -> dict[str, Any]:
        """``explained_variance``, ``mse``, ``cossim``, ``l2_ratio``, ``relative_reconstruction_bias``,
        ``l0``, ``feature_density`` (list), ``dead_fraction``, ``n_tokens``."""
        assert self.sum_x is not None
        n = self.n
        mean = self.sum_x / n
        total_var = self.sum_xx / n - float(mean @ mean)
        density = self.fired / n if self.fired is not None else torch.zeros(0, dtype=torch.float64)
        return {
            "n_tokens": n,
            "explained_variance": 1.0 if self.sum_res == 0 else 1.0 - (self.sum_res / n) / total_var,
            "mse": self.sum_res / n,
            "cossim": self.sum_cos / n,
            "l2_ratio": self.sum_ratio / n,
            "relative_reconstruction_bias": self.sum_hat2 / self.sum_dot,
            "l0": self.sum_l0 / n,
            "feature_density": density.tolist(),
            "dead_fraction": float((density == 0).to(torch.float64).mean()) if density.numel() else math.nan,
        }


def reconstruction_stats(sae: Any, activations: Tensor | Iterable[Tensor]) -> ReconstructionStats:
    """Accumulate :class:`ReconstructionStats` of ``sae`` over activations (a tensor or chunks).

    ``sae`` is an SAE (``encode``/``decode``: latents counted) or any replacement ``x -> x_hat``
    (a PCA projection: no latents, L0 and densities not defined).
    """
    chunks = [activations] if isinstance(activations, Tensor) else activations
    stats = ReconstructionStats()
    with torch.no_grad():
        for x in chunks:
            if not torch.isfinite(x).all():
                raise NonFiniteError("the activations contain NaN or infinite values")
            if isinstance(sae, SparseAutoencoder):
                x = x.to(sae.W_enc.dtype)
                f = sae.encode(x)
                stats.add(x, sae.decode(f), f)
            else:
                stats.add(x, sae(x), None)
    if stats.n == 0:
        raise ShapeError("no activations to evaluate the SAE on")
    return stats


@dataclass(frozen=True)
class SAEMetrics:
    """One SAE's evaluation: SAELens' metrics, the baselines they depend on, the equivalents.

    Attributes:
        label: Name of the SAE in tables.
        hook: The hook point.
        width: Latents.
        n_tokens: Activations evaluated (every position of every example).
        ce_clean: ``CE_clean``, the unchanged model's loss.
        ce_zero: ``CE_zero``, the loss with the hook zero-ablated.
        ce_sae: ``CE_sae``, the loss with the SAE spliced in.
        ce_loss_score: ``(CE_zero - CE_sae) / (CE_zero - CE_clean)``.
        kl_zero: KL of the zero-ablated model from the clean one.
        kl_sae: KL of the spliced model from the clean one.
        kl_div_score: ``(KL_zero - KL_sae) / KL_zero``.
        l0: Mean latents firing.
        explained_variance: Pooled explained variance.
        mse: Mean summed squared error.
        cossim: Mean cosine similarity.
        l2_ratio: Mean norm ratio.
        relative_reconstruction_bias: ``mean ||x_hat||^2 / mean <x, x_hat>``.
        dead_fraction: Latents that never fire on the evaluation data.
        compute_equivalent: ``C_eq(CE_sae) / C_eq(CE_clean)`` (``None`` without a law).
        compute_equivalent_interval: ``(low, high)`` where the law carries an uncertainty.
        parameter_equivalent: ``N_eq(CE_sae, D) / N_eq(CE_clean, D)`` (``None`` without D).
        law: Name of the law.
        feature_density: Per-latent firing frequency.
        notes: What was skipped and why.
    """

    label: str
    hook: str
    width: int
    n_tokens: int
    ce_clean: float
    ce_zero: float
    ce_sae: float
    ce_loss_score: float
    kl_zero: float | None
    kl_sae: float | None
    kl_div_score: float | None
    l0: float
    explained_variance: float
    mse: float
    cossim: float
    l2_ratio: float
    relative_reconstruction_bias: float
    dead_fraction: float
    compute_equivalent: float | None
    compute_equivalent_interval: tuple[float, float] | None
    parameter_equivalent: float | None
    law: str | None
    feature_density: tuple[float, ...] = field(repr=False, default=())
    notes: tuple[str, ...] = ()

    def row(self) -> dict[str, Any]:
        """The scalar fields (no densities)."""
        d = asdict(self)
        d.pop("feature_density")
        return d

    def __str__(self) -> str:
        ci = self.compute_equivalent_interval
        ce = "-" if self.compute_equivalent is None else f"{self.compute_equivalent:.4g}"
        if ci is not None:
            ce += f" [{ci[0]:.3g}, {ci[1]:.3g}]"
        pe = "-" if self.parameter_equivalent is None else f"{self.parameter_equivalent:.4g}"
        kl = "-" if self.kl_sae is None else f"{self.kl_sae:.4g} (zero-ablation {self.kl_zero:.4g})"
        kls = "-" if self.kl_div_score is None else f"{self.kl_div_score:.4f}"
        lines = [
            f"SAE '{self.label}' at '{self.hook}' ({self.width} latents, {self.n_tokens} activations)",
            f"  baselines: CE_clean {self.ce_clean:.4f}, CE_zero {self.ce_zero:.4f} nats",
            f"  CE with SAE                  {self.ce_sae:.4f}  (+{self.ce_sae - self.ce_clean:.4f})",
            f"  ce_loss_score                {self.ce_loss_score:.4f}",
            f"  KL with SAE                  {kl}",
            f"  kl_div_score                 {kls}",
            f"  compute-equivalent           {ce}  (law: {self.law or '-'})",
            f"  parameter-equivalent         {pe}",
            f"  l0                           {self.l0:.3f}",
            f"  explained_variance           {self.explained_variance:.4f}",
            f"  mse                          {self.mse:.4g}",
            f"  cossim                       {self.cossim:.4f}",
            f"  l2_ratio                     {self.l2_ratio:.4f}",
            f"  relative_reconstruction_bias {self.relative_reconstruction_bias:.4f}",
            f"  dead_fraction                {self.dead_fraction:.4f}",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write all fields (densities included) as JSON, atomically."""
        return atomic_write_text(path, json.dumps(asdict(self), indent=1))


def evaluate_sae(
    model: nn.Module,
    sae: SparseAutoencoder | nn.Module,
    data: Any,
    *,
    hook: str | None = None,
    label: str = "sae",
    law: Any = None,
    tokens: float | None = None,
    n_params: float | None = None,
    confidence: float = 0.95,
    progress: bool | None = None,
) -> SAEMetrics:
    """Evaluate an SAE spliced at its hook: SAELens' metrics next to the compute-equivalent.

    Two kinds of passes over ``data``: the splice engine's (clean, zero-ablated and spliced
    model: CE, KL, equivalents) and one streaming pass over the hook's activations for the
    reconstruction metrics (float64 sums, never all activations at once).

    Args:
        model: The network.
        sae: The SAE (its ``hook`` is used unless ``hook`` is given).
        data: A list of ``(inputs, targets)`` batches (class targets: cross-entropy).
        hook: Hook point (default: ``sae.hook``).
        label: Row label.
        law: A scaling-law specification for :func:`wdecomp.scaling.equivalents_table` (a law, a
            name, or a ``ScalingFit``, whose bootstrap refits give the interval), or ``None``.
        tokens: Training tokens ``D`` of the model, for the parameter-equivalent.
        n_params: Parameters ``N`` of the model (with ``tokens``: the training compute ``6 N D``).
        confidence: Coverage of the compute-equivalent's interval.
        progress: Progress bar.

    Returns:
        :class:`SAEMetrics`.

    Raises:
        SelectionError: no hook given and the SAE records none, or the hook does not exist.
        ShapeError: the SAE's width does not match the hook's activations.
        NonFiniteError: NaN or infinite activations.
    """
    point = hook if hook is not None else getattr(sae, "hook", "")
    if not point:
        raise SelectionError("no hook point: pass hook=... or use an SAE that records its hook")
    point = str(HookPoint.parse(point))
    stats = reconstruction_stats(sae, hook_activations(model, data, point, buffer_batches=1, epochs=1))
    rec = stats.metrics()
    result = score_splice(model, point, {label: sae}, data, top_n=0, progress=progress)
    level = result.levels[0]
    ce_clean, ce_zero, ce_sae = result.original.loss, result.zero_baseline.loss, level.loss
    ce_score = 1.0 if ce_sae == ce_clean else (ce_zero - ce_sae) / (ce_zero - ce_clean)
    kl_zero, kl_sae = result.zero_baseline.kl, level.kl
    kl_score = None
    if kl_zero is not None and kl_sae is not None:
        if kl_sae == 0:
            kl_score = 1.0
        else:
            kl_score = (kl_zero - kl_sae) / kl_zero if kl_zero > 0 else math.nan
    ce_eq = pe_eq = interval = law_name = None
    notes = [n for n in result.notes if law is None or "no scaling law given" not in n]
    if law is not None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            table = equivalents_table([ce_sae], ce_clean, law, D=tokens, N=n_params, confidence=confidence)
        row = table.rows[0]
        law_name = row.law
        ce_eq = row.frontier_fraction
        if not math.isnan(row.frontier_low):
            interval = (row.frontier_low, row.frontier_high)
        pe_eq = None if math.isnan(row.parameter_fraction) else row.parameter_fraction
        notes += [n for n in (row.note, *table.notes) if n]
        notes += [f"intervals: {table.interval_sources[law_name]}"]
        notes += [str(w.message) for w in caught if str(w.message) not in notes]
    return SAEMetrics(
        label=label, hook=point, width=int(getattr(sae, "width", len(rec["feature_density"]))),
        n_tokens=rec["n_tokens"], ce_clean=ce_clean, ce_zero=ce_zero, ce_sae=ce_sae, ce_loss_score=ce_score,
        kl_zero=kl_zero, kl_sae=kl_sae, kl_div_score=kl_score, l0=rec["l0"],
        explained_variance=rec["explained_variance"], mse=rec["mse"], cossim=rec["cossim"],
        l2_ratio=rec["l2_ratio"], relative_reconstruction_bias=rec["relative_reconstruction_bias"],
        dead_fraction=rec["dead_fraction"], compute_equivalent=ce_eq,
        compute_equivalent_interval=interval, parameter_equivalent=pe_eq,
        law=law_name, feature_density=tuple(rec["feature_density"]), notes=tuple(dict.fromkeys(notes)),
    )
