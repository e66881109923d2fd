"""SAE training: unit-norm decoder after every step, dead-latent counts, streaming, seeding, refusals."""

from __future__ import annotations

import pytest
import torch
from _zoo import TinyLM, token_batches

from wdecomp.errors import NonFiniteError, SelectionError
from wdecomp.sae.model import BindingSAE, SparseAutoencoder
from wdecomp.sae.train import fit_sae, hook_activations, train_sae


@pytest.mark.parametrize("make", [
    lambda: SparseAutoencoder(6, 16, activation="relu", seed=0),
    lambda: SparseAutoencoder(6, 16, activation="topk", k=3, seed=0),
    lambda: BindingSAE(6, 8, slots=2, activation="topk", k=2, seed=0),
])
def test_unit_norm_decoder_after_every_step(make) -> None:
    sae = make()
    X = torch.randn(256, 6, generator=torch.Generator().manual_seed(1)) * 3 + 1
    worst = []

    def check(step, s, f):
        worst.append(float((s.free_columns().detach().norm(dim=0) - 1).abs().max()))

    fit_sae(sae, X, steps=30, batch_size=32, lr=1e-2, resample_every=5, dead_window=32, callback=check)
    assert len(worst) == 30 and max(worst) <= 1e-6


def test_dead_latent_count_matches_direct_count() -> None:
    sae = SparseAutoencoder(4, 24, activation="topk", k=1, seed=0)
    X = torch.randn(512, 4, generator=torch.Generator().manual_seed(2))
    fired = []
    res = fit_sae(sae, X, steps=40, batch_size=16, lr=1e-2, dead_window=160, resample_every=0,
                  callback=lambda step, s, f: fired.append((f > 0).any(0)))
    F = torch.stack(fired)  # (steps, n): fired at each step
    window_steps = 160 // 16
    direct_dead = int((~F[-window_steps:].any(0)).sum())
    assert res.dead == direct_dead > 0  # k=1 of 24 latents: some never fire late in training
    last = torch.tensor([int(torch.nonzero(F[:, j]).max()) if F[:, j].any() else -1 for j in range(24)])
    expect = torch.where(last >= 0, (39 - last) * 16, torch.full_like(last, 40 * 16))
    assert torch.equal(res.tokens_since_fired, expect)


def test_resampling_revives_dead_latents() -> None:
    sae = SparseAutoencoder(4, 12, activation="relu", seed=0)
    with torch.no_grad():
        sae.b_enc[:6] = -100.0  # six latents that cannot fire
    X = torch.randn(512, 4, generator=torch.Generator().manual_seed(3))
    res = fit_sae(sae, X, steps=20, batch_size=32, lr=1e-3, dead_window=64, resample_every=10, resample_until=0.5)
    assert res.resampled == 6
    assert (sae.b_enc[:6] > -1).all()


def test_streaming_holds_only_the_buffer_and_sees_every_activation() -> None:
    model, data = TinyLM(), token_batches(n=5)
    chunks = list(hook_activations(model, data, "resid", buffer_batches=2, epochs=1))
    assert [c.shape[0] for c in chunks] == [48, 48, 24]  # two batches of 4 x 6 activations at most
    direct = torch.cat([model.embed(x).reshape(-1, 5) for x, _ in data]).detach()
    got = torch.cat(chunks)
    assert torch.equal(torch.sort(got, dim=0).values, torch.sort(direct, dim=0).values)


def test_train_sae_on_model_is_seeded() -> None:
    model, data = TinyLM(), token_batches()
    a = train_sae(model, data, "resid", width=8, k=2, steps=12, batch_size=16, seed=4)
    b = train_sae(model, data, "resid", width=8, k=2, steps=12, batch_size=16, seed=4)
    assert a.sae.hook == "resid" and a.tokens == 12 * 16
    for (n, p), (_, q) in zip(a.sae.state_dict().items(), b.sae.state_dict().items()):
        assert torch.equal(p, q), n


@pytest.mark.refuses("an SAE trained at a hook point the model does not have",
                     "names the module and suggests near names; pick one of the model's hook points")
