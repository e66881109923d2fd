"""Random probe vectors for stochastic estimators."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from wdecomp.progress import progress_bar


def probes(p: int, n: int, kind: str, gen: torch.Generator, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``n`` probe columns ``(p, n)`` with ``E[z z^T] = I``: ``"rademacher"`` (+-1) or ``"gaussian"``."""
    if kind == "rademacher":
        z = torch.randint(0, 2, (p, n), generator=gen).to(dtype).mul_(2).sub_(1)
    elif kind == "gaussian":
        z = torch.randn(p, n, generator=gen, dtype=dtype)
    else:
        raise ValueError(f"distribution must be 'rademacher' or 'gaussian', got {kind!r}")
    return z.to(device)


def probe_products(A: Any, num_matvecs: int, distribution: str, block_size: int, seed: int, desc: str,
                   progress: bool | None) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(Z, Z ⊙ A Z)`` for blocks of seeded probes, ``num_matvecs`` columns in all, with a
    progress bar: the loop every Hutchinson-type estimator shares."""
    gen = torch.Generator().manual_seed(seed)
    p = A.shape[0]
    with progress_bar(total=num_matvecs, desc=desc, enabled=progress) as bar:
        for s in range(0, num_matvecs, block_size):
            n = min(block_size, num_matvecs - s)
            Z = probes(p, n, distribution, gen, A.dtype, A.device)
            yield Z, Z * A.matmat(Z)
            bar.update(n)
