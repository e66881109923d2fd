"""The trained models that ship with the package: the full demo loads them all, they verify, they
reproduce their recorded losses, and ``WDECOMP_SHIPPED=0`` ignores them."""

from __future__ import annotations

import json

import pytest

from wdecomp.demo import FULL_BATCH, FULL_CONTEXT, FULL_SWEEP, train_demo_models, train_reference_models
from wdecomp.models import cache as mcache
from wdecomp.models import char_transformer, toy_superposition
from wdecomp.models.training import cross_entropy, evaluate


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    """An empty user cache, and training turned into a failure (a shipped model must load)."""
    monkeypatch.setenv("WDECOMP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("WDECOMP_SHIPPED", raising=False)

    def would_train(name, config):
        raise AssertionError(f"{name} is not shipped (key {mcache.cache_key(name, config)}): it would be trained")

    monkeypatch.setattr(mcache, "check_writable", would_train)


def test_every_model_the_full_demo_uses_is_shipped_and_verifies():
    train_demo_models(quick=False, progress=False)  # raises if any model would be trained
    train_reference_models(progress=False)
    sidecars = sorted(mcache.shipped_dir().glob("*.json"))
    assert len(sidecars) == 3 + len(FULL_SWEEP) * 2  # modular (early-stopped, cleaned up), toy, the char staircase
    for f in sidecars:
        meta = json.loads(f.read_text())
        assert meta["code_version"] == mcache.CODE_VERSION
        assert f.stem == f"{meta['name']}-{mcache.cache_key(meta['name'], meta['config'])}"


def test_shipped_default_char_transformer_reproduces_its_recorded_validation_loss():
    (d_model, n_layers, n_heads), budget = FULL_SWEEP[-1][0], FULL_SWEEP[-1][1][-1]
    b = char_transformer(d_model=d_model, n_layers=n_layers, n_heads=n_heads, context=FULL_CONTEXT,
                         tokens=budget, batch_size=FULL_BATCH, n_data_batches=2, progress=False)
    assert b.from_cache
    recomputed = evaluate(b.model, b.test, cross_entropy)
    assert recomputed == pytest.approx(b.metrics["val_loss"], abs=1e-5)
    assert b.metrics["val_loss"] < 1.40  # the library's default char transformer (1.343 nats/char)


def test_wdecomp_shipped_0_ignores_the_shipped_models(monkeypatch):
    assert toy_superposition(progress=False).from_cache  # shipped
    monkeypatch.setenv("WDECOMP_SHIPPED", "0")
    with pytest.raises(AssertionError, match="would be trained"):
        toy_superposition(progress=False)
