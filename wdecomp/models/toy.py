"""Toy model of superposition (Elhage et al. 2022, "Toy Models of Superposition", arXiv 2209.10652).

:math:`n` sparse features :math:`x \\in [0, 1]^n` are compressed into :math:`m < n` dimensions
and read back with the transposed map,

.. math::
    h = W x, \\qquad x' = \\mathrm{ReLU}(W^\\top h + b), \\qquad W \\in \\mathbb{R}^{m \\times n},

trained on the importance-weighted reconstruction error

.. math::
    L = \\frac{1}{B\\,n} \\sum_{x} \\sum_{i=1}^{n} I_i\\,(x_i - x'_i)^2,
    \\qquad I_i = \\gamma^{\\,i-1},

where each feature is independently zero with probability :math:`S` (the sparsity) and
otherwise uniform on :math:`[0, 1]`. At :math:`S = 0` the model keeps only the :math:`m` most
important features (orthogonal columns, the rest near zero); at high sparsity it stores all
features in superposition, e.g. five features in two dimensions as a regular pentagon.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wdecomp.models.base import ModelBundle, build
from wdecomp.models.training import Batch, evaluate, make_generator
from wdecomp.models.training import train as train_loop

__all__ = ["ImportanceWeightedMSE", "ToySuperposition", "sample_features", "toy_superposition"]


class ToySuperposition(nn.Module):
    """:math:`x \\mapsto \\mathrm{ReLU}(W^\\top W x + b)` with tied weights.

    Parameters: ``W`` of shape ``(m, n)`` and ``b`` of shape ``(n,)``.
    Hook points: ``hidden`` (identity on :math:`h = Wx`, shape ``(B, m)``) and ``act`` (the
    output ReLU, shape ``(B, n)``).
    """

    def __init__(self, n_features: int, d_hidden: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.empty(d_hidden, n_features))
        nn.init.xavier_normal_(self.W)
        self.b = nn.Parameter(torch.zeros(n_features))
        self.hidden = nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(B, n)`` features to ``(B, n)`` reconstructions."""
        h = self.hidden(x @ self.W.T)
        return self.act(h @ self.W + self.b)


class ImportanceWeightedMSE:
    """Loss :math:`\\frac{1}{Bn}\\sum_{b,i} I_i (x'_{bi} - x_{bi})^2`; ``importance`` is ``(n,)``.

    Called as ``loss(output, target)``; moves ``importance`` to the output's dtype and device.
    """

    def __init__(self, importance: Tensor) -> None:
        self.importance = importance.detach().clone()

    def __call__(self, output: Tensor, target: Tensor) -> Tensor:
        w = self.importance.to(dtype=output.dtype, device=output.device)
        return (w * (output - target) ** 2).mean()

    def __repr__(self) -> str:
        return f"ImportanceWeightedMSE(importance={self.importance.tolist()})"


def sample_features(
    n: int, n_features: int, sparsity: float, generator: torch.Generator
) -> Tensor:
    """Draw ``(n, n_features)`` inputs: each entry 0 w.p. ``sparsity``, else ``U[0, 1]``."""
    values = torch.rand(n, n_features, generator=generator)
    keep = torch.rand(n, n_features, generator=generator) >= sparsity
    return values * keep


