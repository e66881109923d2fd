"""SAE models: TopK keeps exactly k, the binding decoder's structure, save/load, bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from wdecomp.errors import DataError, ShapeError
from wdecomp.io import atomic_write_bytes
from wdecomp.sae.model import BindingSAE, SparseAutoencoder, load_sae


@settings(max_examples=25, deadline=None)
@given(width=st.integers(2, 40), d=st.integers(1, 6), data=st.data())
def test_topk_keeps_exactly_k_largest(width: int, d: int, data) -> None:
    k = data.draw(st.integers(1, width))
    sae = SparseAutoencoder(d, width, activation="topk", k=k, dtype=torch.float64, seed=width)
    with torch.no_grad():
        sae.b_enc.fill_(50.0)  # every pre-activation positive: ReLU zeroes none of the k kept
    x = torch.randn(7, d, dtype=torch.float64, generator=torch.Generator().manual_seed(d))
    f = sae.encode(x)
    pre = sae.pre_activations(x)
    assert ((f > 0).sum(-1) == k).all()
    # the kept values are the pre-activations themselves, and no dropped one exceeds a kept one
    assert torch.equal(f[f > 0], pre[f > 0])
    dropped_max = pre.masked_fill(f > 0, float("-inf")).max(-1).values
    kept_min = pre.masked_fill(f <= 0, float("inf")).min(-1).values
    assert (dropped_max <= kept_min).all()


def test_topk_with_negative_preactivations_keeps_at_most_k() -> None:
    sae = SparseAutoencoder(3, 10, k=4, dtype=torch.float64)
    with torch.no_grad():
        sae.b_enc.fill_(-100.0)
    assert int((sae.encode(torch.randn(5, 3, dtype=torch.float64)) > 0).sum()) == 0


def test_slot_topk_keeps_k_per_slot() -> None:
    sae = BindingSAE(4, 6, slots=3, activation="slot_topk", k=2, dtype=torch.float64)
    with torch.no_grad():
        sae.b_enc.fill_(50.0)
    f = sae.encode(torch.randn(9, 4, dtype=torch.float64))
    assert ((f.reshape(9, 3, 6) > 0).sum(-1) == 2).all()


def test_binding_decoder_is_powers_of_R_times_D() -> None:
    sae = BindingSAE(5, 7, slots=3, k=2, dtype=torch.float64, seed=3)
    W = sae.decoder()
    D, R = sae.D.detach(), sae.R.detach()
    assert W.shape == (5, 21)
    torch.testing.assert_close(W[:, :7], D, rtol=0, atol=0)
    torch.testing.assert_close(W[:, 7:14], R @ D, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(W[:, 14:], R @ R @ D, rtol=1e-13, atol=1e-13)
    assert sae.decoder_parameters == 7 * 5 + 25
    assert sae.budget_saved == 21 * 5 - (7 * 5 + 25)


@pytest.mark.parametrize("make", [
    lambda: SparseAutoencoder(6, 12, activation="relu", seed=1),
    lambda: SparseAutoencoder(6, 12, activation="topk", k=3, hook="blocks.0", dtype=torch.float64, seed=2),
    lambda: BindingSAE(6, 8, slots=2, activation="slot_topk", k=1, hook="blocks.1", seed=3),
])
def test_save_load_roundtrip(tmp_path, make) -> None:
    sae = make()
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = sae.save(tmp_path / "sae.safetensors")
    back = load_sae(path)
    assert type(back) is type(sae) and back.config() == sae.config()
    x = torch.randn(4, 6, dtype=sae.W_enc.dtype)
    assert torch.equal(back(x), sae(x))


@pytest.mark.refuses("an SAE with TopK k larger than its number of latents",
                     "k latents cannot be kept out of fewer; choose 1 <= k <= width")
def test_k_larger_than_width_refused() -> None:
    with pytest.raises(ShapeError, match="k=9 latents cannot be kept out of width=8"):
        SparseAutoencoder(4, 8, k=9)
    with pytest.raises(ShapeError, match="k=5 latents cannot be kept out of width=4"):
        BindingSAE(4, 4, slots=2, activation="slot_topk", k=5)


@pytest.mark.refuses("activations whose width differs from the SAE's input width",
                     "the SAE was built for another hook point; train or load one for this hook")
def test_width_mismatch_refused() -> None:
    sae = SparseAutoencoder(4, 8, k=2, hook="blocks.0")
    with pytest.raises(ShapeError, match="at 'blocks.0' have width 5, this SAE was built for width 4"):
        sae(torch.randn(3, 5))
    from wdecomp.sae.train import fit_sae  # training: a tensor checked once, a stream chunk by chunk

    with pytest.raises(ShapeError, match="have width 5, this SAE was built for width 4"):
        fit_sae(sae, torch.randn(64, 5), steps=2, batch_size=16)
    with pytest.raises(ShapeError, match="have width 5, this SAE was built for width 4"):
        fit_sae(sae, iter([torch.randn(40, 4), torch.randn(40, 5)]), steps=4, batch_size=16)


@pytest.mark.refuses("a file that is not a saved wdecomp SAE given to load_sae",
                     "only files written by SparseAutoencoder.save load (tensors only, no code runs)")
def test_load_foreign_file_refused(tmp_path) -> None:
    bad = atomic_write_bytes(tmp_path / "x.safetensors", b"not a safetensors file")
    with pytest.raises(DataError, match="not a safetensors file"):
        load_sae(bad)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "y.safetensors"))
    with pytest.raises(DataError, match="not a wdecomp SAE"):
        load_sae(tmp_path / "y.safetensors")
