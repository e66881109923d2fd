"""LIB on a transformer laid out as the LIB paper's modular-addition runs: rib's attention folding.

rib folds the attention biases into its weights (``fold_attn_QK``, ``fold_attn_V``,
``fold_attn_O``): the values carry the constant ``s`` as an extra channel, so ``b_O`` at query
position ``t`` is scaled by ``1/H sum_h sum_k A_{htk} s_k``; the sequence is cut to its last
position after the attention (``last_pos_module_type: add_resid1``), which keeps that position's
``s``. The reference below writes that folded network out from those formulas (torch autograd
for its Jacobians, float64; nothing from wdecomp's section code) and feeds it to the numpy rib
reference (tests/_rib_reference.py).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _rib_reference import THR, m_dash, rib_layer, to_np
from torch.func import jacrev, vmap

from wdecomp.bases import interaction_basis
from wdecomp.fourier import fourier_concentration, lambda_groups, subspace_concentration
from wdecomp.models.modular import modular_addition
from wdecomp.models.transformer import Transformer, TransformerConfig

DT = torch.float64
LAYERS = ["blocks.0:input", "blocks.0.resid_mid", "ln_f", "unembed"]


def tiny(output: str = "last-mid") -> Transformer:
    cfg = TransformerConfig(d_vocab=7, d_model=4, n_layers=1, n_heads=2, d_mlp=6, context=3, act="relu",
                            layer_norm=False, output=output, init_std=0.7)
    torch.manual_seed(3)
    model = Transformer(cfg).to(DT).eval()
    with torch.no_grad():  # non-zero biases everywhere (they start at zero)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.5 * torch.randn_like(p))
    return model


def tokens(n: int = 40) -> torch.Tensor:
    return torch.randint(0, 7, (n, 3), generator=torch.Generator().manual_seed(4))


def _w(lin: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    return lin.weight.detach(), lin.bias.detach()


def folded_attention(model: Transformer, x: torch.Tensor) -> torch.Tensor:
    """rib's folded section ``[f_p; s_p]`` (3 positions) -> ``[resid_mid; s]`` at the last position."""
    att = model.blocks[0].attn
    H, dh = att.n_heads, att.d_head
    f, s = x[:, :-1], x[:, -1]
    (Wq, bq), (Wk, bk), (Wv, bv), (Wo, bo) = (_w(m) for m in (att.q, att.k, att.v, att.out))
    q = (f @ Wq.T + s[:, None] * bq).reshape(3, H, dh)
    k = (f @ Wk.T + s[:, None] * bk).reshape(3, H, dh)
    v = (f @ Wv.T + s[:, None] * bv).reshape(3, H, dh)
    scores = torch.einsum("thd,khd->htk", q, k) / math.sqrt(dh)
    scores = scores.masked_fill(torch.ones(3, 3, dtype=torch.bool).triu(1), float("-inf"))
    A = torch.softmax(scores, -1)  # (H, t, k)
    z = torch.einsum("htk,khd->thd", A, v).reshape(3, H * dh)
    z_const = torch.einsum("htk,k->th", A, s)  # the values' extra channel
    out = z @ Wo.T + z_const.sum(1, keepdim=True) * bo / H  # b_O split over the heads
    resid = f + out
    return torch.cat([resid[-1], s[-1:]])  # the last position, its constant channel kept


def folded_mlp(model: Transformer, x: torch.Tensor) -> torch.Tensor:
    """``[r; s] -> [r + W_out relu(W_in r + b_in s) + b_out s; s]``."""
    mlp = model.blocks[0].mlp
    (Wi, bi), (Wo, bo) = _w(mlp.hidden), _w(mlp.out)
    r, s = x[:-1], x[-1]
    return torch.cat([r + torch.relu(r @ Wi.T + bi * s) @ Wo.T + bo * s, x[-1:]])


def folded_unembed(model: Transformer, x: torch.Tensor) -> torch.Tensor:
    W, b = _w(model.unembed)
    return x[:-1] @ W.T + b * x[-1]


