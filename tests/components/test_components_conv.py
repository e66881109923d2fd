"""Components of a conv net's channel basis: folded into the convolutions (and a Linear after
Flatten), exact rewrites, pieces checked against a hand-written einsum, and the refusals left."""

import pytest
import torch
from torch import nn

import wdecomp as wd
from wdecomp.activations import run_with_hooks
from wdecomp.components import Components
from wdecomp.errors import ShapeError

DT = torch.float64
X = torch.randn(24, 1, 8, 8, dtype=DT, generator=torch.Generator().manual_seed(1))
POINTS = ["0", "1", "3", "5"]  # conv output, ReLU (read by a conv), ReLU (read by Flatten->Linear), logits


def conv_net(pad: int = 1) -> nn.Module:
    """Conv2d -> ReLU -> Conv2d -> ReLU -> Flatten -> Linear, float64."""
    torch.manual_seed(0)
    side = 8 if pad else 6
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=pad), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * side * side, 10)).to(DT).eval()


def test_issue_example_decomposes_and_rewrites_exactly():
    """The issue's conv net: its 16-dim channel basis now decomposes, and the rewrite is exact."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(1024, 10)).to(DT).eval()
    basis = wd.interaction_basis(m, [(X, None)], ["1", "3"])
    comps = wd.decompose(m, basis, [(X, None)])
    assert basis["1"].dim == 16 and comps.axes == {"1": 1}
    assert comps.adjacency["1"] == {"producer": None, "consumers": ["3"]}  # the Linear after Flatten
    assert comps.verify(m, [(X, None)]) < 1e-10


def test_paper_default_lib_of_a_conv_net_rewrites_exactly_in_channel_coordinates():
    m = conv_net()
    basis = wd.interaction_basis(m, [(X, None)], POINTS)  # centred, constant node (rib's default)
    comps = wd.decompose(m, basis, [(X, None)])
    assert comps.axes == {"0": 1, "1": 1, "3": 1}
    assert comps.adjacency["0"]["producer"] == "0" and comps.adjacency["1"]["consumers"] == ["2"]
    assert comps.verify(m, [(X, None)]) < 1e-10
    rewritten = comps.rewrite(m)
    assert isinstance(rewritten[0].inner, nn.Conv2d) and rewritten[0].inner.out_channels == basis["0"].size
    _, acts = run_with_hooks(rewritten, X, read=["1.coords", "0.coords"])
    assert acts["1.coords"].shape == (24, basis["1"].size, 8, 8)  # channels of the coordinates
    # the coordinates are C (f - mu) at every pixel
    _, orig = run_with_hooks(m, X, read=["1"])
    lb = basis["1"]
    by_hand = torch.einsum("kc,bchw->bkhw", lb.transform, orig["1"] - lb.center[:, None, None])
    assert torch.allclose(acts["1.coords"][:, 1:], by_hand[:, 1:], atol=1e-12)


def test_component_weights_are_the_basis_folded_into_the_adjacent_convolutions():
    m = conv_net()
    basis = wd.interaction_basis(m, [(X, None)], POINTS)
    comps = wd.decompose(m, basis, [(X, None)])
    W0, b0, W2, W5 = m[0].weight, m[0].bias, m[2].weight, m[5].weight
    i = 2
    lb0, lb1, lb3 = basis["0"], basis["1"], basis["3"]
    c0 = comps.by_layer("0")[i]  # producer: output channel i of C W, bias C (b - mu)
    assert torch.allclose(c0.weights["0.weight"], torch.einsum("c,cihw->ihw", lb0.transform[i], W0), atol=1e-14)
    assert torch.allclose(c0.weights["0.bias"], lb0.transform[i] @ (b0 - lb0.center), atol=1e-14)
    c1 = comps.by_layer("1")[i]  # consuming conv: input channels rotated, W'[o, :, kh, kw] C^+
    assert torch.allclose(c1.weights["2.weight"], torch.einsum("ochw,c->ohw", W2, lb1.inverse[:, i]), atol=1e-14)
    c3 = comps.by_layer("3")[i]  # Linear after Flatten: its (8 channels x 64 pixels) input rotated per pixel
    assert torch.allclose(c3.weights["5.weight"],
                          torch.einsum("ocp,c->op", W5.reshape(10, 8, 64), lb3.inverse[:, i]), atol=1e-14)


@pytest.mark.parametrize("point", ["0", "1", "3"])
def test_removing_a_channel_component_in_weight_space_equals_removing_it_at_every_pixel(point):
    """Producer conv ('0'), consuming conv without padding ('1'), Flatten -> Linear ('3'): the projected
    model equals the original with ``f - C^+_i C_i (f - mu)`` written at every pixel (einsum by hand)."""
    m = conv_net(pad=0)
    basis = wd.interaction_basis(m, [(X, None)], POINTS, constant=False)  # centred, no constant node
    comps = wd.decompose(m, basis, [(X, None)])
    params = dict(m.named_parameters())
    assert all(torch.allclose(t, params[n], rtol=0, atol=1e-12) for n, t in comps.project(m).items())
    i = 1
    keep = [j for j, c in enumerate(comps) if (c.layer, c.index) != (point, i)]
    projected = comps.projected_model(m, keep)
    lb = basis[point]
    _, acts = run_with_hooks(m, X, read=[point])
    f = acts[point]
    coord = torch.einsum("c,bchw->bhw", lb.transform[i], f - lb.center[:, None, None])
    ablated_f = f - torch.einsum("c,bhw->bchw", lb.inverse[:, i], coord)
    ref, _ = run_with_hooks(m, X, write={point: ablated_f})
    assert float(coord.detach().abs().max()) > 1e-3  # the component is there on these data
    assert float((projected(X) - ref).detach().abs().max()) < 1e-10 * float(ref.detach().abs().max())


@pytest.mark.refuses("weight-space pieces of a centred channel basis read by a zero-padded convolution",
                     "the centre's contribution differs at the border and is no bias; use center=False, another "
                     "padding_mode, or ablate the activations")
def test_zero_padded_consumer_of_a_centred_basis_refuses_pieces_but_rewrites():
    m = conv_net(pad=1)
    basis = wd.interaction_basis(m, [(X, None)], POINTS)
    comps = wd.decompose(m, basis, [(X, None)])
    assert comps.verify(m, [(X, None)]) < 1e-10
    with pytest.raises(ShapeError, match="pads with zeros"):
        comps.project(m)


@pytest.mark.refuses("components of a basis over an axis that is neither channels nor last",
                     "components fold into Linear/Embedding (last axis) and convolutions (channels) only; "
                     "build with feature_dim=1 or -1, or graph/ablate the basis directly")
def test_a_basis_over_image_height_is_refused_with_the_axis_named():
    m = conv_net()
    basis = wd.interaction_basis(m, [(X, None)], ["1", "5"], feature_dim={"1": 2, "5": None}, constant=False)
    assert basis["1"].dim == 8
    with pytest.raises(ShapeError, match="axis 2"):
        wd.decompose(m, basis, [(X, None)])


def test_a_last_axis_basis_of_the_same_conv_net_rewrites_exactly():
    m = conv_net()
    basis = wd.interaction_basis(m, [(X, None)], ["5"])  # the logits: features are last
    comps = wd.decompose(m, basis, [(X, None)])
    assert comps.axes == {} and comps.verify(m, [(X, None)]) < 1e-10


def test_channel_components_save_and_load(tmp_path):
    m = conv_net(pad=0)
    basis = wd.interaction_basis(m, [(X, None)], POINTS, constant=False)
    comps = wd.decompose(m, basis, [(X, None)])
    again = Components.load(comps.save(tmp_path / "conv.safetensors"), m)
    assert again.adjacency == comps.adjacency
    assert all(again.axes[p] == 1 for p in ("0", "1", "3"))  # the channels, from the file's basis
    assert again.verify(m, [(X, None)]) < 1e-10
    for a, b in zip(comps.project(m, range(0, len(comps), 2)).values(),
                    again.project(m, range(0, len(comps), 2)).values()):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
