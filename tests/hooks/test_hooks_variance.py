"""Layer-norm variance points (``"ln:variance"``): ``[var; f]`` as rib's LayerNormIn / LayerNormOut split.

Reading or writing back ``[var; f]`` unchanged leaves the network's outputs as they were; a written
variance acts as rib's ``LayerNormOut`` (``(f - mean f) / sqrt(var + eps)``, then the LayerNorm's
affine map); the residual written at the anchor reaches the skip connection; a variance point on
anything but an ``nn.LayerNorm`` is refused.
"""

from __future__ import annotations

import math

import pytest
import torch
from _rib_reference_ln import POINTS, LnResMLP, ln_transformer
from torch import nn

from wdecomp import hooks
from wdecomp.errors import SelectionError
from wdecomp.hooks import HookPoint

DT = torch.float64
TF_POINTS = ["blocks.0.ln1:variance@blocks.0:input", "blocks.0.ln2:variance@blocks.0.resid_mid",
             "blocks.1.ln1:variance@blocks.1:input", "blocks.1.ln2:variance@blocks.1.resid_mid", "ln_f:variance"]


def _inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randn(6, 4, dtype=DT, generator=g) * 2 + 0.5


def _transformer() -> tuple[nn.Module, torch.Tensor]:
    return ln_transformer(), torch.randint(0, 7, (5, 4), generator=torch.Generator().manual_seed(4))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs().max() / b.abs().max()).detach())


def test_parse_and_canonical_names():
    assert str(HookPoint.parse("ln_f:variance")) == "ln_f:variance"
    assert str(HookPoint.parse("ln_f:variance@ln_f:input")) == "ln_f:variance"  # the default anchor
    hp = HookPoint.parse("blocks.0.ln1:variance@blocks.0:input")
    assert (hp.module, hp.side, hp.anchor) == ("blocks.0.ln1", "variance", "blocks.0:input")
    assert str(hp) == "blocks.0.ln1:variance@blocks.0:input"
    assert str(HookPoint.parse("a.ln:variance@a.mid")) == "a.ln:variance@a.mid"


@pytest.mark.parametrize("which", ["mlp-affine", "mlp-plain", "transformer"])
def test_split_unchanged_gives_the_original_outputs(which):
    if which == "transformer":
        model, x = _transformer()
        points = TF_POINTS
    else:
        model, x = LnResMLP(affine=which == "mlp-affine"), _inputs()
        points = POINTS[:3]
    with torch.no_grad():
        y = model(x)
        out, acts = hooks.run(model, x, read=points)
        assert torch.equal(out, y)  # reading leaves the LayerNorms' own computation in place
        # written back (a copy): every LayerNorm normalises with the given variance
        out2, _ = hooks.run(model, x, write={p: (lambda a: a.clone()) for p in points})
    assert _rel(out2, y) < 1e-12
    for p in points:
        a = acts[p]
        f = a[..., 1:]
        assert a.shape[-1] == f.shape[-1] + 1
        assert torch.allclose(a[..., 0], f.var(-1, unbiased=False), rtol=1e-14, atol=0)


def test_written_variance_acts_as_ribs_layer_norm_out():
    model = LnResMLP(affine=True)
    x = _inputs()
    ln = model.ln_f
    with torch.no_grad():
        _, acts = hooks.run(model, x, read=["ln_f:variance"])
        a = acts["ln_f:variance"].clone()
        a[:, 0] *= 1.7
        a[:, 1:] += 0.1
        out, _ = hooks.run(model, x, write={"ln_f:variance": a})
        f, v = a[:, 1:], a[:, :1]
        ref = model.unembed((f - f.mean(-1, keepdim=True)) / torch.sqrt(v + ln.eps) * ln.weight + ln.bias)
        assert _rel(out, ref) < 1e-14
        a[:, 0] = -1.0  # a negative variance is set to 0 first (rib's LayerNormOut: relu(var))
        out, _ = hooks.run(model, x, write={"ln_f:variance": a})
        ref = model.unembed((f - f.mean(-1, keepdim=True)) / math.sqrt(ln.eps) * ln.weight + ln.bias)
        assert _rel(out, ref) < 1e-14


def test_residual_written_at_the_anchor_reaches_the_skip_connection():
    model = LnResMLP(affine=True)
    x = _inputs()
    b0 = model.blocks[0]
    with torch.no_grad():
        _, acts = hooks.run(model, x, read=[POINTS[0]])
        a = acts[POINTS[0]].clone()
        a[:, 0] += 0.5
        a[:, 1:] *= 1.3
        _, got = hooks.run(model, x, read=["blocks.1:input"], write={POINTS[0]: a})
        f, v = a[:, 1:], a[:, :1]
        u = (f - f.mean(-1, keepdim=True)) / torch.sqrt(v + b0.ln.eps) * b0.ln.weight + b0.ln.bias
        ref = f + b0.out(torch.tanh(b0.hidden(u)))
    assert _rel(got["blocks.1:input"], ref) < 1e-14


def test_jacobian_through_the_variance_coordinate():
    """d out / d var at a variance point, by torch.func through the hooks, against the formula."""
    model = LnResMLP(affine=True)
    x = _inputs()[:1]
    ln = model.ln_f
    with torch.no_grad():
        a = hooks.run(model, x, read=["ln_f:variance"])[1]["ln_f:variance"]

    def out(a_: torch.Tensor) -> torch.Tensor:
        return hooks.run(model, x, write={"ln_f:variance": a_})[0]

    J = torch.func.jacrev(out)(a)[0, :, 0, 0]  # d out / d var
    f, v = a[0, 1:], a[0, 0]
    ref = model.unembed.weight @ (ln.weight * (f - f.mean()) * (-0.5) * (v + ln.eps) ** -1.5)
    assert _rel(J, ref) < 1e-12


@pytest.mark.refuses("a variance point ('mod:variance') on a module that is not an nn.LayerNorm",
                     "the point splits a LayerNorm into its variance and its normalisation; name an nn.LayerNorm "
                     "that normalises the last axis")
def test_variance_point_on_a_non_layernorm_is_refused():
    model = LnResMLP()
    with pytest.raises(SelectionError, match="needs an nn.LayerNorm"):
        hooks.run(model, _inputs(), read=["blocks.0.hidden:variance"])


@pytest.mark.refuses("a variance point whose anchor ('ln:variance@point') is not the LayerNorm's input",
                     "the variance read there would not be the LayerNorm's; name the point that produces its input")
def test_variance_point_with_a_wrong_anchor_is_refused():
    model = LnResMLP()
    with pytest.raises(SelectionError, match="ran on an input other than"):
        hooks.run(model, _inputs(), read=["blocks.1.ln:variance@blocks.0:input"])


@pytest.mark.refuses("'@point' after a side other than variance, or a variance point as the anchor",
                     "only a variance point names an anchor, and the anchor is a module's input or output")
def test_bad_anchor_syntax_is_refused():
    for spec in ("blocks.0.ln:input@blocks.0", "ln_f:variance@ln_f:variance"):
        with pytest.raises(SelectionError):
            HookPoint.parse(spec)
