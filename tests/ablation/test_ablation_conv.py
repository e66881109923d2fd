"""Ablating a conv net's channel basis: the feature axis is read (channels), every pixel is a position."""

import pytest
import torch
from torch import nn

import wdecomp as wd
from wdecomp.ablation import ActivationComponents
from wdecomp.activations import run_with_hooks
from wdecomp.bases.base import neuron_basis
from wdecomp.errors import ShapeError

DT = torch.float64
X = torch.randn(24, 1, 8, 8, dtype=DT, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 10, (24,), generator=torch.Generator().manual_seed(2))


def _setup():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(1024, 10)).to(DT).eval()
    basis = wd.interaction_basis(m, [(X, Y)], ["1", "3"])
    return m, basis


def _loss_with(m, point, f):
    out, _ = run_with_hooks(m, X, write={point: f})
    return float(nn.functional.cross_entropy(out, Y).detach())


@pytest.mark.parametrize("method", ["zero", "mean"])
def test_ablating_a_channel_direction_projects_every_pixel(method):
    m, basis = _setup()
    lb = basis["1"]
    _, acts = run_with_hooks(m, X, read=["1"])
    f = acts["1"].detach()  # (24, 16, 8, 8)
    stand = torch.zeros(16, dtype=DT) if method == "zero" else f.mean((0, 2, 3))
    for k in (1, 3):
        res = wd.ablate(m, basis, [k], data=[(X, Y)], method=method)
        # by hand: f' = f - C^+_k (C_k (f - mu) - C_k (stand - mu)) at every pixel
        c = torch.einsum("c,bchw->bhw", lb.transform[k], f - lb.center[:, None, None])
        r = lb.transform[k] @ (stand - lb.center)
        edited = f - torch.einsum("c,bhw->bchw", lb.inverse[:, k], c - r)
        assert abs(res.levels[0].loss - _loss_with(m, "1", edited)) < 1e-12
    # the whole-hook mean baseline at '1' alone (a bare LayerBasis: the default axis, channels of a 4-D
    # activation): every pixel replaced by the per-channel mean over examples and pixels
    alone = wd.ablate(m, lb, [3], data=[(X, Y)], method=method)
    assert alone.hooks == ("1",) and abs(alone.levels[0].loss - res.levels[0].loss) < 1e-12
    mean_hook = f.mean((0, 2, 3))[None, :, None, None].expand_as(f)
    assert abs(alone.mean_baseline.loss - _loss_with(m, "1", mean_hook)) < 1e-12


def test_sweep_over_a_channel_basis_ends_at_the_whole_hook_baseline():
    m, basis = _setup()
    n1 = basis["1"].size
    res = wd.ablation_sweep(m, basis["1"], [(X, Y)], k=[0, n1])
    assert abs(res.levels[0].loss - res.original.loss) < 1e-12
    # zero-ablating every direction of a (centred, constant-node) channel basis = the activation set to
    # its span's zero point; with the basis as a plain LayerBasis the default axis is the channels too
    lb = basis["1"]
    _, acts = run_with_hooks(m, X, read=["1"])
    f = acts["1"]
    c = torch.einsum("kc,bchw->bkhw", lb.transform, f - lb.center[:, None, None])
    r = lb.transform @ (-lb.center)
    edited = f - torch.einsum("ck,bkhw->bchw", lb.inverse, c - r[None, :, None, None])
    assert abs(res.levels[1].loss - _loss_with(m, "1", edited)) < 1e-12


def test_declared_axis_travels_in_lists_and_activation_components():
    m, _ = _setup()
    basis = wd.interaction_basis(m, [(X, Y)], ["1", "3"], feature_dim={"1": -1, "3": None})  # over image width
    assert basis["1"].dim == 8
    a = wd.ablate(m, [basis], [1], data=[(X, Y)])
    b = wd.ablate(m, ActivationComponents(basis["1"], feature_axis=3), [1], data=[(X, Y)])
    _, acts = run_with_hooks(m, X, read=["1"])
    f, lb = acts["1"], basis["1"]
    c = (f - lb.center) @ lb.transform[1]  # (24, 16, 8): the width axis is last
    edited = f - (c - lb.transform[1] @ (-lb.center))[..., None] * lb.inverse[:, 1]
    assert abs(a.levels[0].loss - _loss_with(m, "1", edited)) < 1e-12
    assert abs(b.levels[0].loss - a.levels[0].loss) < 1e-12


@pytest.mark.refuses("ablating a basis whose width is not the activation's on the feature axis",
                     "ShapeError naming the axis, the shape and how to declare the axis")
def test_width_mismatch_names_the_axis():
    m, _ = _setup()
    wrong = neuron_basis(m, {"1": 8})["1"]  # width 8 read on the channel axis (16)
    with pytest.raises(ShapeError, match="feature axis 1"):
        wd.ablate(m, wrong, [0], data=[(X, Y)])