def reference(model: Transformer, t: torch.Tensor) -> dict:
    """rib's three LIB layers (centred, ``jacobian`` formula, relative threshold) from the output back."""
    ones = lambda f: torch.cat([f, torch.ones_like(f[..., :1])], -1)  # noqa: E731
    with torch.no_grad():
        resid_pre = model.embed(t) + model.pos_embed(t)  # (N, 3, 4)
        x0 = ones(resid_pre)
        x1 = vmap(lambda x: folded_attention(model, x))(x0)  # (N, 5)
        x2 = vmap(lambda x: folded_mlp(model, x))(x1)
    J2 = vmap(jacrev(lambda x: folded_unembed(model, x)))(x2)  # (N, 7, 5)
    L2 = rib_layer(to_np(x2), m_dash(to_np(J2)[:, None, :, None, :]), THR)
    C2 = torch.from_numpy(L2.C)
    J1 = vmap(jacrev(lambda x: folded_mlp(model, x) @ C2))(x1)
    L1 = rib_layer(to_np(x1), m_dash(to_np(J1)[:, None, :, None, :]), THR)
    C1 = torch.from_numpy(L1.C)
    J0 = vmap(jacrev(lambda x: folded_attention(model, x) @ C1))(x0)  # (N, k1, 3, 5)
    L0 = rib_layer(to_np(x0).reshape(-1, 5), m_dash(to_np(J0)[:, None]), THR)
    return {LAYERS[0]: (L0, x0.reshape(-1, 5)), LAYERS[1]: (L1, x1), LAYERS[2]: (L2, x2)}


def test_last_mid_output_is_the_same_function():
    t = tokens()
    cut, full = tiny("last-mid"), tiny("last")
    assert torch.equal(cut(t), full(t))


def test_attention_constant_folds_as_rib_on_the_paper_layout():
    """Lambda (constant first) and coordinates of all three layers equal the folded reference to 1e-10."""
    model, t = tiny(), tokens()
    basis = interaction_basis(model, t, LAYERS)
    ref = reference(model, t)
    for point in LAYERS[:3]:
        layer, x = ref[point]
        lb = basis[point]
        np.testing.assert_allclose(to_np(lb.eigenvalues), layer.Lambda, rtol=1e-10,
                                   atol=1e-13 * abs(layer.Lambda).max())
        got = to_np(lb.to_coordinates(x[:, :-1])).reshape(len(x), -1)
        want = to_np(x) @ layer.C
        signs = np.sign(np.sum(got * want, 0))
        assert np.abs(got * signs - want).max() < 1e-10 * np.abs(want).max()


def test_per_position_bias_rule_gives_a_different_constant_lambda():
    """Scaling b_O by s_t (the query's own constant) instead of rib's pattern-mixed constant changes
    the constant node's Lambda at the attention input, and only it: the folding matters."""
    model, t = tiny(), tokens()
    rib = interaction_basis(model, t, LAYERS)
    # a model whose attention has no `pattern` child: its b_O scales with each position's own s
    plain = tiny()
    del plain.blocks[0].attn.pattern
    plain.blocks[0].attn.pattern = lambda p: p  # the same function, no longer a submodule
    other = interaction_basis(plain, t, LAYERS)
    lam_rib, lam_other = rib[LAYERS[0]].eigenvalues, other[LAYERS[0]].eigenvalues
    assert float(abs(lam_rib[0] - lam_other[0]) / lam_rib[0]) > 1e-3
    torch.testing.assert_close(lam_rib[1:], lam_other[1:], rtol=1e-10, atol=0)


def test_constant_lambda_before_the_logits_is_the_mean_logit_norm_and_moves_with_a_softmax_shift():
    """At the last hidden layer (the logits linear in it, the output unrotated) the constant node's
    Lambda is ``||E logits||^2``; adding the same number to every unembedding bias leaves the softmax
    unchanged and moves that Lambda to ``||E logits + shift||^2`` (rib's modular-addition checkpoint
    has a uniform logit offset of about 43: benchmarks/results/lib_rib_modular.md)."""
    model, t = tiny(), tokens()
    probs = torch.softmax(model(t), -1)
    for shift in (0.0, 10.0):
        with torch.no_grad():
            model.unembed.bias += shift
            mean_logits = model(t).mean(0)
        torch.testing.assert_close(torch.softmax(model(t), -1), probs, rtol=1e-12, atol=1e-14)
        lam = interaction_basis(model, t, LAYERS)["ln_f"].eigenvalues
        torch.testing.assert_close(lam[0], mean_logits.pow(2).sum(), rtol=1e-10, atol=0)


