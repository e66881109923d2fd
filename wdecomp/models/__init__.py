"""Toy and small models with seeded, cached training.

Every factory returns a :class:`ModelBundle`, which unpacks as ``model, data`` (the trained
network in eval mode and its training data as a list of ``(inputs, targets)`` batches) and
carries the held-out data (``.test``), the loss (``.loss``), the metrics measured after
training (``.metrics``), the hook-point module names (``.hook_points``) and the config.

======================== ============================================================
``toy_superposition``    Elhage et al. 2022 (arXiv 2209.10652), ReLU(WᵀWx + b)
``modular_addition``     (a + b) mod p, MLP or one-layer transformer (grokking)
``digits_mlp``           ReLU MLP on scikit-learn's bundled 8x8 digits
``char_transformer``     character-level transformer on ``pydoc_data.topics``
======================== ============================================================

:func:`char_scaling_sweep` trains a family of character transformers and returns the
``(N, D, loss)`` points of a scaling law. Trained weights are cached as safetensors under
``$WDECOMP_CACHE`` (default ``~/.cache/wdecomp``); pass ``cache=False`` to bypass.

Example:
    >>> import wdecomp.models as wm
    >>> model, data = wm.load("modular_addition", p=113)            # doctest: +SKIP
    >>> bundle = wm.digits_mlp(hidden=(64,))                        # doctest: +SKIP
    >>> bundle.metrics["test_accuracy"] >= 0.95                      # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wdecomp.models.base import ModelBundle
from wdecomp.models.cache import CODE_VERSION, CacheWarning, cache_dir
from wdecomp.models.char import (
    CharCorpus,
    ScalingPoint,
    char_corpus,
    char_scaling_sweep,
    char_transformer,
    sweep_points,
    unigram_entropy,
)
from wdecomp.models.digits import DigitsMLP, digits_mlp
from wdecomp.models.modular import ModularMLP, modular_addition
from wdecomp.models.spd_targets import TMS, ResidualMLP, TransposedLinear, residual_mlp, tms
from wdecomp.models.toy import ImportanceWeightedMSE, ToySuperposition, toy_superposition
from wdecomp.models.transformer import Transformer, TransformerConfig

__all__ = [
    "CODE_VERSION",
    "CacheWarning",
    "CharCorpus",
    "DigitsMLP",
    "ImportanceWeightedMSE",
    "ModelBundle",
    "ModularMLP",
    "ResidualMLP",
    "TMS",
    "TransposedLinear",
    "ScalingPoint",
    "ToySuperposition",
    "Transformer",
    "TransformerConfig",
    "available",
    "cache_dir",
    "char_corpus",
    "char_scaling_sweep",
    "char_transformer",
    "digits_mlp",
    "load",
    "modular_addition",
    "residual_mlp",
    "sweep_points",
    "tms",
    "toy_superposition",
    "unigram_entropy",
]

_FACTORIES: dict[str, Callable[..., ModelBundle]] = {
    "toy_superposition": toy_superposition,
    "modular_addition": modular_addition,
    "modular_addition_transformer": lambda **kw: modular_addition(arch="transformer", **kw),
    "digits_mlp": digits_mlp,
    "char_transformer": char_transformer,
    "tms_5_2": lambda **kw: tms(5, 2, **kw),
    "tms_5_2_id": lambda **kw: tms(5, 2, identity=True, **kw),
    "tms_40_10": lambda **kw: tms(40, 10, **kw),
    "residual_mlp": residual_mlp,
}


def available() -> list[str]:
    """Names accepted by :func:`load`."""
    return sorted(_FACTORIES)


def load(name: str, **kwargs: Any) -> ModelBundle:
    """Build (train or load from cache) the built-in model ``name`` with factory ``kwargs``.

    Args:
        name: one of :func:`available` (``"toy_superposition"``, ``"modular_addition"``,
            ``"modular_addition_transformer"``, ``"digits_mlp"``, ``"char_transformer"``).
        **kwargs: passed to the factory.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}") from None
    return factory(**kwargs)
