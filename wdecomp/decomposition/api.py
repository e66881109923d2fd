"""``spd()``: decompose chosen linear layers of a model into rank-one subcomponents, and its result.

See :mod:`wdecomp.decomposition.spd` for the method (formulas, initialisation, tied weights) and
:mod:`wdecomp.decomposition.metrics` for the metrics.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from wdecomp.ablation import loss_recovered
from wdecomp.bases.protocol import ComponentModel, model_signature
from wdecomp.batch import as_batches, split
from wdecomp.decomposition.metrics import (
    GroundTruth,
    HungarianResult,
    count_alive,
    hungarian_identity,
    layer_ci_l0,
    mmcs_ml2r,
    piece_norms,
)
from wdecomp.decomposition.spd import (
    SPDConfig,
    SPDModel,
    _Target,
    lower_leaky_hard_sigmoid,
    output_divergence,
    stochastic_masks,
    swapped,
    train_spd,
)
from wdecomp.errors import ArgumentError, ModelMismatchError, ScalingLawRangeError, SelectionError
from wdecomp.hooks import call
from wdecomp.io import atomic_write
from wdecomp.scaling import compute_equivalent

__all__ = ["MASK_MODES", "MaskingReport", "SPDGroup", "SPDResult", "load_spd", "spd"]

MASK_MODES = ("unmasked", "importance", "stochastic", "rounded", "zero")
"""Masks compared by :meth:`SPDResult.masking_report`: ``m = 1``, ``m = g``, ``m = g + (1 - g) r``,
``m = 1[g > 0.5]``, ``m = 0``."""

_FORMAT = "wdecomp.spd"
_VERSION = 1


@dataclass(frozen=True)
class MaskingReport:
    """The decomposed model under each mask, against the target and the labels.

    Attributes:
        rows: One dict per mode: ``mode``, ``divergence`` (MSE/KL to the target's outputs),
            ``loss`` (task loss on the labels), ``recovered`` (``1 - (L - L_target) / (L_zero - L_target)``),
            ``compute_equivalent`` (fraction of the target's compute on ``law``'s frontier, or NaN).
        target_loss: The target model's task loss.
        loss_name: ``"mse"`` or ``"cross_entropy"``.
        law: Name of the scaling law, or ``None``.
        notes: Why a column is missing.
    """

    rows: tuple[Mapping[str, Any], ...]
    target_loss: float
    loss_name: str
    law: str | None
    notes: tuple[str, ...] = ()

    def __str__(self) -> str:
        head = f"{'mask':<11}{'divergence':>12}{'loss':>12}{'recovered':>11}{'compute-eq':>12}"
        lines = [f"masking (task loss {self.loss_name}, target {self.target_loss:.5g}; law {self.law})", head]
        for r in self.rows:
            lines.append(f"{r['mode']:<11}{r['divergence']:>12.4g}{r['loss']:>12.5g}{r['recovered']:>11.4f}"
                         f"{r['compute_equivalent']:>12.4g}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows], "target_loss": self.target_loss, "loss_name": self.loss_name,
                "law": self.law, "notes": list(self.notes)}


@dataclass(frozen=True, eq=False)
class SPDGroup:
    """The ``C`` rank-one subcomponents of one weight matrix as a weight group of the component
    protocol (:mod:`wdecomp.bases.protocol`): removing ``S`` gives ``W - U_S V_S`` (the part of ``W``
    outside ``U V`` is kept), or its transpose when the parameter holds ``W^T``.

    A tied pair (``linear2.weight = linear1.weight^T`` decomposed with shared factors) is *one*
    group: the parameter is one matrix, so removing subcomponent ``c`` from it removes it from both
    layers. Its importance is the larger of the two layers' mean causal importances.

    Attributes:
        label: The layer (``"linear1+linear2"`` for a tied pair).
        module: The module that owns the parameter.
        parameter: The parameter's name.
        U: ``(d_out, C)``.
        V: ``(C, d_in)``.
        transposed: The parameter holds ``(U V)^T``.
        importance: ``(C,)`` mean causal importance on the evaluation data (float64).
    """

    label: str
    module: str
    parameter: str
    U: Tensor
    V: Tensor
    transposed: bool
    importance: Tensor

    @property
    def hook(self) -> str:
        return self.module

    @property
    def size(self) -> int:
        return int(self.U.shape[1])

    @property
    def parameters(self) -> dict[str, tuple[int, ...]]:
        shape = (self.U.shape[0], self.V.shape[1])
        return {self.parameter: tuple(reversed(shape)) if self.transposed else shape}

    def remove(self, weights: Mapping[str, Tensor], idx: Tensor) -> dict[str, Tensor]:
        """``{parameter: W - U[:, S] V[S, :]}`` (transposed for a transposed parameter)."""
        W = weights[self.parameter]
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1).to(self.U.device)
        if idx.numel() == 0:
            return {self.parameter: W}
        piece = (self.U[:, idx] @ self.V[idx, :]).to(dtype=W.dtype, device=W.device)
        return {self.parameter: W - (piece.T if self.transposed else piece)}


def _owning_parameter(model: nn.Module, layer: str, W: Tensor) -> tuple[str, bool] | None:
    """The model parameter that holds ``W`` (``(name, False)``) or ``W^T`` (``(name, True)``)."""
    for name, p in model.named_parameters():
        if p.data_ptr() == W.data_ptr() and p.shape == W.shape and p.stride() == W.stride():
            return name, False
    for name, p in model.named_parameters():
        if p.data_ptr() == W.data_ptr() and p.shape == W.T.shape and p.stride() == W.T.stride():
            return name, True
    return None


@dataclass(frozen=True, eq=False)
class SPDResult(ComponentModel):
    """A trained decomposition of ``model``'s ``layers``, and a component model
    (:class:`~wdecomp.bases.protocol.ComponentModel`): one :class:`SPDGroup` per decomposed weight
    matrix, so ``ablate`` and ``ablation_sweep`` take it as it is.

    Attributes:
        model: The target model (frozen: its parameters no longer require gradients).
        layers: Decomposed module names.
        spd_model: Factors ``U, V`` and causal-importance MLPs.
        config: The settings.
        loss: ``"mse"`` or ``"kl"``, the output divergence used in training.
        history: Loss term -> value at every step.
        info: Steps, seconds, CPU seconds, step resumed from.
        mean_importance: Layer -> ``(C,)`` mean causal importance on the evaluation data.
        signature: The model's parameter and buffer names and shapes.
    """

    model: nn.Module
    layers: tuple[str, ...]
    spd_model: SPDModel
    config: SPDConfig
    loss: str
    history: Mapping[str, list[float]] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)
    mean_importance: Mapping[str, Tensor] = field(default_factory=dict)
    signature: Mapping[str, list[int]] | None = None

    # ------------------------------------------------------------------ component protocol
    @property
    def groups(self) -> tuple[SPDGroup, ...]:
        """One weight group per decomposed matrix (a tied pair is one group), in layer order."""
        out: list[SPDGroup] = []
        target = self._target()
        for n in self.layers:
            if n in self.tied and self.tied[n] in self.layers:
                continue
            found = _owning_parameter(self.model, n, target.weights[n])
            if found is None:
                raise TypeError(f"'{n}': no parameter of the model holds its weight (or its transpose), so its "
                                "subcomponents cannot be removed by editing weights")
            mates = [t for t, o in self.tied.items() if o == n and t in self.layers]
            imp = self.mean_importance.get(n, torch.zeros(self.config.C, dtype=torch.float64))
            for t in mates:
                imp = torch.maximum(imp, self.mean_importance.get(t, imp))
            U, V = self.factors(n)
            out.append(SPDGroup("+".join([n, *mates]), n, found[0], U, V, found[1],
                                imp.detach().to(torch.float64).cpu()))
        return tuple(out)

    def describe(self) -> str:
        return "this SPD decomposition"

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module) -> SPDResult:
        """:func:`load_spd`."""
        return load_spd(path, model)

    # ------------------------------------------------------------------ pieces
    @property
    def tied(self) -> dict[str, str]:
        """Tied layer -> the layer whose factors it uses transposed."""
        return dict(self.spd_model.tied)

    def factors(self, layer: str) -> tuple[Tensor, Tensor]:
        """``(U, V)`` of ``layer``, detached: ``U`` ``(d_out, C)``, ``V`` ``(C, d_in)``."""
        self._check_layer(layer)
        U, V = self.spd_model.factors(layer)
        return U.detach(), V.detach()

    def norms(self, layer: str) -> Tensor:
        """``||U_{:,c} V_{c,:}||_F`` ``(C,)``."""
        return piece_norms(*self.factors(layer))

    def _check_layer(self, layer: str) -> None:
        if layer not in self.layers:
            raise SelectionError(f"'{layer}' was not decomposed; layers are {list(self.layers)}")

    def _target(self) -> _Target:
        return _Target(self.model, self.layers)

    # ------------------------------------------------------------------ importances
    @torch.no_grad()
    def importances(self, inputs: Any) -> dict[str, Tensor]:
        """Causal importances ``g = sigma_lower(gamma(V a))`` per layer, ``(..., C)``, on one batch of inputs."""
        _, acts = self._target().run(inputs)
        return {n: lower_leaky_hard_sigmoid(self.spd_model.importance_logits(n, acts[n])) for n in self.layers}

    def one_hot_importances(self, n_inputs: int | None = None, value: float = 0.75) -> dict[str, Tensor]:
        """Importances on the inputs ``value * e_i`` (paper: 0.75), per layer ``(n_inputs, C)``.

        ``n_inputs`` defaults to the first layer's input width.
        """
        n = n_inputs if n_inputs is not None else self.spd_model.shapes[self.layers[0]][1]
        dtype = self.spd_model.gates[next(iter(self.spd_model.gates))].b_out.dtype
        return self.importances(value * torch.eye(n, dtype=dtype))

    def hungarian(self, layer: str, tol: float = 0.1, max_errors: int = 1, value: float = 0.75) -> HungarianResult:
        """:func:`~wdecomp.decomposition.metrics.hungarian_identity` of ``layer``'s one-hot importances,
        clipped to ``[0, 1]`` as in the paper's importance plots (Fig. 8: ``sigma_lower`` is ``0.01 z``
        below 0, so an unimportant piece may read slightly negative)."""
        self._check_layer(layer)
        return hungarian_identity(self.one_hot_importances(value=value)[layer].clamp(0.0, 1.0), tol, max_errors)

    def ground_truth(self, layer: str, W: Tensor | None = None) -> GroundTruth:
        """MMCS and ML2R of ``layer``'s subcomponents against ``W`` (default: the layer's own weight)."""
        self._check_layer(layer)
        U, V = self.factors(layer)
        if W is None:
            W = self._target().weights[layer].detach()
        return mmcs_ml2r(W, U, V)

    @torch.no_grad()
    def mean_importances(self, data: Any) -> dict[str, Tensor]:
        """Per layer, each subcomponent's mean importance over ``data`` (examples and positions), float64."""
        sums: dict[str, Tensor] = {}
        count = 0
        for batch in as_batches(data, what="mean_importances()"):
            inputs, _ = split(batch)
            for n, g in self.importances(inputs).items():
                flat = g.reshape(-1, g.shape[-1]).to(torch.float64)
                sums[n] = flat.sum(0) + (sums[n] if n in sums else 0)
                k = flat.shape[0]
            count += k
        return {n: v / count for n, v in sums.items()}

    @torch.no_grad()
    def max_importances(self, data: Any) -> dict[str, Tensor]:
        """Per layer, each subcomponent's largest importance over ``data`` ``(C,)``."""
        out: dict[str, Tensor] = {}
        for batch in as_batches(data, what="max_importances()"):
            inputs, _ = split(batch)
            for n, g in self.importances(inputs).items():
                m = g.reshape(-1, g.shape[-1]).max(dim=0).values
                out[n] = m if n not in out else torch.maximum(out[n], m)
        return out

    def alive(self, data: Any, threshold: float | None = None, norm_fraction: float = 0.05) -> dict[str, Tensor]:
        """Per layer, boolean ``(C,)``: piece norm above ``norm_fraction`` of the largest and
        importance above ``threshold`` (default ``config.alive_threshold``) on some input of ``data``."""
        thr = self.config.alive_threshold if threshold is None else threshold
        mx = self.max_importances(data)
        return {n: count_alive(self.norms(n), mx[n], thr, norm_fraction) for n in self.layers}

    def n_alive(self, data: Any, threshold: float | None = None) -> dict[str, int]:
        return {n: int(a.sum()) for n, a in self.alive(data, threshold).items()}

    @torch.no_grad()
    def ci_l0(self, data: Any, cutoff: float = 0.01) -> dict[str, float]:
        """Per layer, the mean number of subcomponents with importance above ``cutoff`` per example."""
        sums: dict[str, float] = {}
        count = 0
        for batch in as_batches(data, what="ci_l0()"):
            inputs, _ = split(batch)
            for n, g in self.importances(inputs).items():
                k = g.reshape(-1, g.shape[-1]).shape[0]
                sums[n] = sums.get(n, 0.0) + layer_ci_l0(g, cutoff) * k
            count += k
        return {n: v / count for n, v in sums.items()}

    # ------------------------------------------------------------------ masking
    @torch.no_grad()
    def masked_output(self, inputs: Any, mode: str = "importance", generator: torch.Generator | None = None) -> Tensor:
        """The model with every decomposed layer as ``U ((V a) * m) + b`` under ``mode`` (see :data:`MASK_MODES`)."""
        if mode not in MASK_MODES:
            raise ArgumentError(f"mode must be one of {MASK_MODES}, not {mode!r}")
        target = self._target()
        g = self.importances(inputs)
        masks: dict[str, Tensor | None] = {}
        for n in self.layers:
            if mode == "unmasked":
                masks[n] = None
            elif mode == "importance":
                masks[n] = g[n]
            elif mode == "stochastic":
                masks[n] = stochastic_masks(g[n], generator)
            elif mode == "rounded":
                masks[n] = (g[n] > 0.5).to(g[n].dtype)
            else:
                masks[n] = torch.zeros_like(g[n])
        with swapped(self.model, self.spd_model, masks, {n: target.bias(n) for n in self.layers}):
            return call(self.model, inputs)

    @torch.no_grad()
    def masking_report(self, data: Any, law: Any = None, seed: int = 0) -> MaskingReport:
        """Divergence to the target, task loss, loss recovered and compute-equivalent for each mask.

        Args:
            data: Batches ``(inputs, labels)``; labels are integer classes (cross-entropy) or values (MSE).
                Without labels the target's own outputs serve as labels.
            law: A :class:`wdecomp.scaling.ScalingLaw` (or ``None``: the column is NaN with a note).
                The equivalent is ``compute_equivalent(L_mode, L_target, law).fraction``.
            seed: Seeds the stochastic masks.
        """
        gen = torch.Generator().manual_seed(seed)
        sums = {m: [0.0, 0.0] for m in MASK_MODES}
        target_sum, count = 0.0, 0
        loss_name = "mse"
        for batch in as_batches(data, what="masking_report()"):
            inputs, labels = split(batch)
            out = call(self.model, inputs)
            classes = isinstance(labels, Tensor) and not labels.is_floating_point()
            loss_name = "cross_entropy" if classes else "mse"
            y = out if labels is None else labels
            task = _task_loss(loss_name)
            k = out.shape[0]
            target_sum += float(task(out, y)) * k
            for mode in MASK_MODES:
                o = self.masked_output(inputs, mode, gen)
                sums[mode][0] += float(output_divergence(o, out, self.loss)) * k
                sums[mode][1] += float(task(o, y)) * k
            count += k
        target_loss = target_sum / count
        zero_loss = sums["zero"][1] / count
        notes: list[str] = []
        rows = []
        for mode in MASK_MODES:
            div, loss = sums[mode][0] / count, sums[mode][1] / count
            ce = math.nan
            if law is not None:
                try:
                    ce = float(compute_equivalent(loss, target_loss, law).fraction)
                except ScalingLawRangeError as e:
                    notes.append(f"{mode}: no compute-equivalent ({e})")
            rows.append({"mode": mode, "divergence": div, "loss": loss,
                         "recovered": loss_recovered(loss, target_loss, zero_loss), "compute_equivalent": ce})
        if law is None:
            notes.append("compute-equivalent skipped: no scaling law given (law=...)")
        return MaskingReport(tuple(rows), target_loss, loss_name, getattr(law, "name", None), tuple(notes))

    # ------------------------------------------------------------------ reporting and files
    def summary(self, data: Any | None = None) -> dict[str, Any]:
        """Final loss terms, per layer norms/alive counts (with ``data``) and settings, as plain values."""
        out: dict[str, Any] = {"layers": list(self.layers), "tied": self.tied, "config": self.config.to_dict(),
                               "loss": self.loss, "final": {k: v[-1] for k, v in self.history.items() if v},
                               "info": dict(self.info)}
        if data is not None:
            out["alive"] = self.n_alive(data)
            out["ci_l0"] = self.ci_l0(data)
        return out

    def to_dict(self) -> dict[str, Any]:
        """:meth:`summary` without data, plus each layer's piece norms and mean importances."""
        out = self.summary()
        out["norms"] = {n: self.norms(n).tolist() for n in self.layers}
        out["mean_importance"] = {n: v.tolist() for n, v in self.mean_importance.items()}
        return out

    def __str__(self) -> str:
        final = ", ".join(f"{k} {v[-1]:.4g}" for k, v in self.history.items() if v)
        lines = [f"SPD of {len(self.layers)} layers, C = {self.config.C} (steps {self.info.get('steps')}): {final}"]
        for n in self.layers:
            norms = self.norms(n)
            big = int((norms > 0.05 * norms.max()).sum())
            tie = f" (tied to {self.tied[n]})" if n in self.tied else ""
            lines.append(f"  {n:<24} {tuple(self.spd_model.shapes[n])}  pieces above 5% of the largest: {big}{tie}")
        return "\n".join(lines)

    def save(self, path: str | os.PathLike) -> Path:
        """Factors, importance MLPs, settings and history to one safetensors file (atomic; loads without code)."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().contiguous().cpu() for k, v in self.spd_model.state_dict().items()}
        meta = {"format": _FORMAT, "version": _VERSION, "layers": list(self.layers), "tied": self.tied,
                "shapes": {n: list(s) for n, s in self.spd_model.shapes.items()}, "config": self.config.to_dict(),
                "loss": self.loss, "history": {k: list(v) for k, v in self.history.items()}, "info": dict(self.info),
                "signature": model_signature(self.model),
                "mean_importance": {n: v.tolist() for n, v in self.mean_importance.items()}}
        return atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata={"wdecomp": json.dumps(meta)}))


def _task_loss(name: str) -> Any:
    if name == "cross_entropy":
        return lambda o, y: torch.nn.functional.cross_entropy(o.reshape(-1, o.shape[-1]), y.reshape(-1))
    return lambda o, y: ((o - y) ** 2).mean()


def load_spd(path: str | os.PathLike, model: nn.Module) -> SPDResult:
    """Read an :class:`SPDResult` written by :meth:`SPDResult.save` for ``model`` (no code runs)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta = json.loads(header.get("wdecomp", "{}"))
    if meta.get("format") != _FORMAT:
        raise ModelMismatchError(f"{path} is not an SPD decomposition written by wdecomp "
                                 f"(format {meta.get('format')!r})")
    if meta["signature"] != model_signature(model):
        raise ModelMismatchError(f"{path} was written for a model with other parameters; "
                                 "pass the model it was trained on")
    config = SPDConfig(**meta["config"])
    dtype = next(iter(tensors.values())).dtype
    sm = SPDModel(meta["layers"], {n: tuple(s) for n, s in meta["shapes"].items()}, config.C, meta["tied"],
                  config.gate_hidden, dtype)
    sm.load_state_dict(tensors)
    for p in model.parameters():
        p.requires_grad_(False)
    imp = {n: torch.tensor(v, dtype=torch.float64) for n, v in meta.get("mean_importance", {}).items()}
    return SPDResult(model, tuple(meta["layers"]), sm, config, meta["loss"], meta["history"], meta["info"], imp,
                     model_signature(model))