def test_missing_hook_refused() -> None:
    with pytest.raises(SelectionError, match="no module named 'resdi'.*resid"):
        train_sae(TinyLM(), token_batches(), "resdi", width=8, k=2, steps=2)


@pytest.mark.refuses("NaN or infinite activations to train or evaluate an SAE on",
                     "an SAE fitted to non-finite values is meaningless; fix the model or data first")
def test_nan_activations_refused() -> None:
    X = torch.randn(64, 4)
    X[10, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="NaN"):
        fit_sae(SparseAutoencoder(4, 8, k=2), X, steps=3, batch_size=16)
    model = TinyLM()
    with torch.no_grad():
        model.embed.weight[3] = float("nan")
    data = [(torch.full((2, 3), 3), torch.zeros(2, 3, dtype=torch.long))]
    with pytest.raises(NonFiniteError, match="resid"):
        train_sae(model, data, "resid", width=8, k=2, steps=2, batch_size=2)
    X[10, 2] = -float("inf")
    with pytest.raises(NonFiniteError, match="infinite"):
        fit_sae(SparseAutoencoder(4, 8, k=2), iter([X]), steps=3, batch_size=16)  # a stream: checked per chunk


def test_finite_activations_whose_sum_overflows_are_not_refused() -> None:
    """The finiteness check sums first; a sum that overflows on finite values falls back to the exact test."""
    from wdecomp.sae.train import _check_finite

    X = torch.randn(64, 4)
    X[:, 0] = 3e38  # finite in float32; the sum of 64 of them is inf (too large to train on, not NaN)
    assert not torch.isfinite(X.sum())
    _check_finite(X)  # no error
    X[5, 1] = float("nan")
    with pytest.raises(NonFiniteError):
        _check_finite(X)


def test_encoder_only_training_keeps_the_dictionary() -> None:
    sae = BindingSAE(6, 8, slots=2, activation="topk", k=2, seed=0)
    X = torch.randn(512, 6, generator=torch.Generator().manual_seed(3)) * 2 + 1
    before = {name: p.detach().clone() for name, p in sae.named_parameters()}
    fit_sae(sae, X, steps=20, batch_size=32, lr=1e-2, encoder_only=True)
    for name in ("D", "R", "b_dec"):
        assert torch.equal(getattr(sae, name), before[name])  # bit for bit
    for name in ("W_enc", "b_enc"):
        assert not torch.equal(getattr(sae, name), before[name])
    assert all(p.requires_grad is False for p in sae.parameters())  # eval state restored


@pytest.mark.parametrize("make", [
    lambda: SparseAutoencoder(6, 40, activation="relu", seed=0),
    lambda: SparseAutoencoder(6, 40, activation="topk", k=7, seed=0),
    lambda: BindingSAE(6, 10, slots=3, activation="topk", k=5, seed=0),
    lambda: BindingSAE(6, 10, slots=3, activation="slot_topk", k=4, seed=0),
])
def test_fired_latents_equal_the_dense_count(make) -> None:
    """The trainer's fired mask (TopK: read off the kept indices) is the dense (f > 0).any over rows."""
    sae = make()
    with torch.no_grad():
        sae.b_enc[::3] = -4.0  # kept entries that are <= 0 (not fired) in many rows
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 9, 6, generator=g)  # two leading axes
    x[1, 2] = float("nan")  # a NaN row: its latents are NaN (ReLU) or kept with NaN values; NaN > 0 is False
    f, fired = sae._encode(x, fired=True)
    dense = (f > 0).reshape(-1, sae.width).any(0)
    assert fired.dtype == torch.bool and fired.shape == (sae.width,)
    assert torch.equal(fired, dense) and 0 < int(dense.sum()) < sae.width
    torch.testing.assert_close(f, sae.encode(x), rtol=0, atol=0, equal_nan=True)  # the same latents
    for rows in (x[0, :1], x[2]):  # one row, and rows without the NaN
        f1, fired1 = sae._encode(rows, fired=True)
        assert torch.equal(fired1, (f1 > 0).any(0))


