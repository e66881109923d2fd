"""The :class:`ModelBundle` every factory returns, and the train-or-load-from-cache driver."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from wdecomp.models import cache as _cache
from wdecomp.models.training import Batch, LossFn

__all__ = ["ModelBundle", "build", "or_defaults"]


class ModelBundle(tuple):
    """A ``(model, data)`` pair that also carries the held-out data, the loss and metrics.

    Unpacks as two values, ``model, data = factory(...)``; everything else is an attribute.

    Attributes:
        model: the trained network, in eval mode, in the requested dtype.
        data: training data as a list of ``(inputs, targets)`` batches.
        test: held-out data (test or validation split) in the same form.
        loss: ``loss(model(inputs), targets) -> scalar`` used for training and metrics.
        loss_name: ``"cross_entropy"`` or ``"mse"`` when ``loss`` is that standard loss, else
            a descriptive name (e.g. ``"importance_weighted_mse"``).
        metrics: accuracies / losses measured right after training (floats), plus
            ``train_seconds`` and ``train_steps``.
        config: every setting that determined the weights (the cache key's content).
        name: the factory name, as accepted by :func:`wdecomp.models.load`.
        from_cache: whether the weights were loaded from the cache instead of trained.
        hook_points: names of the modules worth hooking, in forward order.
        extra: model-specific objects (vocabulary, feature importances, ...).
    """

    model: nn.Module
    data: list[Batch]
    test: list[Batch]
    loss: LossFn
    loss_name: str
    metrics: dict[str, Any]
    config: dict[str, Any]
    name: str
    from_cache: bool
    hook_points: tuple[str, ...]
    extra: dict[str, Any]

    def __new__(
        cls,
        model: nn.Module,
        data: list[Batch],
        *,
        test: list[Batch],
        loss: LossFn,
        loss_name: str,
        metrics: dict[str, Any],
        config: dict[str, Any],
        name: str,
        from_cache: bool,
        hook_points: tuple[str, ...] = (),
        extra: dict[str, Any] | None = None,
    ) -> ModelBundle:
        self = super().__new__(cls, (model, data))
        self.model = model
        self.data = data
        self.test = test
        self.loss = loss
        self.loss_name = loss_name
        self.metrics = dict(metrics)
        self.config = dict(config)
        self.name = name
        self.from_cache = from_cache
        self.hook_points = tuple(hook_points)
        self.extra = dict(extra or {})
        return self

    def __repr__(self) -> str:
        shown = {
            k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.metrics.items()
        }
        return (
            f"ModelBundle(name={self.name!r}, model={type(self.model).__name__}, "
            f"train_batches={len(self.data)}, test_batches={len(self.test)}, "
            f"loss={self.loss_name!r}, metrics={shown}, from_cache={self.from_cache})"
        )


def or_defaults(defaults: Mapping[str, Any], **given: Any) -> tuple[Any, ...]:
    """The ``given`` values in the order given, each ``None`` replaced by ``defaults[name]``."""
    return tuple(defaults[name] if value is None else value for name, value in given.items())


def _cast_batches(batches: list[Batch], dtype: torch.dtype) -> list[Batch]:
    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if t.is_floating_point() else t

    return [(cast(x), cast(y)) for x, y in batches]


def build(
    name: str,
    config: dict[str, Any],
    make_model: Callable[[], nn.Module],
    fit: Callable[[nn.Module], dict[str, Any]],
    *,
    seed: int,
    cache: bool,
    dtype: torch.dtype,
) -> tuple[nn.Module, dict[str, Any], bool]:
    """Create a model with seeded initialisation, then load it from the cache or train it.

    Training always runs in float32; the result is converted to ``dtype`` afterwards, so a
    float64 model computes the same function as the cached float32 one (up to rounding).
    The global RNG state of the caller is left unchanged.

    Args:
        name: factory name (part of the cache key).
        config: settings that determine the weights (the rest of the cache key).
        make_model: builds an untrained float32 model; called after ``torch.manual_seed(seed)``.
        fit: trains the model in place and returns its metrics.
        seed: initialisation seed.
        cache: look up and store the cache entry.
        dtype: floating dtype of the returned model.

    Returns:
        ``(model, metrics, from_cache)`` with ``model`` in eval mode.
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make_model().float()
        metrics = _cache.load_entry(name, config, model) if cache else None
        from_cache = metrics is not None
        if metrics is None:
            writable = cache and _cache.check_writable(name, config)  # warns before training, not after
            metrics = fit(model)
            if writable:
                _cache.save_entry(name, config, model, metrics)
    model = model.to(dtype).eval()
    return model, metrics, from_cache
