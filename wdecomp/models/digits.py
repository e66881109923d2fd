"""An MLP classifier on scikit-learn's bundled handwritten digits (real data, no download).

The data (Alpaydin & Kaynak 1998, UCI "Optical Recognition of Handwritten Digits"; shipped with
scikit-learn as ``sklearn.datasets.load_digits``) are 1797 images of 8x8 pixels with values
0..16, scaled here to :math:`[0, 1]`, ten classes. A fixed split (seed 0, independent of the
model seed) keeps 25% for testing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from wdecomp.models.base import ModelBundle, build
from wdecomp.models.training import (
    accuracy,
    batches,
    cross_entropy,
    evaluate,
    make_generator,
    minibatch_sampler,
)
from wdecomp.models.training import train as train_loop

__all__ = ["DigitsMLP", "digits_data", "digits_mlp"]

#: Seed of the fixed train/test split of the digits data.
SPLIT_SEED = 0
TEST_FRACTION = 0.25


class DigitsMLP(nn.Module):
    """ReLU MLP ``64 -> hidden[0] -> ... -> 10``.

    Hook points: ``fc.i`` (Linear of hidden layer ``i``, pre-activation), ``act.i`` (its
    ReLU), ``out`` (the logits Linear).
    """

    def __init__(self, hidden: Sequence[int] = (64,), d_in: int = 64, n_classes: int = 10):
        super().__init__()
        widths = [d_in, *hidden]
        self.fc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.act = nn.ModuleList(nn.ReLU() for _ in hidden)
        self.out = nn.Linear(widths[-1], n_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, 10)`` for pixels ``(B, 64)``."""
        for fc, act in zip(self.fc, self.act):
            x = act(fc(x))
        return self.out(x)


def digits_data() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The fixed split ``(x_train, y_train, x_test, y_test)``; pixels float32 in [0, 1].

    Raises:
        ImportError: if scikit-learn is missing (``pip install wdecomp[digits]``).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "digits_mlp needs scikit-learn for its bundled digits data: "
            "pip install 'wdecomp[digits]'"
        ) from exc
    raw = load_digits()
    x = torch.tensor(raw.data, dtype=torch.float32) / 16.0
    y = torch.tensor(raw.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=make_generator(SPLIT_SEED))
    n_test = int(round(TEST_FRACTION * len(y)))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def digits_mlp(
    hidden: Sequence[int] = (64,),
    *,
    seed: int = 0,
    steps: int = 1500,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 1e-2,
    eval_batch_size: int = 256,
    train: bool = True,
    cache: bool = True,
    progress: bool | None = None,
    dtype: torch.dtype = torch.float32,
) -> ModelBundle:
    """ReLU MLP trained on the scikit-learn digits (minibatch AdamW, cosine schedule).

    Args:
        hidden: widths of the hidden layers.
        seed: seeds initialisation and minibatch order (the split is fixed).
        steps: optimiser steps.
        batch_size: training minibatch size.
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        eval_batch_size: size of the batches in the returned ``data``/``test`` (the last one
            is shorter: 1348 training and 449 test images).
        train: ``False`` returns the untrained (seeded) initialisation.
        cache: load/store trained weights in the cache.
        progress: progress bar on/off; ``None`` shows it only on a terminal.
        dtype: float32 or float64.

    Returns:
        A :class:`~wdecomp.models.base.ModelBundle`; inputs ``(B, 64)`` float, targets
        ``(B,)`` int64, logits ``(B, 10)``; ``metrics`` holds ``train_accuracy``,
        ``test_accuracy``, ``train_loss``, ``test_loss``.
    """
    hidden = tuple(int(h) for h in hidden)
    config = dict(
        hidden=list(hidden), seed=seed, steps=steps, batch_size=batch_size, lr=float(lr),
        weight_decay=float(weight_decay), split_seed=SPLIT_SEED, test_fraction=TEST_FRACTION,
        train=train,
    )
    x_tr, y_tr, x_te, y_te = digits_data()
    data = batches(x_tr, y_tr, eval_batch_size)
    test = batches(x_te, y_te, eval_batch_size)

    def fit(model: nn.Module) -> dict:
        steps_done, seconds, cpu = 0, 0.0, 0.0
        if train:
            log = train_loop(
                model, cross_entropy, minibatch_sampler(x_tr, y_tr, batch_size), steps=steps,
                lr=lr, weight_decay=weight_decay, schedule="cosine", min_lr_ratio=0.0,
                warmup=min(50, steps // 10), seed=seed, progress=progress, desc="digits_mlp",
            )
            steps_done, seconds, cpu = log.steps, log.seconds, log.cpu_seconds
        return {
            "train_accuracy": accuracy(model, data),
            "test_accuracy": accuracy(model, test),
            "train_loss": evaluate(model, data, cross_entropy),
            "test_loss": evaluate(model, test, cross_entropy),
            "train_steps": steps_done,
            "train_seconds": seconds,
            "train_cpu_seconds": cpu,
        }

    model, metrics, from_cache = build(
        "digits_mlp", config, lambda: DigitsMLP(hidden), fit, seed=seed, cache=cache and train,
        dtype=dtype,
    )
    cast = [(x.to(dtype), y) for x, y in data], [(x.to(dtype), y) for x, y in test]
    hooks = tuple(n for i in range(len(hidden)) for n in (f"fc.{i}", f"act.{i}")) + ("out",)
    return ModelBundle(
        model, cast[0], test=cast[1], loss=cross_entropy, loss_name="cross_entropy",
        metrics=metrics, config=config, name="digits_mlp", from_cache=from_cache,
        hook_points=hooks, extra={"n_classes": 10},
    )
