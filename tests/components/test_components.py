"""Components: exact rewriting, projection semantics, save/load, mismatched models."""

from __future__ import annotations

import pytest
import torch
from _zoo import TokenPairNet
from torch import nn

from wdecomp.activations import run_with_hooks
from wdecomp.bases import curvature_basis, interaction_basis
from wdecomp.components import Components, decompose, load_basis, save_basis
from wdecomp.errors import ModelMismatchError

DT = torch.float64


Net = TokenPairNet


def _setup(method="lib", **kw):
    model = Net().to(DT).eval()
    t = torch.stack(torch.meshgrid(torch.arange(7), torch.arange(7), indexing="ij"), -1).reshape(-1, 2)
    data = [(t[:30], torch.zeros(30)), (t[30:], torch.zeros(19))]
    basis = interaction_basis(model, data, ["embed", "hidden", "act", "out"], method=method, **kw)
    return model, data, basis


@pytest.mark.parametrize("method", ["lib", "pca", "neuron", "jacobian"])
def test_rewritten_model_matches(method):
    model, data, basis = _setup(method)
    comps = decompose(model, basis, data)
    assert comps.adjacency["act"] == {"producer": None, "consumers": ["out"]}
    assert comps.adjacency["embed"]["producer"] == "embed"
    assert comps.verify(model, data) < 1e-10
    rewritten = comps.rewrite(model)
    _, acts = run_with_hooks(rewritten, data[0][0], read=["hidden.coords"])
    assert acts["hidden.coords"].shape[-1] == basis["hidden"].size
    assert isinstance(rewritten.hidden.inner, nn.Linear) and rewritten.hidden.inner.out_features == basis["hidden"].size


def test_projection_all_returns_weights_and_removal_equals_ablation():
    model, data, basis = _setup("lib")
    comps = decompose(model, basis, data)
    params = dict(model.named_parameters())
    for n, t in comps.project(model).items():
        assert torch.allclose(t, params[n], rtol=0, atol=1e-12)
    # removing one component of 'act' in weight space == zeroing its coordinate at the hook
    drop = ("act", 1)
    keep = [i for i, c in enumerate(comps) if (c.layer, c.index) != drop]
    pm = comps.projected_model(model, keep)
    x = data[0][0]
    lb = basis["act"]
    _, acts = run_with_hooks(model, x, read=["act"])
    c = lb.to_coordinates(acts["act"])
    c[:, 1] = 0
    ablated, _ = run_with_hooks(model, x, write={"act": lb.from_coordinates(c)})
    assert torch.allclose(pm(x), ablated, atol=1e-10)
    comp = comps.by_layer("act")[1]
    assert comp.weights["out.weight"].shape == (5,) and comp.direction.shape == (6,)
    assert "importance" in str(comp) and "act" in str(comps)


def test_save_load_roundtrip_and_mismatch(tmp_path):
    model, data, basis = _setup("lib")
    comps = decompose(model, basis, data)
    path = comps.save(tmp_path / "comps.safetensors")
    assert path.exists() and not list(tmp_path.glob(".*tmp"))
    again = Components.load(path, model)
    assert len(again) == len(comps) and again.adjacency == comps.adjacency
    assert again.verify(model, data) < 1e-10
    other = Net(width=7).to(DT)
    with pytest.raises(ModelMismatchError):
        Components.load(path, other)
    with pytest.raises(ModelMismatchError):
        decompose(other, basis)
    # a basis fit on another model of the same shape is caught by the projection's own check
    cb = curvature_basis(model, data[:1], "out.weight", kind="behavioural")
    p2 = save_basis(cb, tmp_path / "curv.safetensors")
    cb2 = load_basis(p2, model)
    assert torch.equal(cb2.eigenvectors, cb.eigenvectors) and cb2.kind == "behavioural"
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception):  # noqa: B017 - safetensors raises its own error type
        load_basis(tmp_path / "bad.safetensors")


@pytest.mark.refuses("components of a basis at a layer-norm variance point ('ln:variance')",
                     "its activation [v; f] is produced by no weight; graph or ablate that basis instead")
def test_components_at_a_layer_norm_variance_point_are_refused_with_the_point_named():
    from wdecomp.errors import SelectionError
    from wdecomp.models.transformer import Transformer, TransformerConfig

    cfg = TransformerConfig(d_vocab=7, d_model=4, n_layers=1, n_heads=2, d_mlp=6, context=3, act="relu",
                            layer_norm=True, output="last", init_std=0.7)
    torch.manual_seed(0)
    m = Transformer(cfg).double().eval()
    x = torch.randint(0, 7, (30, 3), generator=torch.Generator().manual_seed(1))
    basis = interaction_basis(m, x, ["ln_f:variance", "unembed"])
    assert basis["ln_f:variance"].size == 5  # [v; f]: the variance and 4 features
    with pytest.raises(SelectionError, match="ln_f:variance.*variance points"):
        decompose(m, basis, [x])
