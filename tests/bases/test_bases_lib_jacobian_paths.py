"""The cheaper Jacobian paths of LIB's ``M'`` (issue 16) against the full per-position Jacobian."""

from __future__ import annotations

import pytest
import torch

from wdecomp import hooks
from wdecomp.bases.interaction import _pair
from wdecomp.bases.section import batched_jacobians, position_jacobians, position_pattern, summed_jacobians
from wdecomp.models.transformer import Transformer, TransformerConfig


def _setup(source: str, target: str):
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(d_vocab=11, d_model=8, n_layers=1, n_heads=2, context=6)).double().eval()
    with torch.no_grad():  # nonzero biases: a nonzero derivative along the constant
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.3)
    x = torch.randint(0, 11, (3, 6), generator=torch.Generator().manual_seed(1))
    pair = _pair(model, x[:1], source, target, None, True, {source: 2, target: 2})
    a = pair.rows(hooks.run(model, x, read=[source, target])[1])
    return pair, a, x


def _gram(J: torch.Tensor) -> torch.Tensor:
    rows = J.reshape(-1, J.shape[-1])
    return rows.T @ rows


@pytest.mark.parametrize("mode", ["auto", "forward", "reverse"])
def test_grouped_positions_give_the_full_second_moment(mode):
    # blocks.0.resid_mid -> blocks.0 (LayerNorm, MLP, residual) is position-wise: one group
    pair, a, x = _setup("blocks.0.resid_mid", "blocks.0")
    alphas = torch.tensor([0.3, 1.0], dtype=torch.float64)
    full = list(batched_jacobians(pair.fn, a, x, alphas, mode))
    fast = list(position_jacobians(pair.fn, a, x, alphas, mode))
    Z = position_pattern(pair.fn, a, x)
    assert torch.equal(Z, torch.eye(6, dtype=torch.bool))
    for J, G in zip(full, fast):
        assert J.shape == (3, 6, 8, 6, 9)
        assert G.shape in ((3, 6, 8, 1, 9), (3, 1, 8, 6, 9))  # 9 tangents (8 cotangents) instead of 54 (48)
        ref = _gram(J)
        assert float((_gram(G) - ref).abs().max() / ref.abs().max()) < 1e-13
    ref = _gram(0.25 * full[0] + 0.75 * full[1])  # an integrated Jacobian: the alphas' blocks line up
    assert float((_gram(0.25 * fast[0] + 0.75 * fast[1]) - ref).abs().max() / ref.abs().max()) < 1e-13


def test_causal_attention_is_not_grouped():
    pair, a, x = _setup("embed", "blocks.0.resid_mid")
    Z = position_pattern(pair.fn, a, x)
    assert torch.equal(Z, torch.ones(6, 6).tril().bool())  # J_tp = 0 exactly for p > t
    J = next(batched_jacobians(pair.fn, a, x, torch.ones(1)))
    G = next(position_jacobians(pair.fn, a, x, torch.ones(1)))
    assert G.shape == J.shape and torch.allclose(G, J, rtol=0, atol=0)


def test_summed_jacobian_is_the_sum_over_source_positions():
    pair, a, x = _setup("embed", "blocks.0")
    J = next(batched_jacobians(pair.fn, a, x, torch.ones(1)))
    S = next(summed_jacobians(pair.fn, a, x, torch.ones(1)))
    assert S.shape == (3, 6, 8, 1, 9)
    assert float((S[:, :, :, 0] - J.sum(3)).abs().max() / J.abs().max()) < 1e-13


@pytest.mark.parametrize("mode", ["forward", "reverse"])
@pytest.mark.parametrize("points", [("blocks.0.resid_mid", "blocks.0"), ("embed", "blocks.0")])
def test_holding_the_constant_changes_no_column(mode, points):
    # the feature columns with s held (no tangents/cotangents through the biases), s's column apart;
    # grouped (position-wise) and full (causal attention) paths
    pair, a, x = _setup(*points)
    alphas = torch.tensor([0.5, 1.0], dtype=torch.float64)
    for fast in (summed_jacobians, position_jacobians):
        for J, H in zip(fast(pair.fn, a, x, alphas, mode), fast(pair.fn, a, x, alphas, mode, pair.held)):
            assert J.shape == H.shape and float(J[..., -1].abs().max()) > 0.1
            assert float((J - H).abs().max() / J.abs().max()) < 1e-14


def test_the_basis_is_the_same_by_every_path():
    # grouped/full x forward/reverse x held constant, through interaction_basis with target bases
    from wdecomp.bases import interaction_basis

    torch.manual_seed(0)
    model = Transformer(TransformerConfig(d_vocab=11, d_model=8, n_layers=1, n_heads=2, context=6)).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.3)
    x = torch.randint(0, 11, (5, 6), generator=torch.Generator().manual_seed(1))
    layers = ["embed", "blocks.0.resid_mid", "blocks.0", "ln_f"]
    ev = {m: interaction_basis(model, [(x,)], layers, mode=m, progress=False) for m in ("auto", "forward", "reverse")}
    for m in ("forward", "reverse"):
        for key in layers:
            e, e0 = ev[m][key].eigenvalues.detach(), ev["auto"][key].eigenvalues.detach()
            assert e.shape == e0.shape and float((e - e0).abs().max() / e0.abs().max()) < 1e-12
