"""SAE metrics against direct float64 computations of each formula; the identity SAE; intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _zoo import TinyLM, identity_sae, token_batches

from wdecomp.errors import SelectionError, ShapeError
from wdecomp.sae.metrics import evaluate_sae
from wdecomp.sae.model import SparseAutoencoder
from wdecomp.scaling import ChinchillaLaw, fit

DT = torch.float64
LAW = ChinchillaLaw(E=0.5, A=40.0, B=60.0, alpha=0.34, beta=0.28, name="test-law")


def _setup(seed: int = 0):
    model = TinyLM(vocab=7, d=5, seed=seed).to(DT).eval()
    with torch.no_grad():  # targets the clean model predicts: ablating the hook must hurt
        data = [(x, model(x).argmax(-1)) for x, _ in token_batches(n=2, b=3, t=4, vocab=7, seed=seed)]
    sae = SparseAutoencoder(5, 9, activation="relu", dtype=DT, seed=seed, hook="resid")
    g = torch.Generator().manual_seed(seed + 10)
    with torch.no_grad():
        sae.b_enc.copy_(0.3 * torch.randn(9, generator=g, dtype=DT))
        sae.b_dec.copy_(0.2 * torch.randn(5, generator=g, dtype=DT))
    return model, data, sae


def _logits(model, tokens, h_fn):
    h = h_fn(model.embed(tokens))
    return model.unembed(h + torch.tanh(model.mix(h)))


def test_metrics_equal_direct_computations() -> None:
    model, data, sae = _setup()
    m = evaluate_sae(model, sae, data)
    with torch.no_grad():
        X = torch.cat([model.embed(x).reshape(-1, 5) for x, _ in data])
        Y = torch.cat([y.reshape(-1) for _, y in data])
        pre = (X - sae.b_dec) @ sae.W_enc.T + sae.b_enc
        f = pre.clamp(min=0)
        Xh = f @ sae.W_dec.T + sae.b_dec
        T = X.shape[0]

        def ce_kl(h_fn):
            z = torch.cat([_logits(model, x, h_fn).reshape(-1, 7) for x, _ in data])
            z0 = torch.cat([_logits(model, x, lambda h: h).reshape(-1, 7) for x, _ in data])
            logq, logp = z.log_softmax(-1), z0.log_softmax(-1)
            ce = -logq[torch.arange(T), Y].mean()
            kl = (logp.exp() * (logp - logq)).sum(-1).mean()
            return float(ce), float(kl)

        ce_clean, _ = ce_kl(lambda h: h)
        ce_zero, kl_zero = ce_kl(torch.zeros_like)
        ce_sae, kl_sae = ce_kl(sae)
        res = (X - Xh).pow(2).sum(1)
        mean = X.mean(0)
        ev = 1 - res.mean() / (X.pow(2).sum(1).mean() - mean @ mean)
        cos = ((X * Xh).sum(1) / (X.norm(dim=1) * Xh.norm(dim=1))).mean()
        ratio = (Xh.norm(dim=1) / X.norm(dim=1)).mean()
        rrb = Xh.pow(2).sum(1).mean() / (X * Xh).sum(1).mean()
        l0 = (f > 0).sum(1).to(DT).mean()
        density = (f > 0).to(DT).mean(0)
    assert m.n_tokens == T == 24
    close = dict(rel=1e-12, abs=1e-14)
    assert m.ce_clean == pytest.approx(ce_clean, **close)
    assert m.ce_zero == pytest.approx(ce_zero, **close)
    assert m.ce_sae == pytest.approx(ce_sae, **close)
    assert m.ce_loss_score == pytest.approx((ce_zero - ce_sae) / (ce_zero - ce_clean), rel=1e-10)
    assert m.kl_zero == pytest.approx(kl_zero, **close) and m.kl_sae == pytest.approx(kl_sae, **close)
    assert m.kl_div_score == pytest.approx((kl_zero - kl_sae) / kl_zero, rel=1e-10)
    assert m.explained_variance == pytest.approx(float(ev), **close)
    assert m.mse == pytest.approx(float(res.mean()), **close)
    assert m.cossim == pytest.approx(float(cos), **close)
    assert m.l2_ratio == pytest.approx(float(ratio), **close)
    assert m.relative_reconstruction_bias == pytest.approx(float(rrb), **close)
    assert m.l0 == pytest.approx(float(l0), **close)
    assert np.allclose(m.feature_density, density.numpy(), rtol=0, atol=1e-15)
    assert m.dead_fraction == pytest.approx(float((density == 0).to(DT).mean()), abs=0)
    assert 0 < m.ce_loss_score < 1 and m.ce_sae > m.ce_clean  # a genuinely lossy SAE
    text = str(m)
    assert f"CE_clean {ce_clean:.4f}" in text and f"CE_zero {ce_zero:.4f}" in text


def test_identity_sae_scores_exactly_one() -> None:
    model, data, _ = _setup(1)
    m = evaluate_sae(model, identity_sae(5), data, law=LAW, tokens=1e9)
    assert m.ce_sae == m.ce_clean
    assert m.ce_loss_score == 1.0 and m.explained_variance == 1.0 and m.compute_equivalent == 1.0
    assert m.parameter_equivalent == 1.0 and m.kl_sae == 0.0 and m.kl_div_score == 1.0
    assert m.mse == 0.0 and m.cossim == pytest.approx(1.0, abs=1e-15) and m.l0 == 5.0


def _sweep(stride: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    pts = [(n, d, float(LAW.loss(n, d)) * math.exp(0.01 * rng.standard_normal()))
           for n in (1e5, 3e5, 1e6, 3e6, 1e7, 3e7) for d in (1e6, 1e7, 1e8, 1e9)]
    return np.array(pts[::stride])


def test_compute_equivalent_interval_contains_point_and_widens_when_thinned() -> None:
    model, data, sae = _setup(0)
    full = fit(_sweep(1), n_bootstrap=30, n_starts=8, seed=0)
    thin = fit(_sweep(3), n_bootstrap=30, n_starts=8, seed=0)
    a = evaluate_sae(model, sae, data, law=full)
    b = evaluate_sae(model, sae, data, law=thin)
    for m in (a, b):
        lo, hi = m.compute_equivalent_interval
        assert lo <= m.compute_equivalent <= hi and m.compute_equivalent < 1
    assert (b.compute_equivalent_interval[1] - b.compute_equivalent_interval[0]) > (
        a.compute_equivalent_interval[1] - a.compute_equivalent_interval[0])


@pytest.mark.refuses("evaluating an SAE at a hook point the model does not have",
                     "names the missing module and near names; pass an existing hook=")
def test_evaluate_missing_hook_refused() -> None:
    model, data, sae = _setup()
    with pytest.raises(SelectionError, match="no module named 'rsid'"):
        evaluate_sae(model, sae, data, hook="rsid")


@pytest.mark.refuses("evaluating an SAE whose input width differs from the hook's activations",
                     "the SAE belongs to another hook or model; train or load a matching one")
def test_evaluate_width_mismatch_refused() -> None:
    model, data, _ = _setup()
    with pytest.raises(ShapeError, match="width 5, this SAE was built for width 6"):
        evaluate_sae(model, SparseAutoencoder(6, 8, k=2, dtype=DT, hook="resid"), data)
