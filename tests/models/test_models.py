"""Tests of wdecomp.models: trained models reach stated quality, caching, reproducibility."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

import wdecomp.models as wm
from wdecomp.models import cache as mcache
from wdecomp.models import training
from wdecomp.models.char import ScalingPoint, char_corpus, unigram_entropy
from wdecomp.models.transformer import Transformer, TransformerConfig


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch):
    """Every test gets its own empty cache directory."""
    monkeypatch.setenv("WDECOMP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _bitwise_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------- toy model


def _angles_deg(W):
    return torch.rad2deg(torch.atan2(W[1], W[0])).double()


def test_toy_superposition_pentagon_at_high_sparsity():
    b = wm.toy_superposition(n_features=5, d_hidden=2, sparsity=0.9, importance_decay=0.9,
                             progress=False)
    model, data = b
    W = model.W.detach()
    norms = W.norm(dim=0)
    # every feature gets its own direction of near-unit norm ...
    assert torch.all(norms > 0.9) and torch.all(norms < 1.25), norms
    # ... and the five directions form a regular pentagon: consecutive gaps of 72 degrees
    ang = torch.sort(_angles_deg(W)).values
    gaps = torch.diff(torch.cat([ang, ang[:1] + 360.0]))
    assert torch.allclose(gaps, torch.full_like(gaps, 72.0), atol=6.0), gaps
    assert b.metrics["test_loss"] < 0.01
    assert b.loss_name == "importance_weighted_mse"
    x, y = data[0]
    assert x.shape == (1024, 5) and torch.equal(x, y)
    # roughly 10% of entries are non-zero
    assert 0.08 < float((x > 0).float().mean()) < 0.12


def test_toy_superposition_dense_keeps_two_most_important_features():
    b = wm.toy_superposition(n_features=5, d_hidden=2, sparsity=0.0, progress=False)
    W = b.model.W.detach()
    norms = W.norm(dim=0)
    assert torch.all((norms[:2] - 1.0).abs() < 0.05), norms
    assert torch.all(norms[2:] < 0.1), norms
    cos = float(W[:, 0] @ W[:, 1] / (norms[0] * norms[1]))
    assert abs(cos) < 0.05  # orthogonal: no superposition


def test_toy_loss_is_importance_weighted_mse():
    b = wm.toy_superposition(steps=10, progress=False, cache=False)
    x, y = b.data[0]
    with torch.no_grad():
        out = b.model(x)
    w = b.extra["importance"]
    assert torch.allclose(w, 0.9 ** torch.arange(5.0))
    expected = (w * (out - y) ** 2).mean()
    assert torch.allclose(b.loss(out, y), expected)
    assert math.isclose(training.evaluate(b.model, b.data, b.loss), float(expected), rel_tol=0.2)


# ---------------------------------------------------------------------------- modular addition


@pytest.fixture(scope="module")
def modular_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("modular-cache")


def test_modular_addition_mlp_groks_to_full_test_accuracy(modular_cache, monkeypatch):
    monkeypatch.setenv("WDECOMP_CACHE", str(modular_cache))
    b = wm.modular_addition(p=113, arch="mlp", seed=0, progress=False)
    model, data = b
    assert b.metrics["test_accuracy"] == 1.0
    assert b.metrics["train_accuracy"] == 1.0
    assert training.accuracy(model, b.test) == 1.0
    (x, y), = data
    assert x.shape == (round(0.5 * 113**2), 2) and x.dtype == torch.int64
    assert torch.equal(y, (x[:, 0] + x[:, 1]) % 113)
    assert len(data[0][0]) + len(b.test[0][0]) == 113**2
    names = dict(model.named_modules())
    for hook in ("embed", "mlp", "mlp.hidden", "mlp.act", "unembed"):
        assert hook in names
    assert isinstance(names["mlp.hidden"], torch.nn.Linear)
    assert not model.training


def test_modular_addition_float64_from_cache_keeps_accuracy(modular_cache, monkeypatch):
    monkeypatch.setenv("WDECOMP_CACHE", str(modular_cache))
    monkeypatch.setattr("wdecomp.models.modular.train_loop", _no_training)
    b = wm.modular_addition(p=113, seed=0, progress=False, dtype=torch.float64)
    assert b.from_cache
    assert all(p.dtype == torch.float64 for p in b.model.parameters())
    assert training.accuracy(b.model, b.test) == 1.0


@pytest.mark.slow
def test_modular_addition_transformer_small_p_learns():
    # a smoke test of the one-layer transformer variant at a small modulus: it fits the
    # training set and generalises well beyond chance (1/23) within the step budget
    b = wm.modular_addition(p=23, arch="transformer", train_fraction=0.6, seed=0,
                            progress=False, max_steps=1500)
    assert b.metrics["train_accuracy"] == 1.0
    assert b.metrics["test_accuracy"] > 0.7
    x, _ = b.data[0]
    assert x.shape[1] == 3 and torch.all(x[:, 2] == 23)
    assert b.model(x[:4]).shape == (4, 23)
    names = dict(b.model.named_modules())
    assert set(b.hook_points) <= set(names)


def _no_training(*args, **kwargs):
    raise AssertionError("the model was retrained instead of loaded from the cache")


# ---------------------------------------------------------------------------- digits


def test_digits_mlp_reaches_95_percent():
    pytest.importorskip("sklearn")
    b = wm.digits_mlp(hidden=(64,), seed=0, progress=False)
    assert b.metrics["test_accuracy"] >= 0.95
    assert training.accuracy(b.model, b.test) >= 0.95
    n_train = sum(len(y) for _, y in b.data)
    n_test = sum(len(y) for _, y in b.test)
    assert (n_train, n_test) == (1348, 449)
    assert len(b.data[-1][1]) < len(b.data[0][1])  # uneven last batch, on purpose
    assert {"fc.0", "act.0", "out"} <= set(dict(b.model.named_modules()))


# ---------------------------------------------------------------------------- char transformer


TINY_CHAR = dict(d_model=32, n_layers=2, n_heads=2, context=32, tokens=200_000, batch_size=16)


def test_char_corpus_is_deterministic_and_split():
    c = char_corpus()
    assert c.vocab_size > 50 and list(c.chars) == sorted(c.chars)
    n = len(c.train) + len(c.val)
    assert abs(len(c.val) - 0.1 * n) <= 1
    assert c.decode(c.encode("The assert statement")) == "The assert statement"
    assert 2.5 < unigram_entropy() < 4.0


def test_char_transformer_beats_unigram_entropy():
    b = wm.char_transformer(**TINY_CHAR, progress=False)
    model, data = b
    x, y = data[0]
    assert x.shape == (16, 32) and y.shape == (16, 32)
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the next characters
    logits = model(x)
    assert logits.shape == (16, 32, char_corpus().vocab_size)
    val = b.metrics["val_loss"]
    assert val < unigram_entropy() - 0.3, val
    assert val < unigram_entropy("val")
    assert math.isclose(training.evaluate(model, b.test, b.loss), val, rel_tol=1e-5)
    assert b.metrics["n_tokens"] >= 200_000
    names = dict(model.named_modules())
    assert set(b.hook_points) <= set(names)
    for hook in ("embed", "blocks.0.attn", "blocks.1.mlp.hidden", "blocks.1.mlp.act", "unembed"):
        assert hook in names


def test_transformer_is_causal_and_float64():
    torch.manual_seed(0)
    cfg = TransformerConfig(d_vocab=11, d_model=16, n_layers=2, n_heads=2, context=8)
    model = Transformer(cfg).double().eval()
    x = torch.randint(0, 11, (3, 8))
    x2 = x.clone()
    x2[:, 5:] = (x2[:, 5:] + 1) % 11
    a, b = model(x), model(x2)
    assert a.dtype == torch.float64
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-12)
    assert not torch.allclose(a[:, 5:], b[:, 5:])
    assert not list(model.buffers())


def test_char_scaling_sweep_quick():
    points = wm.char_scaling_sweep(preset="quick", progress=False)
    assert len(points) == 9
    arr = np.asarray(points, dtype=np.float64)
    assert arr.shape == (9, 3)
    assert all(isinstance(p, ScalingPoint) for p in points)
    ns = sorted({p.n_params for p in points})
    assert len(ns) == 3
    # more tokens help every size; the largest model at the largest budget is the best
    for n in ns:
        losses = [p.loss for p in points if p.n_params == n]
        assert losses[-1] < losses[0]
    best = min(points, key=lambda p: p.loss)
    assert best.n_params == ns[-1] and best.n_tokens == max(p.n_tokens for p in points)
    cols = wm.sweep_points(points)
    assert cols["N"] == [p.n_params for p in points] and len(cols["loss"]) == 9
    json.dumps([p.to_dict() for p in points])


# ---------------------------------------------------------------------------- cache


FAST_TOY = dict(n_features=5, d_hidden=2, steps=200, progress=False)


def test_cache_second_load_is_bitwise_identical_and_does_not_retrain(tmp_cache, monkeypatch):
    first = wm.toy_superposition(**FAST_TOY)
    assert not first.from_cache
    files = sorted(p.name for p in (tmp_cache / "models").iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".safetensors")
    monkeypatch.setattr("wdecomp.models.toy.train_loop", _no_training)
    second = wm.toy_superposition(**FAST_TOY)
    assert second.from_cache
    assert _bitwise_equal(_state(first.model), _state(second.model))
    assert second.metrics == first.metrics
    # a different config is a different entry
    with pytest.raises(AssertionError, match="retrained"):
        wm.toy_superposition(**{**FAST_TOY, "sparsity": 0.5})


def test_corrupted_cache_file_triggers_retraining(tmp_cache):
    first = wm.toy_superposition(**FAST_TOY)
    weights, meta = mcache.entry_paths("toy_superposition", first.config)
    blob = bytearray(weights.read_bytes())
    blob[-3] ^= 0xFF  # flip bits inside the tensor data (header still parses)
    weights.write_bytes(bytes(blob))
    with pytest.warns(mcache.CacheWarning, match="SHA-256"):
        second = wm.toy_superposition(**FAST_TOY)
    assert not second.from_cache
    assert _bitwise_equal(_state(first.model), _state(second.model))
    # the retrained entry replaced the corrupted one and is trusted again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert wm.toy_superposition(**FAST_TOY).from_cache


@pytest.mark.parametrize("damage", ["truncate_weights", "bad_json", "other_config", "no_json"])
def test_damaged_cache_entries_are_not_trusted(tmp_cache, damage):
    first = wm.toy_superposition(**FAST_TOY)
    weights, meta = mcache.entry_paths("toy_superposition", first.config)
    if damage == "truncate_weights":
        weights.write_bytes(weights.read_bytes()[:40])
    elif damage == "bad_json":
        meta.write_text("{not json")
    elif damage == "other_config":
        d = json.loads(meta.read_text())
        d["config"]["sparsity"] = 0.123
        meta.write_text(json.dumps(d))
    else:
        meta.unlink()
    with pytest.warns(mcache.CacheWarning):
        again = wm.toy_superposition(**FAST_TOY)
    assert not again.from_cache
    assert _bitwise_equal(_state(first.model), _state(again.model))


def test_cache_false_bypasses_and_writes_nothing(tmp_cache):
    b = wm.toy_superposition(**FAST_TOY, cache=False)
    assert not b.from_cache
    assert not (tmp_cache / "models").exists()


def test_cache_key_depends_on_name_config_and_code_version(monkeypatch):
    k = mcache.cache_key("m", {"a": 1, "b": 2})
    assert k == mcache.cache_key("m", {"b": 2, "a": 1})
    assert k != mcache.cache_key("m", {"a": 1, "b": 3})
    assert k != mcache.cache_key("n", {"a": 1, "b": 2})
    monkeypatch.setattr(mcache, "CODE_VERSION", "other")
    assert k != mcache.cache_key("m", {"a": 1, "b": 2})


def test_cache_dir_follows_environment(tmp_cache, monkeypatch):
    assert mcache.cache_dir() == tmp_cache
    monkeypatch.delenv("WDECOMP_CACHE")
    assert mcache.cache_dir().parts[-2:] == (".cache", "wdecomp")


# ---------------------------------------------------------------------------- reproducibility


def test_same_seed_same_weights_different_seed_different():
    a = wm.toy_superposition(**FAST_TOY, cache=False, seed=3)
    b = wm.toy_superposition(**FAST_TOY, cache=False, seed=3)
    c = wm.toy_superposition(**FAST_TOY, cache=False, seed=4)
    assert _bitwise_equal(_state(a.model), _state(b.model))
    assert not torch.equal(a.model.W, c.model.W)
    for (xa, _), (xb, _) in zip(a.data, b.data):
        assert torch.equal(xa, xb)


def test_char_transformer_reproducible():
    kw = dict(d_model=16, n_layers=1, n_heads=2, context=16, tokens=8_000, batch_size=8,
              cache=False, progress=False)
    a, b = wm.char_transformer(**kw), wm.char_transformer(**kw)
    assert _bitwise_equal(_state(a.model), _state(b.model))


def test_factories_leave_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    wm.toy_superposition(**FAST_TOY, cache=False)
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------------------- API


def test_bundle_and_registry():
    b = wm.load("toy_superposition", **FAST_TOY)
    model, data = b
    assert model is b.model and data is b.data
    assert isinstance(b, wm.ModelBundle) and len(b) == 2
    assert "toy_superposition" in repr(b)
    assert set(wm.available()) >= {"toy_superposition", "modular_addition", "digits_mlp",
                                   "char_transformer", "modular_addition_transformer"}
    with pytest.raises(ValueError, match="available"):
        wm.load("nope")
    b64 = wm.toy_superposition(**FAST_TOY, dtype=torch.float64)
    assert b64.from_cache and b64.model.W.dtype == torch.float64
    assert b64.data[0][0].dtype == torch.float64
    assert torch.equal(b64.model.W.float(), b.model.W)
    with pytest.raises(ValueError, match="dtype"):
        wm.toy_superposition(**FAST_TOY, dtype=torch.float16)


def test_untrained_models_are_not_cached(tmp_cache):
    b = wm.toy_superposition(**FAST_TOY, train=False)
    assert b.metrics["train_steps"] == 0
    assert not (tmp_cache / "models").exists()


def test_progress_disabled_without_tty(monkeypatch):
    assert training.progress_enabled(False) is False
    assert training.progress_enabled(True) is True
    monkeypatch.setattr("sys.stderr", open("/dev/null", "w"))  # noqa: SIM115
    assert training.progress_enabled(None) is False


def test_evaluate_weights_uneven_batches_by_size():
    model = torch.nn.Identity()
    data = [(torch.zeros(3, 1), torch.ones(3, 1)), (torch.zeros(1, 1), torch.full((1, 1), 3.0))]
    # per-example squared errors 1, 1, 1, 9 -> mean 3
    assert training.evaluate(model, data, training.mse) == pytest.approx(3.0)


def test_minibatch_sampler_covers_epoch_without_replacement():
    x = torch.arange(10)
    sample = training.minibatch_sampler(x, x, 3)
    g = training.make_generator(0)
    seen = torch.cat([sample(i, g)[0] for i in range(3)])
    assert len(set(seen.tolist())) == 9