@pytest.mark.parametrize("make", [
    lambda: SparseAutoencoder(6, 24, activation="relu", seed=0),
    lambda: SparseAutoencoder(6, 24, activation="topk", k=3, seed=1),
    lambda: BindingSAE(6, 8, slots=2, activation="slot_topk", k=2, seed=2),
])
def test_fit_sae_is_the_plain_loop_bit_for_bit(make) -> None:
    """Without resampling, fit_sae on a tensor is this loop: minibatches cut in order from a seeded
    permutation drawn anew each epoch (a minibatch crossing an epoch's end continues into the next
    one), Adam with the linear decay as a LambdaLR, the parallel gradient removed, columns renormalised."""
    X = torch.randn(200, 6, generator=torch.Generator().manual_seed(6)) * 2 + 0.5  # 200 = 3 x 64 + 8
    steps, B, lr, l1, seed = 13, 64, 1e-2, 1e-2, 3
    sae, ref = make(), make()
    fit_sae(sae, X, steps=steps, batch_size=B, lr=lr, l1=l1, lr_decay=0.5, seed=seed, resample_every=0,
            init_b_dec="mean")
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(200, generator=g) for _ in range(5)])  # 13 x 64 = 832 <= 1000 rows
    opt = torch.optim.Adam(ref.parameters(), lr=lr)
    start = round(0.5 * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 1.0 if s < start else max(0.0, (steps - s) / (steps - start)))
    with torch.no_grad():
        ref.b_dec.copy_(X[order[:B]].mean(0))
    for s in range(steps):
        x = X[order[s * B:(s + 1) * B]]
        f = ref.encode(x)
        loss = (ref.decode(f) - x).pow(2).sum(-1).mean()
        if ref.activation == "relu":
            loss = loss + l1 * f.sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        ref.remove_parallel_gradient_()
        opt.step()
        sched.step()
        ref.normalize_decoder_()
    assert opt.param_groups[0]["lr"] == 0.0  # the decay ran to its end
    for (name, p), (_, q) in zip(sae.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("make", [
    lambda: _blocked(SparseAutoencoder(4, 12, activation="relu", seed=0), [0, 1, 2, 3, 4, 5]),
    lambda: SparseAutoencoder(4, 24, activation="topk", k=1, seed=0),
    lambda: _blocked(BindingSAE(4, 12, slots=2, activation="slot_topk", k=1, seed=0), [0, 1, 2, 12, 13, 14, 20]),
])
def test_dead_counts_and_resampling_follow_the_dense_count(make) -> None:
    """History dead counts, resampling totals and tokens_since_fired equal a count kept from the
    dense (f > 0).any(0) of each step's latents (resampling at steps 5, 10, ..., 15 when any is dead)."""
    sae = make()
    X = torch.randn(512, 4, generator=torch.Generator().manual_seed(4))
    B, window, every, steps = 16, 48, 5, 40
    since = torch.zeros(sae.width, dtype=torch.long)
    expect = {"resampled": 0, "dead": []}

    def count(step, s, f):
        since.add_(B)
        since[(f > 0).any(0)] = 0
        dead = since >= window
        if step % every == 0 and step <= 0.4 * steps:  # resampled before the callback, from this dead set
            per = dead.reshape(s.slots, s.n_free).all(0) if isinstance(s, BindingSAE) else dead
            expect["resampled"] += int(per.sum())
        if step % 10 == 0:
            expect["dead"].append(float(dead.sum()))

    res = fit_sae(sae, X, steps=steps, batch_size=B, lr=1e-2, dead_window=window, resample_every=every,
                  resample_until=0.4, log_every=10, callback=count)
    assert res.resampled == expect["resampled"] > 0
    assert [row["dead"] for row in res.history] == expect["dead"]
    assert torch.equal(res.tokens_since_fired, since) and res.dead == int((since >= window).sum())


def _blocked(sae: SparseAutoencoder, latents: list[int]) -> SparseAutoencoder:
    with torch.no_grad():
        sae.b_enc[latents] = -100.0  # latents that cannot fire until resampled
    return sae
