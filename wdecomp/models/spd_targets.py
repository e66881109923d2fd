"""Target models of the parameter-decomposition papers (APD, arXiv 2501.14926; SPD, arXiv 2506.20790).

============================ =================================================================
``tms``                      toy model of superposition ``ReLU(W^T [I] W x + b)`` with the SPD
                             paper's data (feature probability 0.05, values ``U[0, 1]``, equal
                             importances): TMS 5-2, 5-2+ID, 40-10
``residual_mlp``             the "compressed computation" model: 100 features, a fixed random
                             unit-norm embedding ``W_E`` (``W_U = W_E^T``), one residual ReLU MLP
                             of 50 neurons, labels ``y = x + ReLU(x)``
============================ =================================================================

The layers are named as in Goodfire's ``spd`` repository (branch ``spd-paper``): ``linear1``,
``hidden_layers.0`` (the identity, fixed) and ``linear2`` for TMS; ``layers.0.mlp_in`` and
``layers.0.mlp_out`` for the residual MLP, so the paper's ``target_module_patterns`` read the same.

**Tied weights.** TMS reads features back with the transpose of its embedding: ``linear2`` is a
:class:`TransposedLinear` whose ``weight`` *is* ``linear1.weight.T`` (a view of the same storage,
no parameter of its own) plus its own bias. A decomposition that wants to respect the tie (as the
SPD paper's runs do) can detect it from the shared storage; see :mod:`wdecomp.decomposition`.

Training follows the SPD paper's appendix ("Training details and hyperparameters"): TMS with AdamW,
weight decay 0.01, constant learning rate 5e-3, 10k steps, batch 1024 (5-2) or 8192 (40-10); the
residual MLP with AdamW, weight decay 0.01, peak learning rate 3e-3, cosine decay, batch 2048,
features in ``[-1, 1]`` with probability 0.01, 1000 steps (the reference's training script).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wdecomp.models.base import ModelBundle, build
from wdecomp.models.training import Batch, evaluate, make_generator, mse
from wdecomp.models.training import train as train_loop

__all__ = [
    "ResidualMLP",
    "TMS",
    "TransposedLinear",
    "residual_mlp",
    "sparse_features",
    "tms",
]


class TransposedLinear(nn.Module):
    """``y = x W_s + b``: a linear layer whose weight is another ``nn.Linear``'s weight, transposed.

    ``weight`` is the view ``source.weight.T`` (shape ``(in_s, out_s)``), so gradients and edits of
    the source parameter apply to both layers. The source module is referenced, not registered, so
    ``named_parameters()`` lists its weight once (under the source's name).
    """

    def __init__(self, source: nn.Linear, bias: bool = True) -> None:
        super().__init__()
        object.__setattr__(self, "_source", source)
        out_features = source.in_features
        self.in_features, self.out_features = source.out_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @property
    def weight(self) -> Tensor:
        """``(out, in)`` view of the source weight, transposed."""
        return self._source.weight.T

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, tied=transpose"


class TMS(nn.Module):
    """Toy model of superposition ``x -> ReLU(W^T I^k W x + b)`` (Elhage et al. 2022, arXiv 2209.10652).

    Modules: ``linear1`` (``W``: ``(m, n)``, no bias), ``hidden_layers`` (``k`` fixed ``m x m``
    identity ``nn.Linear`` layers without bias; their weights do not train), ``linear2``
    (:class:`TransposedLinear` of ``linear1``, bias ``b``).
    """

    def __init__(self, n_features: int, d_hidden: int, n_identity: int = 0) -> None:
        super().__init__()
        self.linear1 = nn.Linear(n_features, d_hidden, bias=False)
        self.hidden_layers = nn.ModuleList()
        for _ in range(n_identity):
            layer = nn.Linear(d_hidden, d_hidden, bias=False)
            with torch.no_grad():
                layer.weight.copy_(torch.eye(d_hidden))
            layer.weight.requires_grad_(False)
            self.hidden_layers.append(layer)
        self.linear2 = TransposedLinear(self.linear1, bias=True)
        with torch.no_grad():
            self.linear2.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        """``(..., n)`` features to ``(..., n)`` reconstructions."""
        h = self.linear1(x)
        for layer in self.hidden_layers:
            h = layer(h)
        return F.relu(self.linear2(h))


class _MLP(nn.Module):
    def __init__(self, d_model: int, d_mlp: int) -> None:
        super().__init__()
        self.mlp_in = nn.Linear(d_model, d_mlp, bias=False)
        self.mlp_out = nn.Linear(d_mlp, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp_out(F.relu(self.mlp_in(x)))


class ResidualMLP(nn.Module):
    """Residual MLP of the compressed-computation toy (Braun et al. 2025, arXiv 2501.14926, Sec. 3.2).

    ``r = x W_E``, ``r <- r + MLP_l(r)`` for each layer, output ``r W_E^T``. ``W_E`` (``(n, d)``,
    unit-norm rows) is fixed; only the MLPs (``layers.<l>.mlp_in``, ``layers.<l>.mlp_out``) train.
    """

    def __init__(self, n_features: int = 100, d_embed: int = 1000, d_mlp: int = 50, n_layers: int = 1) -> None:
        super().__init__()
        W_E = torch.randn(n_features, d_embed)
        self.W_E = nn.Parameter(W_E / W_E.norm(dim=-1, keepdim=True), requires_grad=False)
        self.layers = nn.ModuleList(_MLP(d_embed, d_mlp) for _ in range(n_layers))

    def forward(self, x: Tensor) -> Tensor:
        r = x @ self.W_E
        for layer in self.layers:
            r = r + layer(r)
        return r @ self.W_E.T


def sparse_features(
    n: int, n_features: int, probability: float, generator: torch.Generator, low: float = 0.0
) -> Tensor:
    """``(n, n_features)`` inputs: each entry independently active with ``probability``, value ``U[low, 1]``."""
    values = torch.rand(n, n_features, generator=generator) * (1.0 - low) + low
    active = torch.rand(n, n_features, generator=generator) < probability
    return values * active


def _fixed(seed: int, n_batches: int, batch_size: int, draw: Callable[[int, torch.Generator], Batch]) -> list[Batch]:
    g = make_generator(seed)
    return [draw(batch_size, g) for _ in range(n_batches)]


def _cast(batches: list[Batch], dtype: torch.dtype) -> list[Batch]:
    return [(x.to(dtype), y.to(dtype)) for x, y in batches]


def tms(
    n_features: int = 5,
    d_hidden: int = 2,
    identity: bool = False,
    *,
    feature_probability: float = 0.05,
    seed: int = 0,
    steps: int = 10_000,
    batch_size: int | None = None,
    lr: float = 5e-3,
    weight_decay: float = 0.01,
    n_batches: int = 4,
    cache: bool = True,
    progress: bool | None = None,
    dtype: torch.dtype = torch.float32,
) -> ModelBundle:
    """TMS target model with the SPD paper's data and training (arXiv 2506.20790, appendix).

    Args:
        n_features: ``n`` (5 or 40 in the paper).
        d_hidden: ``m`` (2 or 10).
        identity: insert one fixed ``m x m`` identity layer (``TMS_{n-m+ID}``).
        feature_probability: probability that a feature is active; active values are ``U[0, 1]``.
        seed: seeds the initialisation, the training batches and the returned data.
        steps: AdamW steps (paper: 10k).
        batch_size: paper: 1024 for ``n <= 5``, 8192 otherwise (the default picks that).
        lr: constant learning rate (paper: 5e-3).
        weight_decay: AdamW weight decay (paper: 0.01).
        n_batches: fixed batches in ``data`` and ``test``.
        cache: load/store trained weights in the model cache.
        progress: progress bar; ``None`` shows it only on a terminal.
        dtype: float32 or float64.

    Returns:
        A :class:`~wdecomp.models.base.ModelBundle`; ``extra["sample"]`` is
        ``sample(batch_size, generator) -> inputs`` drawing fresh data from the training distribution,
        ``extra["feature_probability"]`` the probability.
    """
    if batch_size is None:
        batch_size = 1024 if n_features <= 5 else 8192
    config = dict(n_features=n_features, d_hidden=d_hidden, identity=bool(identity),
                  feature_probability=float(feature_probability), seed=seed, steps=steps,
                  batch_size=batch_size, lr=float(lr), weight_decay=float(weight_decay))

    def draw(b: int, g: torch.Generator) -> Batch:
        x = sparse_features(b, n_features, feature_probability, g)
        return x, x.clone()

    data = _fixed(seed + 1_000_003, n_batches, batch_size, draw)
    test = _fixed(seed + 2_000_003, n_batches, batch_size, draw)

    def fit(model: nn.Module) -> dict[str, Any]:
        log = train_loop(model, mse, lambda step, g: draw(batch_size, g), steps=steps, lr=lr,
                         weight_decay=weight_decay, schedule="constant", seed=seed, progress=progress,
                         desc=f"tms_{n_features}_{d_hidden}{'_id' if identity else ''}")
        return {"train_loss": evaluate(model, data, mse), "test_loss": evaluate(model, test, mse),
                "train_steps": log.steps, "train_seconds": log.seconds, "train_cpu_seconds": log.cpu_seconds}

    name = "tms"
    model, metrics, from_cache = build(name, config, lambda: TMS(n_features, d_hidden, int(identity)), fit,
                                       seed=seed, cache=cache, dtype=dtype)
    label = f"tms_{n_features}_{d_hidden}" + ("_id" if identity else "")

    def sample(b: int, g: torch.Generator) -> Tensor:
        return sparse_features(b, n_features, feature_probability, g).to(dtype)

    hooks = ("linear1",) + tuple(f"hidden_layers.{i}" for i in range(int(identity))) + ("linear2",)
    return ModelBundle(model, _cast(data, dtype), test=_cast(test, dtype), loss=mse, loss_name="mse",
                       metrics=metrics, config=config, name=label, from_cache=from_cache, hook_points=hooks,
                       extra={"sample": sample, "feature_probability": feature_probability})


def residual_mlp(
    n_features: int = 100,
    d_embed: int = 1000,
    d_mlp: int = 50,
    n_layers: int = 1,
    *,
    feature_probability: float = 0.01,
    seed: int = 0,
    steps: int = 1000,
    batch_size: int = 2048,
    lr: float = 3e-3,
    weight_decay: float = 0.01,
    n_batches: int = 4,
    cache: bool = True,
    progress: bool | None = None,
    dtype: torch.dtype = torch.float32,
) -> ModelBundle:
    """The compressed-computation residual MLP (Braun et al. 2025; SPD paper Sec. "Toy Model of
    Compressed Computation"), trained on ``y_i = x_i + ReLU(x_i)``, ``x_i`` active with
    ``feature_probability`` and then ``U[-1, 1]``; MSE on the read-off output; AdamW, weight decay 0.01,
    cosine learning-rate decay.

    Returns:
        A :class:`~wdecomp.models.base.ModelBundle` (targets are the labels); ``extra["sample"]``
        draws fresh inputs.
    """
    config = dict(n_features=n_features, d_embed=d_embed, d_mlp=d_mlp, n_layers=n_layers,
                  feature_probability=float(feature_probability), seed=seed, steps=steps,
                  batch_size=batch_size, lr=float(lr), weight_decay=float(weight_decay))

    def draw(b: int, g: torch.Generator) -> Batch:
        x = sparse_features(b, n_features, feature_probability, g, low=-1.0)
        return x, x + F.relu(x)

    data = _fixed(seed + 1_000_003, n_batches, batch_size, draw)
    test = _fixed(seed + 2_000_003, n_batches, batch_size, draw)

    def fit(model: nn.Module) -> dict[str, Any]:
        log = train_loop(model, mse, lambda step, g: draw(batch_size, g), steps=steps, lr=lr,
                         weight_decay=weight_decay, schedule="cosine", min_lr_ratio=0.0, seed=seed,
                         progress=progress, desc="residual_mlp")
        return {"train_loss": evaluate(model, data, mse), "test_loss": evaluate(model, test, mse),
                "train_steps": log.steps, "train_seconds": log.seconds, "train_cpu_seconds": log.cpu_seconds}

    model, metrics, from_cache = build("residual_mlp", config,
                                       lambda: ResidualMLP(n_features, d_embed, d_mlp, n_layers), fit,
                                       seed=seed, cache=cache, dtype=dtype)

    def sample(b: int, g: torch.Generator) -> Tensor:
        return sparse_features(b, n_features, feature_probability, g, low=-1.0).to(dtype)

    hooks = tuple(f"layers.{i}.{p}" for i in range(n_layers) for p in ("mlp_in", "mlp_out"))
    return ModelBundle(model, _cast(data, dtype), test=_cast(test, dtype), loss=mse, loss_name="mse",
                       metrics=metrics, config=config, name="residual_mlp", from_cache=from_cache,
                       hook_points=hooks, extra={"sample": sample, "feature_probability": feature_probability})