def toy_superposition(
    n_features: int = 5,
    d_hidden: int = 2,
    sparsity: float = 0.9,
    importance_decay: float = 0.9,
    *,
    seed: int = 0,
    steps: int = 4000,
    batch_size: int = 1024,
    lr: float = 1e-2,
    n_batches: int = 4,
    train: bool = True,
    cache: bool = True,
    progress: bool | None = None,
    dtype: torch.dtype = torch.float32,
) -> ModelBundle:
    """Toy model of superposition (Elhage et al. 2022, arXiv 2209.10652), trained.

    Training draws a fresh batch of sparse features every step (AdamW, no weight decay,
    cosine schedule). The returned ``data`` and ``test`` are fixed, seeded sets of
    ``n_batches`` batches each; targets equal inputs. Use ``bundle.loss`` (an
    :class:`ImportanceWeightedMSE`) or ``bundle.extra["importance"]`` for the weighted loss.

    Args:
        n_features: number of features :math:`n`.
        d_hidden: hidden dimension :math:`m`.
        sparsity: probability :math:`S` that a feature is zero.
        importance_decay: :math:`\\gamma` in :math:`I_i = \\gamma^{i-1}`.
        seed: seeds initialisation, training batches and the returned data.
        steps: optimiser steps.
        batch_size: examples per step and per returned batch.
        lr: peak learning rate.
        n_batches: number of batches in ``data`` and in ``test``.
        train: ``False`` returns the untrained (seeded) initialisation.
        cache: load/store trained weights in the cache (see :mod:`wdecomp.models.cache`).
        progress: progress bar on/off; ``None`` shows it only on a terminal.
        dtype: float32 or float64.

    Returns:
        A :class:`~wdecomp.models.base.ModelBundle`; ``metrics`` holds ``train_loss`` and
        ``test_loss`` (weighted MSE), ``extra`` holds ``importance`` ``(n,)``.

    Example:
        >>> import torch
        >>> b = toy_superposition(progress=False)
        >>> model, data = b
        >>> cols = model.W.detach().norm(dim=0)  # five columns, each of norm close to 1
    """
    importance = importance_decay ** torch.arange(n_features, dtype=torch.float32)
    loss = ImportanceWeightedMSE(importance)
    config = dict(
        n_features=n_features, d_hidden=d_hidden, sparsity=float(sparsity),
        importance_decay=float(importance_decay), seed=seed, steps=steps,
        batch_size=batch_size, lr=float(lr), train=train,
    )

    def fixed(offset: int) -> list[Batch]:
        g = make_generator(seed + offset)
        out = []
        for _ in range(n_batches):
            x = sample_features(batch_size, n_features, sparsity, g)
            out.append((x, x.clone()))
        return out

    data, test = fixed(1_000_003), fixed(2_000_003)

    def fit(model: nn.Module) -> dict:
        log_steps, seconds, cpu = 0, 0.0, 0.0
        if train:
            def sample(step: int, g: torch.Generator) -> Batch:
                x = sample_features(batch_size, n_features, sparsity, g)
                return x, x

            log = _train(model, loss, sample, steps=steps, lr=lr, seed=seed, progress=progress)
            log_steps, seconds, cpu = log.steps, log.seconds, log.cpu_seconds
        return {
            "train_loss": evaluate(model, data, loss),
            "test_loss": evaluate(model, test, loss),
            "train_steps": log_steps,
            "train_seconds": seconds,
            "train_cpu_seconds": cpu,
        }

    model, metrics, from_cache = build(
        "toy_superposition", config, lambda: ToySuperposition(n_features, d_hidden), fit,
        seed=seed, cache=cache and train, dtype=dtype,
    )
    return ModelBundle(
        model, _cast(data, dtype), test=_cast(test, dtype), loss=loss,
        loss_name="importance_weighted_mse", metrics=metrics, config=config,
        name="toy_superposition", from_cache=from_cache, hook_points=("hidden", "act"),
        extra={"importance": importance.to(dtype)},
    )


def _train(model, loss, sample, *, steps, lr, seed, progress):  # noqa: ANN001, ANN202
    return train_loop(
        model, loss, sample, steps=steps, lr=lr, weight_decay=0.0, schedule="cosine",
        min_lr_ratio=0.05, warmup=min(100, steps // 10), seed=seed, progress=progress,
        desc="toy_superposition",
    )


def _cast(batches: list[Batch], dtype: torch.dtype) -> list[Batch]:
    return [(x.to(dtype), y.to(dtype)) for x, y in batches]
