"""Random probe vectors for stochastic estimators."""

from __future__ import annotations

import torch
from torch import Tensor


def probes(p: int, n: int, kind: str, gen: torch.Generator, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``n`` probe columns ``(p, n)`` with ``E[z z^T] = I``: ``"rademacher"`` (+-1) or ``"gaussian"``."""
    if kind == "rademacher":
        z = torch.randint(0, 2, (p, n), generator=gen).to(dtype).mul_(2).sub_(1)
    elif kind == "gaussian":
        z = torch.randn(p, n, generator=gen, dtype=dtype)
    else:
        raise ValueError(f"distribution must be 'rademacher' or 'gaussian', got {kind!r}")
    return z.to(device)
