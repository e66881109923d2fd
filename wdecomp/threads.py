"""How many CPU threads torch uses for a piece of work.

Tiny models (toy models, small MLPs) run faster on one thread: their kernels are too small to
split, and on a busy 2-core machine two threads per process contend with each other (measured
here: a 15-parameter toy model trained 14x slower on 2 threads than on 1 under load).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

import torch

T = TypeVar("T")

#: Below this many parameters, work runs on one thread.
SMALL_MODEL_PARAMS = 50_000


@contextmanager
def limit_threads(n: int | None) -> Iterator[None]:
    """Run the block with at most ``n`` intra-op threads (``None``: unchanged), then restore."""
    before = torch.get_num_threads()
    if n is not None and n < before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def threads_for(num_params: int) -> int | None:
    """One thread for small models, the current setting otherwise."""
    return 1 if num_params < SMALL_MODEL_PARAMS else None


def model_threads(model: torch.nn.Module) -> AbstractContextManager[None]:
    """:func:`limit_threads` for work on ``model``: one thread below :data:`SMALL_MODEL_PARAMS`
    parameters, the current setting otherwise."""
    return limit_threads(threads_for(sum(p.numel() for p in model.parameters())))


def on_model_threads(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator: ``fn(model, ...)`` runs under :func:`model_threads` of its ``model`` (the first
    positional or the ``model`` keyword argument)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> T:
        model = args[0] if args else kwargs["model"]
        with model_threads(model):
            return fn(*args, **kwargs)

    return run
