"""Stochastic Parameter Decomposition (SPD; Bushnaq, Braun & Sharkey 2025, arXiv 2506.20790).

Every chosen weight matrix ``W^l`` (``d_out x d_in``) is written as ``U^l V^l`` with ``C`` rank-one
*subcomponents* ``U^l_{:,c} V^l_{c,:}`` (``C`` may exceed the rank; biases are not decomposed). A
*causal-importance function* per subcomponent, a tiny MLP ``gamma^l_c`` (``1 -> d_gate GELU -> 1``,
paper appendix "Architecture of Causal Importance Function MLPs"), reads the subcomponent's inner
activation ``h^l_c = V^l_{c,:} a^l`` (``a^l``: the layer's input) and gives ``z = gamma^l_c(h^l_c)``;
the importance is ``g = sigma_lower(z)`` and the penalty uses ``sigma_upper(z)`` (paper appendix
"Avoiding dead gradients with leaky hard sigmoids"):

.. math::
    \\sigma_{lower}(z) = \\begin{cases} 0.01 z & z \\le 0 \\\\ z & 0 \\le z \\le 1
        \\\\ 1 & z \\ge 1\\end{cases},
    \\qquad
    \\sigma_{upper}(z) = \\begin{cases} 0 & z \\le 0 \\\\ z & 0 \\le z \\le 1
        \\\\ 1 + 0.01 (z - 1) & z \\ge 1\\end{cases}.

Stochastic masks ``m = g + (1 - g) r``, ``r ~ U(0, 1)`` per example, position, layer and
subcomponent (reparametrised, so ``dm/dg = 1 - r``). A masked layer computes
``U ((V a) * m) + b`` — never a per-example weight matrix. The loss (paper Sec. 2, pseudocode in the
appendix) is

.. math::
    L = \\beta_0 \\tfrac{1}{N}\\sum_l \\|W^l - U^l V^l\\|_F^2
      + \\beta_1 \\tfrac{1}{S}\\sum_s D(f(x | W'(x, r^{(s)})), f(x | W))
      + \\beta_2 \\tfrac{1}{LS}\\sum_{l,s} D(f(x | \\ldots, W'^l(x, r^{l,(s)}), \\ldots), f(x | W))
      + \\beta_3 \\tfrac{1}{B}\\sum_{b,l,c} |\\sigma_{upper}(z^l_{b,c})|^p

with ``N`` the number of decomposed weight entries, ``D`` the mean squared error over every output
element (regression) or ``KL(p_target || p_masked)`` summed over the last axis and averaged over
the rest (classifiers, language models), the layerwise term masking one layer at a time (the
others keep their original weights) and the minimality term averaged over examples and positions.
These normalisations are those of the reference implementation (``spd/losses.py`` on branch
``spd-paper`` of ``goodfire-ai/spd``: ``calc_faithfulness_loss``, ``calc_masked_recon_loss``,
``calc_masked_recon_layerwise_loss``, ``calc_importance_minimality_loss``), checked by hand
computations in ``tests/decomposition/test_spd_core.py``.

**Initialisation** (reference ``init_As_and_Bs_``): ``V`` rows and ``U`` columns drawn Gaussian and
normalised to unit norm, then ``U_{:,c}`` scaled by ``<U_{:,c} V_{c,:}, W>_F``; ``init="svd"``
instead sets ``U V = W`` exactly (the top ``min(C, rank)`` singular pairs, the rest zero).

**Tied weights.** When one decomposed layer's weight is another's transpose (the same storage,
e.g. TMS's ``linear2.weight = linear1.weight.T``), the second layer is decomposed with the first
one's factors transposed, ``U_2 = V_1^T``, ``V_2 = U_1^T``: one set of parameters, gradients from
both uses summed; each layer keeps its own causal-importance MLPs and masks. The reference ties the
same way but holds two ``Parameter`` objects on one storage, so Adam updates that storage twice per
step; here there is one parameter and one update. ``tied="auto"`` detects ties from the storage,
``tied={"linear2": "linear1"}`` states them, ``tied={}`` decomposes each layer on its own.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wdecomp.batch import as_batches, split
from wdecomp.errors import ArgumentError, ModelStateError, NonFiniteError, SelectionError
from wdecomp.hooks import call, edit, record, resolve_module
from wdecomp.io import atomic_write
from wdecomp.progress import progress_bar
from wdecomp.threads import on_model_threads

__all__ = [
    "PAPER_SETTINGS",
    "ImportanceMLP",
    "SPDConfig",
    "SPDModel",
    "faithfulness_loss",
    "importance_minimality_loss",
    "lower_leaky_hard_sigmoid",
    "output_divergence",
    "stochastic_masks",
    "train_spd",
    "upper_leaky_hard_sigmoid",
]

LEAK = 0.01


# ---------------------------------------------------------------------- the formulas
def lower_leaky_hard_sigmoid(z: Tensor, leak: float = LEAK) -> Tensor:
    """``sigma_lower(z)``: ``leak * z`` below 0, ``z`` on ``[0, 1]``, 1 above (gradient 0 above 1)."""
    return torch.where(z > 0, z.clamp(max=1.0), leak * z)


def upper_leaky_hard_sigmoid(z: Tensor, leak: float = LEAK) -> Tensor:
    """``sigma_upper(z)``: 0 below 0, ``z`` on ``[0, 1]``, ``1 + leak (z - 1)`` above (gradient 0 below 0)."""
    return torch.where(z > 1, 1.0 + leak * (z - 1.0), z.clamp(min=0.0))


def stochastic_masks(g: Tensor, generator: torch.Generator | None = None, r: Tensor | None = None) -> Tensor:
    """``m = g + (1 - g) r`` with ``r ~ U(0, 1)`` of ``g``'s shape (or the ``r`` given).

    Args:
        g: Importances ``(..., C)``.
        generator: Source of ``r`` (on ``g``'s device).
        r: Explicit uniforms (tests).
    """
    if r is None:
        r = torch.rand(g.shape, generator=generator, dtype=g.dtype, device=g.device)
    return g + (1.0 - g) * r


def output_divergence(out: Tensor, target: Tensor, kind: str) -> Tensor:
    """``D(out, target)``: ``"mse"`` = mean of ``(out - target)^2`` over every element; ``"kl"`` =
    ``sum_v p_t (log p_t - log p_out)`` over the last axis (logits), averaged over the rest."""
    if kind == "mse":
        return ((out - target) ** 2).mean()
    if kind == "kl":
        log_q = torch.log_softmax(out, dim=-1)
        log_p = torch.log_softmax(target, dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()
    raise ArgumentError(f"loss must be 'mse' or 'kl', not {kind!r}")


def faithfulness_loss(pairs: Iterable[tuple[Tensor, Tensor]]) -> Tensor:
    """``sum_l ||W^l - U^l V^l||_F^2 / sum_l #entries(W^l)`` over ``(W, UV)`` pairs."""
    total, count = None, 0
    for W, UV in pairs:
        term = ((W - UV) ** 2).sum()
        total = term if total is None else total + term
        count += W.numel()
    if total is None:
        raise ArgumentError("faithfulness_loss needs at least one layer")
    return total / count


def importance_minimality_loss(z_upper: Iterable[Tensor], p: float) -> Tensor:
    """``mean_{examples, positions} sum_l sum_c sigma_upper(z)^p`` (inputs already ``sigma_upper(z)``, >= 0)."""
    total = None
    for u in z_upper:
        term = (u ** p).sum(dim=-1).mean()
        total = term if total is None else total + term
    if total is None:
        raise ArgumentError("importance_minimality_loss needs at least one layer")
    return total


# ---------------------------------------------------------------------- settings
@dataclass(frozen=True)
class SPDConfig:
    """The knobs of :func:`~wdecomp.decomposition.spd` (defaults: the paper's TMS 5-2 run).

    Attributes:
        C: Subcomponents per layer.
        steps: Adam steps.
        batch_size: Examples per step when the data are a sampler ``sample(batch_size, generator)``.
        lr: Peak learning rate.
        lr_schedule: ``"cosine"`` (reference: ``lr * cos(pi/2 * t / (T - 1))``) or ``"constant"``.
        faithfulness_coeff: ``beta_0``.
        stochastic_coeff: ``beta_1`` (all layers masked at once).
        layerwise_coeff: ``beta_2`` (one layer masked at a time).
        importance_coeff: ``beta_3`` (importance minimality).
        p: Exponent of the minimality penalty.
        p_final: If set, ``p`` anneals linearly to this value from ``p_anneal_start * steps`` to the end.
        p_anneal_start: Fraction of training at which annealing starts.
        n_mask_samples: ``S``.
        gate_hidden: ``d_gate`` of each causal-importance MLP (0: a linear gate ``z = w h + b``).
        loss: ``"mse"``, ``"kl"`` or ``"auto"`` (KL when the data carry integer targets, else MSE).
        init: ``"reference"`` (scaled random rank-one pieces) or ``"svd"`` (``U V = W`` exactly).
        seed: Seeds the initialisation, the data sampler and the masks.
        alive_threshold: Importance a subcomponent must reach on some input to count as alive.
        faithfulness_warmup_steps: Steps of faithfulness-only AdamW on ``U, V`` before training (0: the
            paper; the reference's later TMS configs use 200 at lr 0.01, weight decay 0.1).
        faithfulness_warmup_lr: Learning rate of that warm-up.
        faithfulness_warmup_weight_decay: Its AdamW weight decay (pulls ``U V`` towards a small-norm
            factorisation of ``W``, shrinking superfluous pieces).
    """

    C: int = 20
    steps: int = 40_000
    batch_size: int = 4096
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    faithfulness_coeff: float = 1.0
    stochastic_coeff: float = 1.0
    layerwise_coeff: float = 1.0
    importance_coeff: float = 3e-3
    p: float = 1.0
    p_final: float | None = None
    p_anneal_start: float = 0.0
    n_mask_samples: int = 1
    gate_hidden: int = 16
    loss: str = "auto"
    init: str = "reference"
    seed: int = 0
    alive_threshold: float = 0.1
    faithfulness_warmup_steps: int = 0
    faithfulness_warmup_lr: float = 0.01
    faithfulness_warmup_weight_decay: float = 0.1

    def check(self) -> None:
        """Raise :class:`ArgumentError` for a value outside its range."""
        if not isinstance(self.C, int) or self.C < 1:
            raise ArgumentError(f"C (subcomponents per layer) must be an integer >= 1, got {self.C!r}")
        for name in ("steps", "batch_size", "n_mask_samples"):
            if int(getattr(self, name)) < 1:
                raise ArgumentError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.faithfulness_warmup_steps < 0:
            raise ArgumentError(f"faithfulness_warmup_steps must be >= 0, got {self.faithfulness_warmup_steps}")
        if self.gate_hidden < 0:
            raise ArgumentError(f"gate_hidden must be >= 0, got {self.gate_hidden}")
        for name in ("lr", "p"):
            v = float(getattr(self, name))
            if not math.isfinite(v) or v <= 0:
                raise ArgumentError(f"{name} must be a finite number > 0, got {v}")
        for name in ("faithfulness_coeff", "stochastic_coeff", "layerwise_coeff", "importance_coeff"):
            v = float(getattr(self, name))
            if not math.isfinite(v) or v < 0:
                raise ArgumentError(f"{name} must be a finite number >= 0, got {v}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ArgumentError(f"lr_schedule must be 'cosine' or 'constant', not {self.lr_schedule!r}")
        if self.loss not in ("auto", "mse", "kl"):
            raise ArgumentError(f"loss must be 'auto', 'mse' or 'kl', not {self.loss!r}")
        if self.init not in ("reference", "svd"):
            raise ArgumentError(f"init must be 'reference' or 'svd', not {self.init!r}")
        if not 0.0 <= self.p_anneal_start <= 1.0:
            raise ArgumentError(f"p_anneal_start must lie in [0, 1], got {self.p_anneal_start}")

    def lr_at(self, step: int) -> float:
        """Learning rate of ``step`` (0-based)."""
        if self.lr_schedule == "constant" or self.steps <= 1:
            return self.lr
        return self.lr * math.cos(0.5 * math.pi * step / (self.steps - 1))

    def p_at(self, step: int) -> float:
        """Minimality exponent of ``step`` (linear annealing to ``p_final`` when set)."""
        if self.p_final is None:
            return self.p
        start = self.p_anneal_start * self.steps
        if step <= start:
            return self.p
        frac = min(1.0, (step - start) / max(self.steps - start, 1.0))
        return self.p + frac * (self.p_final - self.p)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PAPER_SETTINGS: dict[str, SPDConfig] = {
    # arXiv 2506.20790, appendix "Training details and hyperparameters"; spd-paper tms_config.yaml
    "tms_5_2": SPDConfig(C=20, importance_coeff=3e-3, p=1.0),
    "tms_5_2_id": SPDConfig(C=20, importance_coeff=3e-3, p=1.0),
    "tms_40_10": SPDConfig(C=200, importance_coeff=1e-4, p=2.0),
    "tms_40_10_id": SPDConfig(C=200, importance_coeff=1e-4, p=2.0),
    # resid_mlp_config.yaml (1 layer): constant lr 2e-3, batch 2048, 30k steps, p = 2
    "residual_mlp": SPDConfig(C=100, steps=30_000, batch_size=2048, lr=2e-3, lr_schedule="constant",
                              importance_coeff=1e-5, p=2.0),
}
"""The paper's settings per target model (``PAPER_SETTINGS["tms_5_2"]`` is :class:`SPDConfig`'s default)."""


# ---------------------------------------------------------------------- modules
class ImportanceMLP(nn.Module):
    """``C`` independent causal-importance MLPs ``z_c = w^out_c . GELU(w^in_c h_c + b^in_c) + b^out_c``.

    Shapes: ``w_in, b_in, w_out``: ``(C, d_gate)``, ``b_out``: ``(C,)``; input ``h``: ``(..., C)``.
    With ``d_gate = 0`` the function is linear, ``z_c = w_c h_c + b_c``. Initialisation as the
    reference's ``GateMLP``: ``w_in ~ N(0, 2)``, ``w_out ~ N(0, 1/d_gate)``, biases zero.
    """

    def __init__(self, C: int, hidden: int = 16, dtype: torch.dtype = torch.float32,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.hidden = hidden
        width = max(hidden, 1)
        w_in = torch.randn(C, width, generator=generator, dtype=dtype) * (math.sqrt(2.0) if hidden else 1.0)
        self.w_in = nn.Parameter(w_in)
        self.b_in = nn.Parameter(torch.zeros(C, width, dtype=dtype))
        if hidden:
            self.w_out = nn.Parameter(torch.randn(C, hidden, generator=generator, dtype=dtype) / math.sqrt(hidden))
        else:
            self.w_out = None
        self.b_out = nn.Parameter(torch.zeros(C, dtype=dtype))

    def forward(self, h: Tensor) -> Tensor:
        if self.w_out is None:
            return h * self.w_in[:, 0] + self.b_in[:, 0] + self.b_out
        hidden = F.gelu(h.unsqueeze(-1) * self.w_in + self.b_in)
        return (hidden * self.w_out).sum(dim=-1) + self.b_out


def _key(name: str) -> str:
    return name.replace(".", "-")


class SPDModel(nn.Module):
    """The trainable part of SPD: factors ``U`` (``d_out x C``), ``V`` (``C x d_in``) per owned
    layer and one :class:`ImportanceMLP` per decomposed layer; a tied layer uses its owner's
    factors transposed.

    Attributes:
        layers: Decomposed module names, in the order given.
        tied: Tied layer -> the layer that owns the factors.
        shapes: Layer -> ``(d_out, d_in)``.
    """

    def __init__(self, layers: Sequence[str], shapes: Mapping[str, tuple[int, int]], C: int,
                 tied: Mapping[str, str] | None = None, gate_hidden: int = 16,
                 dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.layers = tuple(layers)
        self.tied = dict(tied or {})
        self.shapes = {n: tuple(shapes[n]) for n in self.layers}
        self.C = C
        self.U = nn.ParameterDict()
        self.V = nn.ParameterDict()
        for name in self.layers:
            if name in self.tied:
                continue
            d_out, d_in = self.shapes[name]
            self.U[_key(name)] = nn.Parameter(torch.zeros(d_out, C, dtype=dtype))
            self.V[_key(name)] = nn.Parameter(torch.zeros(C, d_in, dtype=dtype))
        self.gates = nn.ModuleDict({_key(n): ImportanceMLP(C, gate_hidden, dtype, generator) for n in self.layers})

    def factors(self, name: str) -> tuple[Tensor, Tensor]:
        """``(U, V)`` of layer ``name`` (``(V_owner^T, U_owner^T)`` for a tied layer)."""
        owner = self.tied.get(name)
        if owner is not None:
            return self.V[_key(owner)].T, self.U[_key(owner)].T
        return self.U[_key(name)], self.V[_key(name)]

    def weight(self, name: str) -> Tensor:
        """``U V`` of layer ``name`` (``d_out x d_in``)."""
        U, V = self.factors(name)
        return U @ V

    def gate(self, name: str) -> ImportanceMLP:
        return self.gates[_key(name)]

    def importance_logits(self, name: str, a: Tensor) -> Tensor:
        """``z = gamma(V a)`` for the layer's input ``a`` ``(..., d_in)`` -> ``(..., C)``."""
        _, V = self.factors(name)
        return self.gate(name)(a @ V.T)

    def init_reference(self, targets: Mapping[str, Tensor], generator: torch.Generator) -> None:
        """Reference initialisation (``init_As_and_Bs_``): unit-norm random ``V`` rows and ``U``
        columns, ``U_{:,c}`` scaled by ``<U_{:,c} V_{c,:}, W>_F``."""
        with torch.no_grad():
            for name in self.layers:
                if name in self.tied:
                    continue
                U, V = self.U[_key(name)], self.V[_key(name)]
                V.copy_(torch.randn(V.shape, generator=generator, dtype=V.dtype))
                U.copy_(torch.randn(U.shape, generator=generator, dtype=U.dtype))
                V.div_(V.norm(dim=1, keepdim=True))
                U.div_(U.norm(dim=0, keepdim=True))
                W = targets[name].to(U)
                U.mul_(torch.einsum("oc,ci,oi->c", U, V, W))

    def init_svd(self, targets: Mapping[str, Tensor]) -> None:
        """``U V = W`` exactly: ``U_{:,c} = s_c u_c``, ``V_{c,:} = v_c^T`` for the top ``min(C, r)``
        singular triples, zero beyond."""
        with torch.no_grad():
            for name in self.layers:
                if name in self.tied:
                    continue
                W = targets[name].to(self.U[_key(name)])
                Us, s, Vh = torch.linalg.svd(W, full_matrices=False)
                k = min(self.C, s.numel())
                self.U[_key(name)].zero_()
                self.V[_key(name)].zero_()
                self.U[_key(name)][:, :k] = Us[:, :k] * s[:k]
                self.V[_key(name)][:k] = Vh[:k]


# ---------------------------------------------------------------------- the target side
def _is_dropout_training(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules()
            if m.training and (isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0
                               or isinstance(m, nn.modules.batchnorm._BatchNorm))]


def _weight_of(module: nn.Module, name: str) -> Tensor:
    W = getattr(module, "weight", None)
    if not isinstance(W, Tensor) or W.dim() != 2:
        raise SelectionError(
            f"module '{name}' ({type(module).__name__}) is not linear-like: SPD decomposes modules that "
            "compute y = x W^T + b with a 2-D weight (nn.Linear or a module with .weight and .bias); "
            "name the Linear layers instead"
        )
    bias = getattr(module, "bias", None)
    if bias is not None and (not isinstance(bias, Tensor) or bias.shape != (W.shape[0],)):
        raise SelectionError(f"module '{name}': bias of shape {tuple(getattr(bias, 'shape', ()))} does not "
                             f"match the weight's {W.shape[0]} outputs")
    return W


def _detect_ties(weights: Mapping[str, Tensor]) -> dict[str, str]:
    ties: dict[str, str] = {}
    names = list(weights)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            Wa, Wb = weights[a], weights[b]
            if b in ties or a in ties:
                continue
            if (Wa.data_ptr() == Wb.data_ptr() and Wa.shape == Wb.T.shape
                    and Wa.stride() == tuple(reversed(Wb.stride()))):
                ties[b] = a
    return ties


class _Target:
    """The frozen target model, its decomposed layers and their inputs."""

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        self.model = model
        self.layers = tuple(layers)
        self.modules = {n: resolve_module(model, n) for n in self.layers}
        self.weights = {n: _weight_of(m, n) for n, m in self.modules.items()}

    def bias(self, name: str) -> Tensor | None:
        b = getattr(self.modules[name], "bias", None)
        return b.detach() if isinstance(b, Tensor) else None

    def run(self, inputs: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """Target output and the decomposed layers' inputs (no gradient)."""
        with torch.no_grad(), record(self.model, [f"{n}:input" for n in self.layers], detach=True) as acts:
            out = call(self.model, inputs)
        if not isinstance(out, Tensor):
            raise SelectionError(f"SPD needs a model that returns one tensor, got {type(out).__name__}")
        return out, {n: acts[f"{n}:input"] for n in self.layers}


def _masked_hook(U: Tensor, V: Tensor, bias: Tensor | None, mask: Tensor | None) -> Callable[..., Tensor]:
    def hook(_m: nn.Module, args: tuple, kwargs: dict, _out: Any) -> Tensor:
        a = args[0] if args else next(iter(kwargs.values()))
        inner = a @ V.T
        if mask is not None:
            inner = inner * mask
        y = inner @ U.T
        return y if bias is None else y + bias

    return hook


@contextmanager
def swapped(target_model: nn.Module, spd_model: SPDModel, masks: Mapping[str, Tensor | None],
            biases: Mapping[str, Tensor | None]) -> Iterator[nn.Module]:
    """For the block, each layer in ``masks`` computes ``U ((V a) * m) + b`` (``m = None``: unmasked
    ``U V a + b``); the other layers keep their weights. Uses :func:`wdecomp.hooks.edit`."""
    hooks = {}
    for name, m in masks.items():
        U, V = spd_model.factors(name)
        hooks[name] = _masked_hook(U, V, biases.get(name), m)
    with edit(target_model, modules=hooks):
        yield target_model


# ---------------------------------------------------------------------- data
class _Feed:
    """Batches for training: a sampler ``sample(batch_size, generator)`` or a data argument, cycled."""

    def __init__(self, data: Any, batch_size: int, generator: torch.Generator) -> None:
        self.sampler = data if callable(data) and not isinstance(data, nn.Module) else None
        self.batch_size = batch_size
        self.generator = generator
        self.batches = None if self.sampler is not None else as_batches(data, what="spd()")
        self._it: Iterator[Any] | None = None

    def next(self, step: int) -> tuple[Any, Any]:
        """The batch of ``step``: a fresh sample, ``batches[step % len]`` for a list, else the next one."""
        if self.sampler is not None:
            return self.sampler(self.batch_size, self.generator), None
        if isinstance(self.batches, Sequence):
            return split(self.batches[step % len(self.batches)])
        if self._it is None:
            self._it = iter(self.batches)
        try:
            batch = next(self._it)
        except StopIteration:
            self._it = iter(self.batches)
            batch = next(self._it)
        return split(batch)


# ---------------------------------------------------------------------- training
@dataclass
class LossTerms:
    """One step's loss terms (tensors) and their weighted total."""

    total: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


def compute_losses(target: _Target, spd_model: SPDModel, config: SPDConfig, inputs: Any, kind: str,
                   generator: torch.Generator, p: float | None = None) -> LossTerms:
    """All SPD loss terms for one batch (see the module docstring for the formulas)."""
    out, acts = target.run(inputs)
    if not torch.isfinite(out).all():
        raise NonFiniteError("the target model's outputs contain NaN or inf on this batch; SPD reconstructs "
                             "the target's outputs, so fix the model or the data first")
    biases = {n: target.bias(n) for n in target.layers}
    p = config.p if p is None else p
    terms: dict[str, Tensor] = {}
    terms["faithfulness"] = faithfulness_loss(
        (target.weights[n].detach().to(spd_model.weight(n).dtype), spd_model.weight(n)) for n in target.layers)
    z = {n: spd_model.importance_logits(n, acts[n]) for n in target.layers}
    g = {n: lower_leaky_hard_sigmoid(v) for n, v in z.items()}
    terms["importance_minimality"] = importance_minimality_loss((upper_leaky_hard_sigmoid(v) for v in z.values()), p)
    zero = out.new_zeros(())
    stoch, layer = zero, zero
    S = config.n_mask_samples
    for _ in range(S):
        if config.stochastic_coeff > 0:
            masks = {n: stochastic_masks(g[n], generator) for n in target.layers}
            with swapped(target.model, spd_model, masks, biases):
                stoch = stoch + output_divergence(call(target.model, inputs), out, kind)
        if config.layerwise_coeff > 0:
            for n in target.layers:
                with swapped(target.model, spd_model, {n: stochastic_masks(g[n], generator)}, biases):
                    layer = layer + output_divergence(call(target.model, inputs), out, kind)
    terms["stochastic_recon"] = stoch / S
    terms["layerwise_recon"] = layer / (S * len(target.layers))
    total = (config.faithfulness_coeff * terms["faithfulness"] + config.stochastic_coeff * terms["stochastic_recon"]
             + config.layerwise_coeff * terms["layerwise_recon"]
             + config.importance_coeff * terms["importance_minimality"])
    return LossTerms(total, terms)


def _save_checkpoint(path: Path, spd_model: SPDModel, opt: torch.optim.Optimizer, step: int,
                     history: Mapping[str, list[float]], generators: Sequence[torch.Generator],
                     config: SPDConfig) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {f"model/{k}": v.detach().contiguous().cpu()
                                  for k, v in spd_model.state_dict().items()}
    state = opt.state_dict()
    for idx, st in state["state"].items():
        for k, v in st.items():
            tensors[f"opt/{idx}/{k}"] = (v if isinstance(v, Tensor) else torch.tensor(v)).detach().contiguous().cpu()
    for i, g in enumerate(generators):
        tensors[f"rng/{i}"] = g.get_state()
    meta = {"step": step, "history": {k: list(v) for k, v in history.items()},
            "param_groups": state["param_groups"], "config": config.to_dict()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"wdecomp.spd": json.dumps(meta)}))


def _load_checkpoint(path: Path, spd_model: SPDModel, opt: torch.optim.Optimizer,
                     generators: Sequence[torch.Generator], config: SPDConfig) -> tuple[int, dict[str, list[float]]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {})["wdecomp.spd"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    saved = SPDConfig(**meta["config"])
    if replace(saved, steps=config.steps) != config:
        raise ArgumentError(f"checkpoint {path} was written with different settings ({saved}); pass the same "
                            "settings (only steps may change) or another checkpoint path")
    spd_model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
    opt_state: dict[int, dict[str, Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt/"):
            _, idx, name = k.split("/", 2)
            opt_state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    for i, g in enumerate(generators):
        g.set_state(tensors[f"rng/{i}"])
    return int(meta["step"]), {k: list(v) for k, v in meta["history"].items()}


@dataclass(frozen=True)
class TrainRecord:
    """What a training run did: per-step loss terms, steps, time, and where it resumed from."""

    history: Mapping[str, list[float]]
    steps: int
    resumed_from: int
    seconds: float
    cpu_seconds: float


@on_model_threads
def train_spd(
    model: nn.Module,
    data: Any,
    layers: Sequence[str],
    config: SPDConfig,
    *,
    tied: Mapping[str, str] | str = "auto",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1000,
    progress: bool | None = None,
    spd_model: SPDModel | None = None,
) -> tuple[SPDModel, TrainRecord, str]:
    """Train an :class:`SPDModel` for ``model``'s ``layers`` (see :func:`~wdecomp.decomposition.spd`).
    Small models train on one thread (:mod:`wdecomp.threads`), which is faster on a shared machine
    and reproducible across core counts.

    Returns:
        ``(spd_model, record, loss_kind)``.
    """
    config.check()
    if not layers:
        raise SelectionError("spd() needs at least one module to decompose (modules=[...])")
    bad = _is_dropout_training(model)
    if bad:
        raise ModelStateError(
            f"the model is in train mode with dropout/batch-norm ({bad[:3]}): its outputs are random, so SPD "
            "would chase noise; call model.eval() first"
        )
    target = _Target(model, layers)
    for p in model.parameters():
        p.requires_grad_(False)
    if isinstance(tied, str):
        if tied != "auto":
            raise ArgumentError(f"tied must be 'auto' or a mapping {{layer: owner}}, not {tied!r}")
        ties = _detect_ties(target.weights)
    else:
        ties = dict(tied)
        for a, b in ties.items():
            if a not in target.layers or b not in target.layers or target.weights[a].shape != target.weights[b].T.shape:
                raise SelectionError(f"tied {a!r} -> {b!r}: both must be decomposed layers with transposed shapes")
    dtype = next(iter(target.weights.values())).dtype
    device = next(iter(target.weights.values())).device
    init_gen = torch.Generator().manual_seed(config.seed)
    data_gen = torch.Generator().manual_seed(config.seed + 1)  # CPU: a sampler draws with it
    mask_gen = torch.Generator(device=device).manual_seed(config.seed + 2)
    feed = _Feed(data, config.batch_size, data_gen)
    first_inputs, first_targets = feed.next(0)
    kind = config.loss
    if kind == "auto":
        kind = "kl" if isinstance(first_targets, Tensor) and not first_targets.is_floating_point() else "mse"
    _check_linear(target, first_inputs)
    if spd_model is None:
        shapes = {n: tuple(target.weights[n].shape) for n in layers}
        spd_model = SPDModel(layers, shapes, config.C, ties, config.gate_hidden, dtype, init_gen)
        W = {n: target.weights[n].detach() for n in layers}
        if config.init == "svd":
            spd_model.init_svd(W)
        else:
            spd_model.init_reference(W, init_gen)
        spd_model.to(device)
    opt = torch.optim.Adam(spd_model.parameters(), lr=config.lr)
    history: dict[str, list[float]] = {}
    start = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    resuming = ckpt is not None and ckpt.exists()
    if not resuming and config.faithfulness_warmup_steps:
        history["warmup_faithfulness"] = _faithfulness_warmup(target, spd_model, config)
    if resuming:
        start, history = _load_checkpoint(ckpt, spd_model, opt, [data_gen, mask_gen], config)
        feed = _Feed(data, config.batch_size, data_gen)
        pending = None
    else:
        pending = first_inputs
    t0, c0 = time.perf_counter(), time.process_time()
    bar = progress_bar(config.steps - start, desc="spd", enabled=progress)
    try:
        for step in range(start, config.steps):
            for group in opt.param_groups:
                group["lr"] = config.lr_at(step)
            inputs = pending if pending is not None else feed.next(step)[0]
            pending = None
            losses = compute_losses(target, spd_model, config, inputs, kind, mask_gen, config.p_at(step))
            opt.zero_grad(set_to_none=True)
            losses.total.backward()
            opt.step()
            values = {k: float(v.detach()) for k, v in losses.terms.items()}
            values["total"] = float(losses.total.detach())
            if not math.isfinite(values["total"]):
                raise NonFiniteError(f"the SPD loss became {values['total']} at step {step}: "
                                     "lower lr or the coefficients")
            for k, v in values.items():
                history.setdefault(k, []).append(v)
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix_str(" ".join(f"{k[:6]}={v:.3g}" for k, v in values.items()))
            if ckpt is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == config.steps):
                _save_checkpoint(ckpt, spd_model, opt, step + 1, history, [data_gen, mask_gen], config)
    finally:
        bar.close()
    record = TrainRecord(history, config.steps, start, time.perf_counter() - t0, time.process_time() - c0)
    return spd_model, record, kind


def _faithfulness_warmup(target: _Target, spd_model: SPDModel, config: SPDConfig) -> list[float]:
    """AdamW on ``U, V`` alone, minimising the faithfulness loss (reference ``run_faithfulness_warmup``)."""
    params = list(spd_model.U.parameters()) + list(spd_model.V.parameters())
    opt = torch.optim.AdamW(params, lr=config.faithfulness_warmup_lr,
                            weight_decay=config.faithfulness_warmup_weight_decay)
    values = []
    for _ in range(config.faithfulness_warmup_steps):
        loss = faithfulness_loss((target.weights[n].detach(), spd_model.weight(n)) for n in target.layers)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        values.append(float(loss.detach()))
    return values


def _check_linear(target: _Target, inputs: Any) -> None:
    """Refuse a module whose output is not ``F.linear(input, weight, bias)`` on real inputs."""
    out, acts = target.run(inputs)
    if not torch.isfinite(out).all():
        raise NonFiniteError("the target model's outputs contain NaN or inf on the first batch; SPD reconstructs "
                             "the target's outputs, so fix the model or the data first")
    with torch.no_grad(), record(target.model, list(target.layers), detach=True) as outs:
        call(target.model, inputs)
    for n in target.layers:
        with torch.no_grad():
            expect = F.linear(acts[n], target.weights[n], target.bias(n))
        got = outs[n]
        scale = float(expect.detach().abs().max()) + 1e-12
        if got.shape != expect.shape or float((got - expect).abs().max()) > 1e-4 * scale + 1e-6:
            raise SelectionError(
                f"module '{n}' ({type(target.modules[n]).__name__}) has a 2-D weight but does not compute "
                "y = x W^T + b on its input; SPD can only decompose linear-like modules"
            )
