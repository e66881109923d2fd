"""Small helpers shared by the operators: slicing batches and per-batch model functions."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from wdecomp.objective import Objective, call_model


def batch_size(batch: Any) -> int:
    """Number of examples (leading dimension of the targets)."""
    return int(batch[1].shape[0])


def slice_examples(obj: Any, start: int, stop: int) -> Any:
    """Examples ``start:stop`` of a tensor, or of every tensor in a tuple/list/dict."""
    if isinstance(obj, Tensor):
        return obj[start:stop]
    if isinstance(obj, Mapping):
        return {k: slice_examples(v, start, stop) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(slice_examples(v, start, stop) for v in obj)
    return obj


def output_function(objective: Objective, inputs: Any) -> Callable[[dict[str, Tensor]], Tensor]:
    """``theta_sel -> model outputs`` on fixed ``inputs``."""
    return lambda p: call_model(objective.model, objective.state(p), inputs)