def test_fourier_structure_of_lib_on_the_shipped_modular_mlp():
    """LIB (default configuration) on the shipped p = 113 modular MLP, built on its first 1,600 training
    pairs (the full split of 6,384 takes ~4x longer; its numbers are in docs/concepts/lib-variants.md).

    The top 6 non-constant embedding directions come in cosine/sine pairs of the frequencies 13, 56
    and 24. Per direction the concentration is 0.971-0.995: below 0.99. Directions 5 and 6 (Lambda
    172.4 and 166.4, a 3.5% gap) are near-degenerate: rotating them into each other changes each
    direction's number but not the pair's (``subspace_concentration``), which is 0.980 on frequency 24.
    Grouping at a 20% relative gap gives 0.990 for both groups. What holds is these numbers, not >= 0.99.
    """
    bundle = modular_addition(p=113, arch="mlp", dtype=DT, progress=False)
    (x, y), model = bundle.data[0], bundle.model
    lb = interaction_basis(model, [(x[:1600], y[:1600])], ["embed", "mlp.act", "unembed"], chunk_size=400)["embed"]
    T = lb.to_coordinates(model.embed.weight.detach())[:, 1:]  # (p, k): each direction as a function of the token
    lam = lb.eigenvalues[1:]
    per = [fourier_concentration(T[:, i]) for i in range(6)]
    assert [w for _, w in per] == [13, 13, 56, 56, 24, 24]
    np.testing.assert_allclose([c for c, _ in per], [0.9860, 0.9950, 0.9829, 0.9863, 0.9713, 0.9883], atol=2e-3)
    assert min(c for c, _ in per) < 0.99

    assert lambda_groups(lam, 6, 0.1) == [[0], [1], [2], [3], [4, 5]]
    pair, freqs = subspace_concentration(T[:, [4, 5]])
    assert freqs == [24] and abs(pair - 0.9797) < 2e-3
    c, s = math.cos(0.6), math.sin(0.6)
    rotated = T[:, [4, 5]] @ torch.tensor([[c, -s], [s, c]], dtype=DT)
    assert abs(fourier_concentration(rotated[:, 0])[0] - per[4][0]) > 1e-3  # per direction: not invariant
    assert subspace_concentration(rotated)[0] == pytest.approx(pair, rel=1e-12)  # per group: invariant

    wide = [subspace_concentration(T[:, g]) for g in lambda_groups(lam, 6, 0.2)]
    assert [f for _, f in wide] == [[13], [56, 24]]
    np.testing.assert_allclose([share for share, _ in wide], [0.9902, 0.9899], atol=2e-3)


