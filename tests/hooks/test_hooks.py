"""wdecomp.hooks: edits replace what they say, nest, always come off, and act under torch.func."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, jacrev, vmap

from wdecomp.errors import SelectionError, ShapeError
from wdecomp.hooks import HookPoint, edit, forward_order, observe, record, run

DT = torch.float64


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(3, 4).to(DT)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(4, 4, bias=False).to(DT)
        self.out = nn.Linear(4, 2).to(DT)
        self.register_buffer("scale", torch.tensor(1.5, dtype=DT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        return self.out(self.fc2(h) * self.scale)


def manual(net: Net, x: torch.Tensor, h_fn=lambda h: h, w2=None, in_fn=lambda z: z) -> torch.Tensor:
    """The same forward written by hand, with optional edits of ``act`` and ``fc2.weight``."""
    h = h_fn(torch.tanh(x @ net.fc1.weight.T + net.fc1.bias))
    W2 = net.fc2.weight if w2 is None else w2
    z = in_fn(h @ W2.T * net.scale)
    return z @ net.out.weight.T + net.out.bias


def _no_hooks(net: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


@pytest.fixture
def net_x():
    torch.manual_seed(1)
    return Net(), torch.randn(5, 3, dtype=DT)


def test_edit_output_input_and_replacement(net_x):
    net, x = net_x
    with edit(net, {"act": lambda f: 2 * f + 1, "out:input": lambda z: z - 0.5}):
        y = net(x)
    assert torch.allclose(y, manual(net, x, h_fn=lambda h: 2 * h + 1, in_fn=lambda z: z - 0.5), atol=1e-14)
    fixed = torch.full((5, 4), 0.25, dtype=DT)
    with edit(net, {"act": fixed}):
        y = net(x)
    assert torch.allclose(y, manual(net, x, h_fn=lambda h: fixed), atol=1e-14)
    assert torch.allclose(net(x), manual(net, x), atol=1e-14)
    assert _no_hooks(net)


def test_edits_nest_in_order_and_repeat_points(net_x):
    net, x = net_x
    with edit(net, {"act": lambda f: f + 1}), edit(net, {"act": lambda f: 3 * f}):
        y = net(x)
    assert torch.allclose(y, manual(net, x, h_fn=lambda h: 3 * (h + 1)), atol=1e-14)
    with edit(net, [("act", lambda f: f + 1), ("act", lambda f: 3 * f)]):
        y2 = net(x)
    assert torch.equal(y, y2)
    assert _no_hooks(net)


def test_weight_edit_is_differentiable_nested_and_restored(net_x):
    net, x = net_x
    W = net.fc2.weight
    with edit(net, weights={"fc2.weight": lambda w: 2 * w}):
        with edit(net, weights={"fc2.weight": lambda w: w + 1, "scale": torch.tensor(2.0, dtype=DT)}):
            y = net(x)
            assert not isinstance(net.fc2.weight, nn.Parameter)
        y_outer = net(x)
    scale = net.scale
    net.scale = torch.tensor(2.0, dtype=DT)
    expected = manual(net, x, w2=2 * W + 1)
    net.scale = scale
    assert torch.allclose(y, expected, atol=1e-14)
    assert torch.allclose(y_outer, manual(net, x, w2=2 * W), atol=1e-14)
    assert net.fc2.weight is W and isinstance(net.fc2.weight, nn.Parameter)
    assert float(net.scale) == 1.5
    # gradients flow through the transform to the original parameter: d/dW sum(f(2W)) = 2 * d/dV sum(f(V))
    with edit(net, weights={"fc2.weight": lambda w: 2 * w}):
        net(x).sum().backward()
    g = W.grad.clone()
    V = (2 * W).detach().requires_grad_(True)
    manual(net, x, w2=V).sum().backward()
    assert torch.allclose(g, 2 * V.grad, atol=1e-13)


def test_tied_weights_edited_in_every_slot():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)).to(DT)
    net[1].weight = net[0].weight
    x = torch.randn(2, 3, dtype=DT)
    W = net[0].weight
    with edit(net, weights={"0.weight": torch.zeros_like(W)}):
        assert torch.equal(net(x), torch.zeros(2, 3, dtype=DT))
    with edit(net, weights={"0.weight": torch.zeros_like(W)}, tie_weights=False):
        assert net[1].weight is W and torch.equal(net[0].weight, torch.zeros_like(W))
    assert net[0].weight is W and net[1].weight is W


def test_always_removed_on_exception(net_x):
    net, x = net_x
    before = net(x)
    W = net.fc2.weight
    with pytest.raises(RuntimeError, match="boom"), edit(net, {"act": torch.zeros_like}, weights={"fc2.weight": 0 * W}):
        raise RuntimeError("boom")
    # a bad point after a good one: the good one is removed too
    with pytest.raises(SelectionError), edit(net, [("act", torch.zeros_like), ("nosuch", torch.zeros_like)]):
        pass
    assert _no_hooks(net) and net.fc2.weight is W
    assert torch.equal(net(x), before)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["act", "fc1", "out:input", "fc2.weight", "out.bias"]),
                          st.floats(-2, 2, allow_nan=False)), min_size=1, max_size=5),
       st.integers(0, 5))
def test_any_nest_of_edits_restores_the_model(edits, fail_at):
    """Property: whatever edits are nested and wherever an exception is raised, the model comes
    back with the same hooks (none), the same parameter objects and the same outputs."""
    torch.manual_seed(2)
    net, x = Net(), torch.randn(3, 3, dtype=DT)
    params = dict(net.named_parameters())
    before = net(x)

    def nest(i: int) -> None:
        if i == fail_at or i == len(edits):
            raise KeyError("stop")
        name, c = edits[i]
        if "weight" in name or "bias" in name:
            ctx = edit(net, weights={name: lambda w, c=c: w * c})
        else:
            ctx = edit(net, {name: lambda f, c=c: f * c})
        with ctx:
            net(x)
            nest(i + 1)

    with pytest.raises(KeyError):
        nest(0)
    assert _no_hooks(net)
    assert all(p is params[n] for n, p in net.named_parameters())
    assert torch.equal(net(x), before)


def test_edit_acts_under_functional_call_and_vmap(net_x):
    net, x = net_x
    state = {n: p.detach() * 1.1 for n, p in net.named_parameters()}
    with edit(net, {"act": lambda f: f * f}):
        y = functional_call(net, state, (x,))
    scaled = Net()
    scaled.load_state_dict({**state, "scale": net.scale})
    assert torch.allclose(y, manual(scaled, x, h_fn=lambda h: h * h), atol=1e-14)
    # explicit weights given to functional_call win inside a weight edit, and the edit comes back after
    with edit(net, weights={"fc2.weight": torch.zeros(4, 4, dtype=DT)}):
        assert torch.allclose(functional_call(net, state, (x,)), manual(scaled, x), atol=1e-14)
        assert torch.equal(net(x), manual(net, x, w2=torch.zeros(4, 4, dtype=DT)))

    # per-example Jacobian of the output w.r.t. the activation written at "act", under vmap(jacrev)
    def g(a, x1):
        with edit(net, {"act": a.unsqueeze(0)}):
            return net(x1.unsqueeze(0))[0]

    h = torch.tanh(net.fc1(x))
    J = vmap(jacrev(g))(h.detach(), x)
    expected = (net.out.weight * net.scale) @ net.fc2.weight  # d out / d h, the same for every example
    assert J.shape == (5, 2, 4)
    assert torch.allclose(J, expected.detach().expand(5, 2, 4), atol=1e-13)

    # a weight edit whose new weight is batched by vmap: one model per scale, in one call
    def scaled_out(s):
        with edit(net, weights={"fc2.weight": net.fc2.weight.detach() * s}):
            return net(x)

    scales = torch.tensor([0.0, 1.0, 2.5], dtype=DT)
    ys = vmap(scaled_out)(scales)
    for s, y in zip(scales, ys):
        assert torch.allclose(y, manual(net, x, w2=net.fc2.weight.detach() * s), atol=1e-13)


def test_record_observe_run_and_order(net_x):
    net, x = net_x
    h = torch.tanh(net.fc1(x))
    with record(net, ["act", "out:input"], detach=True) as acts:
        net(x)
    assert torch.allclose(acts["act"], h, atol=1e-15)
    assert torch.allclose(acts["out:input"], net.fc2(h) * net.scale, atol=1e-15)
    assert not acts["act"].requires_grad
    seen = []
    with observe(net, {"fc1": lambda f: seen.append(f.shape)}):
        net(x)
        net(x[:2])
    assert seen == [torch.Size([5, 4]), torch.Size([2, 4])]
    out, got = run(net, x, read=["act", "out:input"], write={"act": torch.zeros(5, 4, dtype=DT)})
    assert torch.equal(got["act"], torch.zeros(5, 4, dtype=DT))
    assert torch.allclose(out, net.out.bias.expand(5, 2), atol=1e-15)
    assert forward_order(net, ["out:input", "fc2", "fc1", "act"], x) == [2, 3, 1, 0]
    assert str(HookPoint.parse("fc1:input")) == "fc1:input" and HookPoint.parse("fc1").side == "output"


@pytest.mark.refuses("a hook point, module or weight that does not exist",
                     "names it and suggests the nearest existing names")
def test_refuses_unknown_names(net_x):
    net, x = net_x
    with pytest.raises(SelectionError, match="did you mean"), edit(net, {"fc3": torch.zeros_like}):
        pass
    with pytest.raises(SelectionError, match="fc2.weight"), edit(net, weights={"fc2.wieght": torch.zeros(4, 4)}):
        pass
    with pytest.raises(SelectionError, match="side"):
        HookPoint.parse("fc1:inputs")
    with pytest.raises(SelectionError, match="not reached"):
        net.unused = nn.Identity()
        run(net, x, read=["unused"])
    assert _no_hooks(net)


@pytest.mark.refuses("a replacement activation or weight of the wrong shape",
                     "a replacement must keep the original's shape (ShapeError names the point and both shapes)")
def test_refuses_wrong_shapes(net_x):
    net, x = net_x
    with pytest.raises(ShapeError, match="expected shape"), edit(net, {"act": lambda f: f[:, :2]}):
        net(x)
    with pytest.raises(ShapeError, match=r"expected \(4, 4\)"), edit(net, weights={"fc2.weight": torch.zeros(3, 4)}):
        pass
    assert _no_hooks(net) and isinstance(net.fc2.weight, nn.Parameter)
