"""wdecomp.fourier: per-direction and per-subspace Fourier concentration, Lambda groups, position split."""

from __future__ import annotations

import math

import pytest
import torch

from wdecomp.errors import ArgumentError
from wdecomp.fourier import (
    fourier_concentration,
    fourier_power,
    lambda_groups,
    position_split,
    subspace_concentration,
)

P = 31
T = torch.arange(P, dtype=torch.float64)


def wave(w: int, phase: float = 0.0) -> torch.Tensor:
    return torch.cos(2 * math.pi * w * T / P + phase)


def rotation(g: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(g, g, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return q


def test_pure_frequency_at_any_phase_and_offset_is_fully_concentrated():
    conc, w = fourier_concentration(3.0 * wave(7, 0.4) + 5.0)
    assert w == 7 and conc == pytest.approx(1.0, abs=1e-13)
    assert fourier_concentration(torch.full((P,), 2.0)) == (0.0, 0)


def test_power_of_several_columns_is_per_column_and_sums_to_the_variance():
    v = torch.stack([wave(2) + 0.5 * wave(9, 1.0), wave(4, 0.3)], 1)
    power = fourier_power(v)
    assert power.shape == ((P - 1) // 2, 2)
    torch.testing.assert_close(power[:, 0], fourier_power(v[:, 0]), rtol=0, atol=0)
    torch.testing.assert_close(power.sum(0), P * P * v.var(0, unbiased=False), rtol=1e-12, atol=0)  # Parseval
    assert float(power[1, 0] / power[:, 0].sum()) == pytest.approx(0.8, abs=1e-12)  # 1 : 0.25


def test_subspace_concentration_is_unchanged_by_a_rotation_inside_the_group():
    v = torch.stack([wave(3) + 0.3 * wave(11), wave(3, 1.2) - 0.2 * wave(5), wave(8, 0.7) + 0.1 * wave(3)], 1)
    for m in (None, 1, 3):
        share, freqs = subspace_concentration(v, m)
        r_share, r_freqs = subspace_concentration(v @ rotation(3, 0), m)
        assert r_share == pytest.approx(share, rel=1e-12) and r_freqs == freqs
    assert subspace_concentration(v)[1] == [3, 8]  # ceil(3/2) = 2 frequencies
    # one column with one frequency is fourier_concentration
    share, freqs = subspace_concentration(v[:, 0])
    conc, w = fourier_concentration(v[:, 0])
    assert share == pytest.approx(conc, rel=1e-14) and freqs == [w]


def test_a_rotated_cos_sin_pair_is_one_frequency_but_a_rotated_pair_of_two_frequencies_is_not():
    """The default counts whole cosine/sine pairs: ``g`` directions, ``ceil(g/2)`` frequencies."""
    c = 1 / math.sqrt(2)
    R = torch.tensor([[c, -c], [c, c]], dtype=torch.float64)
    pair = torch.stack([wave(5), wave(5, -math.pi / 2)], 1) @ R  # cos and sin of 5, rotated 45 degrees
    two = torch.stack([wave(5), wave(12)], 1) @ R  # cos 5 and cos 12, rotated 45 degrees
    assert fourier_concentration(pair[:, 0])[0] == pytest.approx(1.0, abs=1e-13)
    assert subspace_concentration(pair) == (pytest.approx(1.0, abs=1e-13), [5])
    assert fourier_concentration(two[:, 0])[0] == pytest.approx(0.5, abs=1e-13)  # each direction mixes both
    assert subspace_concentration(two)[0] == pytest.approx(0.5, abs=1e-13)  # not one frequency's pair
    assert subspace_concentration(two, 2)[0] == pytest.approx(1.0, abs=1e-13)  # two frequencies, one each


def test_lambda_groups_split_at_relative_gaps_and_extend_past_the_count():
    lam = torch.tensor([10.0, 9.5, 8.0, 4.0, 3.9, 3.85, 1.0])
    assert lambda_groups(lam, 2, 0.1) == [[0, 1]]
    assert lambda_groups(lam, 4, 0.1) == [[0, 1], [2], [3, 4, 5]]  # 4 is near 3, 5 near 4: kept together
    assert lambda_groups(lam, 4, 0.0) == [[0], [1], [2], [3]]
    assert lambda_groups(lam, 3, 0.2) == [[0, 1, 2]]  # 9.5 -> 8.0 is a 15.8% gap
    assert lambda_groups(torch.tensor([2.0, 2.0, 1.0]), 1, 0.0) == [[0, 1]]  # exact ties always group


@pytest.mark.refuses("a negative relative Lambda gap in lambda_groups",
                     "a gap is a distance between eigenvalues; 0 groups only exact ties")
def test_negative_gap_is_refused():
    with pytest.raises(ArgumentError, match="gap must be >= 0"):
        lambda_groups(torch.tensor([2.0, 1.0]), 1, -0.1)


def test_position_split_adds_up_to_the_variance_and_finds_a_position_direction():
    tok = torch.randn(200, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    level = torch.tensor([1.0, -2.0, 4.0], dtype=torch.float64)  # one value per position
    coords = torch.stack([level.expand(200, 3), tok, tok + torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64)], -1)
    between, within = position_split(coords)
    total = coords.reshape(-1, 3).var(0, unbiased=False)
    torch.testing.assert_close(between + within, total, rtol=1e-12, atol=0)
    assert float(within[0]) == 0.0 and float(between[0]) == pytest.approx(float(level.var(unbiased=False)), rel=1e-12)
    assert float(between[2]) > float(between[1])
