"""Seeded training loop, batch samplers, losses and evaluation helpers.

Everything here is deterministic given a seed: randomness flows through an explicit
``torch.Generator`` created from the seed, never through global state, except for the
parameter initialisation the caller does after :func:`seed_everything`.

The optimiser is AdamW (Loshchilov & Hutter 2019, arXiv 1711.05101) with an optional linear
warm-up and cosine decay of the learning rate,

.. math::
    \\eta_t = \\eta \\cdot \\min\\!\\left(1, \\tfrac{t+1}{t_w}\\right)
    \\cdot \\left(r + (1 - r)\\,\\tfrac{1}{2}\\left(1 + \\cos \\pi \\tfrac{t}{T}\\right)\\right),

with :math:`r` the final fraction of the peak rate (``min_lr_ratio``) when ``schedule="cosine"``
and :math:`r = 1` for ``schedule="constant"``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from wdecomp.threads import on_model_threads

Batch = tuple[Tensor, Tensor]
BatchSampler = Callable[[int, torch.Generator], Batch]
LossFn = Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "Batch",
    "TrainLog",
    "accuracy",
    "batches",
    "count_parameters",
    "cross_entropy",
    "evaluate",
    "full_batch",
    "make_generator",
    "minibatch_sampler",
    "mse",
    "progress_enabled",
    "train",
]


def make_generator(seed: int) -> torch.Generator:
    """Return a CPU ``torch.Generator`` seeded with ``seed``."""
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def progress_enabled(progress: bool | None = None) -> bool:
    """Whether to show a progress bar.

    ``True``/``False`` decide; ``None`` (the default everywhere) shows one only when stderr is
    a terminal and the environment variable ``WDECOMP_NO_PROGRESS`` is unset.
    """
    if progress is not None:
        return bool(progress)
    if os.environ.get("WDECOMP_NO_PROGRESS"):
        return False
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy in nats over every predicted position.

    Args:
        logits: ``(..., V)`` unnormalised log-probabilities, e.g. ``(B, V)`` or ``(B, T, V)``.
        targets: ``(...)`` class indices matching the leading dimensions of ``logits``.

    Returns:
        Scalar :math:`-\\frac{1}{M}\\sum_j \\log \\mathrm{softmax}(z_j)_{y_j}` over all
        :math:`M` positions.
    """
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def mse(output: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error averaged over every element."""
    return F.mse_loss(output, targets)


def full_batch(inputs: Tensor, targets: Tensor) -> BatchSampler:
    """Sampler that returns the whole data set at every step (full-batch gradient descent)."""

    def sample(step: int, generator: torch.Generator) -> Batch:
        return inputs, targets

    return sample


def minibatch_sampler(inputs: Tensor, targets: Tensor, batch_size: int) -> BatchSampler:
    """Sampler of minibatches drawn without replacement within an epoch.

    Each epoch is a fresh permutation drawn from the training generator; a final partial
    minibatch of an epoch is dropped so every step sees exactly ``batch_size`` examples.
    """
    n = inputs.shape[0]
    if batch_size >= n:
        return full_batch(inputs, targets)
    per_epoch = n // batch_size
    state: dict[str, Tensor | None] = {"perm": None}

    def sample(step: int, generator: torch.Generator) -> Batch:
        i = step % per_epoch
        if i == 0 or state["perm"] is None:
            state["perm"] = torch.randperm(n, generator=generator)
        idx = state["perm"][i * batch_size : (i + 1) * batch_size]
        return inputs[idx], targets[idx]

    return sample


def batches(inputs: Tensor, targets: Tensor, batch_size: int | None = None) -> list[Batch]:
    """Split a data set into consecutive ``(inputs, targets)`` batches (last one may be short).

    Args:
        inputs: ``(N, ...)`` tensor.
        targets: ``(N, ...)`` tensor.
        batch_size: size of each batch; ``None`` gives a single batch holding everything.
    """
    n = inputs.shape[0]
    if batch_size is None or batch_size >= n:
        return [(inputs, targets)]
    return [
        (inputs[i : i + batch_size], targets[i : i + batch_size]) for i in range(0, n, batch_size)
    ]


@dataclass(frozen=True)
class TrainLog:
    """What a training run did.

    Attributes:
        steps: optimiser steps actually taken (fewer than requested if stopped early).
        seconds: wall-clock training time.
        cpu_seconds: CPU time of this process during training (all threads); a fairer
            measure than wall time on a shared machine.
        final_loss: training loss of the last step's batch.
        losses: ``(step, loss)`` pairs recorded every ``log_every`` steps.
        stopped_early: whether the ``callback`` asked to stop.
    """

    steps: int
    seconds: float
    cpu_seconds: float
    final_loss: float
    losses: tuple[tuple[int, float], ...] = field(default_factory=tuple)
    stopped_early: bool = False


def _lr_factor(step: int, steps: int, warmup: int, schedule: str, min_lr_ratio: float) -> float:
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if schedule == "constant":
        return warm
    if schedule == "cosine":
        cos = 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / max(steps, 1)))
        return warm * (min_lr_ratio + (1.0 - min_lr_ratio) * cos)
    raise ValueError(f"unknown schedule {schedule!r}; expected 'constant' or 'cosine'")


@on_model_threads
def train(
    model: nn.Module,
    loss_fn: LossFn,
    sample: BatchSampler,
    *,
    steps: int,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    warmup: int = 0,
    schedule: str = "constant",
    min_lr_ratio: float = 0.1,
    grad_clip: float | None = None,
    seed: int = 0,
    progress: bool | None = None,
    desc: str = "train",
    log_every: int = 100,
    callback: Callable[[int], bool] | None = None,
    callback_every: int = 100,
) -> TrainLog:
    """Train ``model`` in place with AdamW; deterministic given ``seed`` and the sampler. Small models
    train on one thread (:mod:`wdecomp.threads`), which is faster and reproducible across core counts.

    Args:
        model: the network; put in train mode during the loop and in eval mode afterwards.
        loss_fn: ``loss_fn(model(inputs), targets)`` returns a scalar.
        sample: ``sample(step, generator) -> (inputs, targets)``; see :func:`full_batch`,
            :func:`minibatch_sampler`.
        steps: maximum number of optimiser steps.
        lr: peak learning rate.
        weight_decay: decoupled AdamW weight decay (applied to every parameter).
        betas: Adam moment coefficients.
        warmup: linear warm-up steps.
        schedule: ``"constant"`` or ``"cosine"`` (decay to ``min_lr_ratio * lr`` at ``steps``).
        min_lr_ratio: final learning-rate fraction for the cosine schedule.
        grad_clip: clip the global gradient norm to this value if given.
        seed: seeds the generator handed to ``sample``.
        progress: show a tqdm bar; ``None`` shows it only on a terminal
            (see :func:`progress_enabled`).
        desc: label of the progress bar.
        log_every: record the loss every this many steps.
        callback: called as ``callback(step)`` (1-based, after the step) every
            ``callback_every`` steps; returning ``True`` stops training.
        callback_every: period of the callback.

    Returns:
        A :class:`TrainLog`.
    """
    generator = make_generator(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=betas)
    losses: list[tuple[int, float]] = []
    stopped = False
    loss_value = float("nan")
    t0, c0 = time.perf_counter(), time.process_time()
    model.train()
    bar = tqdm(total=steps, desc=desc, disable=not progress_enabled(progress), leave=False)
    step = 0
    try:
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr * _lr_factor(step, steps, warmup, schedule, min_lr_ratio)
            inputs, targets = sample(step, generator)
            loss = loss_fn(model(inputs), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            if step % log_every == 0 or step == steps - 1:
                loss_value = float(loss.detach())
                losses.append((step, loss_value))
                bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
            bar.update(1)
            if callback is not None and (step + 1) % callback_every == 0:
                model.eval()
                stop = bool(callback(step + 1))
                model.train()
                if stop:
                    stopped = True
                    break
        loss_value = float(loss.detach()) if steps > 0 else loss_value
    finally:
        bar.close()
        model.eval()
    return TrainLog(
        steps=(step + 1) if steps > 0 else 0,
        seconds=time.perf_counter() - t0,
        cpu_seconds=time.process_time() - c0,
        final_loss=loss_value,
        losses=tuple(losses),
        stopped_early=stopped,
    )


@torch.no_grad()
def evaluate(model: nn.Module, data: Iterable[Batch], loss_fn: LossFn) -> float:
    """Mean loss over batches, each weighted by its number of examples (leading dimension).

    With per-batch mean losses :math:`\\ell_b` over :math:`n_b` examples this is
    :math:`\\sum_b n_b \\ell_b / \\sum_b n_b`, the mean over the whole data set even when the
    last batch is shorter.
    """
    total, count = 0.0, 0
    for inputs, targets in data:
        n = int(targets.shape[0])
        total += float(loss_fn(model(inputs), targets)) * n
        count += n
    if count == 0:
        raise ValueError("evaluate() got no batches")
    return total / count


@torch.no_grad()
def accuracy(model: nn.Module, data: Iterable[Batch]) -> float:
    """Fraction of positions whose arg-max logit equals the target class.

    Logits ``(..., V)`` and targets ``(...)``; every position counts once.
    """
    correct, count = 0, 0
    for inputs, targets in data:
        pred = model(inputs).argmax(dim=-1)
        correct += int((pred == targets).sum())
        count += targets.numel()
    if count == 0:
        raise ValueError("accuracy() got no batches")
    return correct / count


def count_parameters(model: nn.Module, exclude: Sequence[str] = ()) -> int:
    """Number of parameters, skipping those whose name starts with any prefix in ``exclude``."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if not any(name == e or name.startswith(e + ".") for e in exclude)
    )
