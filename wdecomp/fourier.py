"""Fourier structure of functions on Z_p: how a modular-addition network is known to compute.

A network trained on ``(a + b) mod p`` represents its inputs by a few discrete Fourier
frequencies (Nanda et al. 2023, "Progress measures for grokking via mechanistic
interpretability", arXiv 2301.05217). For a function ``c: Z_p -> R`` (a basis direction read
on each token), the power at frequency ``w = 1..(p-1)/2`` is ``P(w) = |F(w)|^2 + |F(p - w)|^2``
with ``F`` the DFT of ``c - mean(c)``; the *concentration* is ``max_w P(w) / sum_w P(w)``: 1 for a
pure frequency, ``2 / (p - 1)`` for power spread evenly. It plays the role of the per-direction
share that rib's ``run_generate_labels_mod_add.py`` (Apollo Research ``rib``, the LIB paper's code,
arXiv 2405.10928) writes into its node labels (``"cos(wx) + cos(wy)"`` at the embedding): on rib's
seed-0 checkpoint the two agree to the labels' printed percent (0.510 vs 51%, 0.914 vs 91%, ...;
``benchmarks/results/lib_rib_modular.md``, a benchmark measurement, since rib's files are not
shipped and no test reproduces rib's labels).

A per-direction number is not a property of a LIB basis where eigenvalues are (nearly) equal:
inside a degenerate eigenspace of ``Lambda`` the directions are fixed only up to a rotation.
:func:`lambda_groups` groups directions whose eigenvalues lie within a relative gap, and
:func:`subspace_concentration` scores a group as a subspace: the power summed over its directions,
``P_G(w) = sum_{i in G} P_i(w)``, is unchanged by any orthogonal rotation of the group's
coordinates (the DFT is linear, the rotation keeps each frequency's norm), and the score is the
share of ``P_G`` on its top ``m`` frequencies. :func:`position_split` separates a direction's
variance into the part between positions (token-independent) and the part within a position.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from wdecomp.errors import ArgumentError


def fourier_power(values: Tensor) -> Tensor:
    """``P(w)`` for ``w = 1..(p-1)//2`` (constant term removed), along the first axis.

    Args:
        values: ``(p,)`` or ``(p, k)`` (``k`` functions on ``Z_p``).

    Returns:
        ``((p-1)//2,)`` or ``((p-1)//2, k)``, float64.
    """
    p = values.shape[0]
    v = values.to(torch.float64)
    power = torch.fft.fft(v - v.mean(0), dim=0).abs().pow(2)
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


def lambda_groups(eigenvalues: Tensor, count: int, gap: float) -> list[list[int]]:
    """Group the first ``count`` entries of a descending sequence into runs of near-equal values.

    Entry ``i + 1`` joins the group of entry ``i`` when ``lam_i - lam_{i+1} <= gap * |lam_i|``
    (``gap = 0``: only exact ties). The last group is extended past ``count`` while the rule
    holds, so a direction near-degenerate with a counted one is never split off.

    Args:
        eigenvalues: ``(n,)``, descending.
        count: how many leading entries must be covered.
        gap: relative gap, ``>= 0``.

    Returns:
        Lists of indices into ``eigenvalues``, in order.
    """
    if not gap >= 0:
        raise ArgumentError(f"the relative Lambda gap must be >= 0 (0: only exact ties), got {gap}")
    lam = [float(v) for v in eigenvalues]
    groups: list[list[int]] = []
    for i in range(len(lam)):
        if groups and lam[i - 1] - lam[i] <= gap * abs(lam[i - 1]):
            groups[-1].append(i)
        elif i >= count:
            break
        else:
            groups.append([i])
    return groups


def subspace_concentration(values: Tensor, frequencies: int | None = None) -> tuple[float, list[int]]:
    """Share of a group's summed Fourier power on its top frequencies, and those frequencies.

    ``P_G(w) = sum_i P_i(w)`` over the columns of ``values``; the score is the sum of the
    ``m`` largest ``P_G(w)`` over ``sum_w P_G(w)``. ``P_G`` (hence the score) is the same for
    ``values @ R`` with any orthogonal ``R``. One column with ``m = 1`` gives
    :func:`fourier_concentration`.

    Args:
        values: ``(p, g)``, the group's ``g`` directions as functions of the token.
        frequencies: ``m``; default ``ceil(g / 2)`` (a cosine and a sine of one frequency fill
            two dimensions, so ``g`` directions made of whole pairs need ``g / 2`` frequencies).

    Returns:
        ``(share, [w, ...])`` with the top frequencies in decreasing power; ``(0.0, [])`` for
        constant functions.
    """
    if values.dim() == 1:
        values = values[:, None]
    m = math.ceil(values.shape[1] / 2) if frequencies is None else int(frequencies)
    power = fourier_power(values).sum(1)
    total = float(power.sum())
    if total <= 0:
        return 0.0, []
    top = torch.argsort(power, descending=True)[:m]
    return float(power[top].sum()) / total, [int(w) + 1 for w in top]


def position_split(coords: Tensor) -> tuple[Tensor, Tensor]:
    """Variance of each direction between positions and within positions.

    ``coords`` of shape ``(N, P, k)`` (``N`` examples, ``P`` positions). Returns ``(between,
    within)``, each ``(k,)`` float64: the variance of the ``P`` position means, and the mean over
    positions of the variance over examples (both with divisor ``N`` / ``P``), so that
    ``between + within`` is the variance over all ``N P`` rows. A direction with ``within``
    near 0 separates positions and carries (almost) no token information.
    """
    c = coords.to(torch.float64)
    means = c.mean(0)  # (P, k)
    between = means.var(0, unbiased=False)
    within = c.var(0, unbiased=False).mean(0)
    return between, within
