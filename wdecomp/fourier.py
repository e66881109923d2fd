"""Fourier structure of functions on Z_p: how a modular-addition network is known to compute.

A network trained on ``(a + b) mod p`` represents its inputs by a few discrete Fourier
frequencies (Nanda et al. 2023, "Progress measures for grokking via mechanistic
interpretability", arXiv 2301.05217). For a function ``c: Z_p -> R`` (a basis direction read
on each token), the power at frequency ``w = 1..(p-1)/2`` is ``P(w) = |F(w)|^2 + |F(p - w)|^2``
with ``F`` the DFT of ``c - mean(c)``; the *concentration* is ``max_w P(w) / sum_w P(w)``: 1 for a
pure frequency, ``2 / (p - 1)`` for power spread evenly.
"""

from __future__ import annotations

import torch
from torch import Tensor


def fourier_power(values: Tensor) -> Tensor:
    """``P(w)`` for ``w = 1..(p-1)//2`` of ``values`` of shape ``(p,)`` (constant term removed)."""
    p = values.shape[0]
    power = torch.fft.fft((values - values.mean()).to(torch.float64)).abs().pow(2)
    w = torch.arange(1, (p - 1) // 2 + 1)
    return power[w] + power[p - w]


def fourier_concentration(values: Tensor) -> tuple[float, int]:
    """``(max_w P(w) / sum_w P(w), argmax w)``; ``(0.0, 0)`` for a constant function."""
    power = fourier_power(values)
    total = float(power.sum())
    if total <= 0:
        return 0.0, 0
    best = int(torch.argmax(power))
    return float(power[best]) / total, best + 1