def spd(
    model: nn.Module,
    data: Any,
    *,
    modules: Sequence[str],
    C: int | None = None,
    config: SPDConfig | None = None,
    tied: Mapping[str, str] | str = "auto",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1000,
    progress: bool | None = None,
    **settings: Any,
) -> SPDResult:
    """Stochastic Parameter Decomposition (Bushnaq, Braun & Sharkey 2025, arXiv 2506.20790).

    Each module in ``modules`` (``y = a W^T + b``) is written as ``U V`` with ``C`` rank-one
    subcomponents and trained with the faithfulness, stochastic, layerwise-stochastic and
    importance-minimality losses (:mod:`wdecomp.decomposition.spd`).

    Args:
        model: The target network, in eval mode (its parameters are frozen).
        data: A sampler ``sample(batch_size, generator) -> inputs`` (fresh data every step, e.g.
            ``bundle.extra["sample"]``) or a data argument (one batch, a list of batches, a
            DataLoader; see :mod:`wdecomp.batch`), cycled through. Labels are not used for training.
        modules: Names of the linear-like modules to decompose.
        C: Subcomponents per layer (overrides ``config.C``).
        config: :class:`SPDConfig` (default: the paper's TMS 5-2 settings).
        tied: ``"auto"`` (detect transposed weights sharing storage), ``{layer: owner}``, or ``{}``.
        checkpoint: Path of a safetensors checkpoint, written every ``checkpoint_every`` steps and at
            the end; if it exists, training resumes from it (same settings required).
        checkpoint_every: Steps between checkpoints.
        progress: Progress bar with the loss terms (``None``: only on a terminal).
        **settings: Any other :class:`SPDConfig` field (``steps=2000``, ``importance_coeff=1e-3``...).

    Returns:
        :class:`SPDResult`.

    Raises:
        ArgumentError: ``C < 1`` or another setting out of range.
        SelectionError: a module that does not exist or is not linear-like.
        ModelStateError: the model is in train mode with dropout or batch norm.
        NonFiniteError: NaN or inf in the target's outputs (or in the loss).
    """
    cfg = config if config is not None else SPDConfig()
    if C is not None:
        settings["C"] = C
    unknown = set(settings) - set(SPDConfig.__dataclass_fields__)
    if unknown:
        raise ArgumentError(f"unknown SPD settings {sorted(unknown)}; the settings are "
                            f"{sorted(SPDConfig.__dataclass_fields__)}")
    cfg = replace(cfg, **settings)
    layers = [modules] if isinstance(modules, str) else list(modules)
    sm, rec, kind = train_spd(model, data, layers, cfg, tied=tied, checkpoint=checkpoint,
                              checkpoint_every=checkpoint_every, progress=progress)
    info = {"steps": rec.steps, "resumed_from": rec.resumed_from, "seconds": rec.seconds,
            "cpu_seconds": rec.cpu_seconds}
    result = SPDResult(model, tuple(layers), sm, cfg, kind, rec.history, info, {}, model_signature(model))
    return replace(result, mean_importance=result.mean_importances(_eval_batches(data, cfg)))


def _eval_batches(data: Any, cfg: SPDConfig, n: int = 4) -> list[Any]:
    """Evaluation data: ``n`` fresh batches (seeded apart from training) from a sampler, else the data."""
    if callable(data) and not isinstance(data, nn.Module):
        g = torch.Generator().manual_seed(cfg.seed + 1_000_003)
        return [data(cfg.batch_size, g) for _ in range(n)]
    return list(as_batches(data, what="spd()"))