def test_fourier_concentration_of_lib_holds_per_group_on_the_modular_mlp_trained_through_cleanup():
    """The issue's ">= 0.99" on the p = 113 modular MLP trained on past its first 100% test accuracy, through
    the cleanup phase (``modular_addition(patience=None)``: 3,000 steps instead of 450, as rib's models train
    far past grokking; shipped), with the basis built as the paper builds it: default configuration, on the
    whole training split (6,384 pairs).

    The constant node carries the largest Lambda. The top 6 non-constant embedding directions are the
    cosine/sine pairs of frequencies 36, 38 and 56. Directions 3-6 have Lambdas within 1.2%, 1.8% and 6% of
    each other: inside that group frequencies 38 and 56 mix, so per direction the concentration drops to
    0.958. Per group (``subspace_concentration``, invariant under rotations inside the group) the score is
    >= 0.99 at both gaps of docs/concepts/lib-variants.md: 0.9951 / 0.9943 at 0.1 and 0.9951 / 0.9966 at 0.2.
    This is one seed; over five (benchmark, same docs section) the 0.1-gap score is >= 0.99 on 3 of 5
    cleaned-up models and the 0.2-gap score on all 5.
    """
    bundle = modular_addition(p=113, arch="mlp", dtype=DT, progress=False, patience=None)
    assert bundle.config["max_steps"] == 3000 and bundle.metrics["train_steps"] == 3000
    assert bundle.metrics["test_accuracy"] == 1.0
    model = bundle.model
    lb = interaction_basis(model, bundle.data, ["embed", "mlp.act", "unembed"])["embed"]
    assert lb.constant is not None and float(lb.eigenvalues[0]) > float(lb.eigenvalues[1:].max())
    T = lb.to_coordinates(model.embed.weight.detach())[:, 1:]
    lam = lb.eigenvalues[1:]
    np.testing.assert_allclose(lam[:6].numpy(), [632.14, 621.33, 489.86, 483.80, 474.93, 446.53], rtol=2e-3)
    per = [fourier_concentration(T[:, i]) for i in range(6)]
    assert [w for _, w in per] == [36, 36, 56, 38, 38, 56]
    np.testing.assert_allclose([c for c, _ in per], [0.9960, 0.9942, 0.9723, 0.9576, 0.9885, 0.9828], atol=2e-3)
    assert min(c for c, _ in per) < 0.99  # per direction: not >= 0.99

    groups = lambda_groups(lam, 6, 0.1)
    assert groups == [[0, 1], [2, 3, 4, 5]]
    scored = [subspace_concentration(T[:, g]) for g in groups]
    assert [sorted(f) for _, f in scored] == [[36], [38, 56]]
    np.testing.assert_allclose([share for share, _ in scored], [0.9951, 0.9943], atol=1e-3)
    assert min(share for share, _ in scored) >= 0.99  # per group: >= 0.99

    wide = lambda_groups(lam, 6, 0.2)
    assert wide == [[0, 1], [2, 3, 4, 5, 6, 7]]
    shares = [subspace_concentration(T[:, g])[0] for g in wide]
    np.testing.assert_allclose(shares, [0.9951, 0.9966], atol=1e-3)
    assert min(shares) >= 0.99


def test_benchmark_fourier_report_lists_position_directions_apart_and_scores_groups():
    """benchmarks/lib_rib_modular.py's fourier_report on made-up directions (p = 31): a position
    direction (1% of its variance within positions), a pure frequency, and a near-degenerate pair made of
    two frequencies rotated together (each 0.5 per direction; the group 0.5 on one frequency's pair, 1.0
    on one frequency per direction)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import lib_rib_modular

    p, t = 31, torch.arange(31, dtype=DT)

    def wave(w):
        return torch.cos(2 * math.pi * w * t / p)

    c = 1 / math.sqrt(2)
    pair = [c * (wave(5) + wave(9)), c * (wave(5) - wave(9))]
    token_fn = torch.stack([0.1 * wave(2) + 0.1 * wave(7), wave(3), *pair], 1)
    tokens = torch.randint(0, p, (400, 2), generator=torch.Generator().manual_seed(0))
    data = token_fn[tokens]  # (N, 2 positions, 4)
    data[:, 1, 0] += 1.0  # direction 1: mostly the position
    report = lib_rib_modular.fourier_report(token_fn, torch.tensor([100.0, 50.0, 20.0, 19.5], dtype=DT), data, 4,
                                            [0.0, 0.1])
    share = [d["token_share"] for d in report["directions"]]
    assert share[0] < 0.05 and min(share[1:]) > 0.99  # the offset of 1 at one position dominates direction 1
    assert [d["concentration"] for d in report["directions"]] == pytest.approx([0.5, 1.0, 0.5, 0.5], abs=1e-12)
    grouped = report["groups"]["0.1"]
    assert [g["directions"] for g in grouped["groups"]] == [[1], [2], [3, 4]]
    assert grouped["groups"][2]["concentration"] == pytest.approx(0.5, abs=1e-12)
    assert grouped["groups"][2]["concentration_one_per_direction"] == pytest.approx(1.0, abs=1e-12)
    assert grouped["position_groups"] == [[1]] and grouped["min_token_groups"] == pytest.approx(0.5, abs=1e-12)
    assert report["min_per_token_direction"] == pytest.approx(0.5, abs=1e-12)
