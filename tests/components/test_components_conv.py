"""Components and ablation of a conv net's channel basis: the axis is read, or refused clearly."""

import pytest
import torch
from torch import nn

import wdecomp as wd
from wdecomp.errors import ShapeError

DT = torch.float64


def _conv_basis():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(1024, 10)).to(DT).eval()
    x = torch.randn(24, 1, 8, 8, dtype=DT, generator=torch.Generator().manual_seed(1))
    return m, x, wd.interaction_basis(m, [(x, None)], ["1", "3"])


@pytest.mark.refuses("components of a conv net's channel basis (feature axis not last)",
                     "components fold the basis along the last axis; graph or edge-ablate the basis directly, "
                     "or build it with feature_dim=-1")
def test_decompose_refuses_a_channel_basis_with_a_clear_error():
    m, x, basis = _conv_basis()
    assert basis["1"].dim == 16
    with pytest.raises(ShapeError, match="feature_dim=-1"):
        wd.decompose(m, basis, [(x, None)])


def test_a_last_axis_basis_of_the_same_conv_net_rewrites_exactly():
    m, x, _ = _conv_basis()
    basis = wd.interaction_basis(m, [(x, None)], ["3"])  # the flattened layer: features are last
    comps = wd.decompose(m, basis, [(x, None)])
    assert comps.verify(m, [(x, None)]) < 1e-10
