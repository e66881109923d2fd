"""The model cache never loses a trained model and respects the umask: an unwritable cache is
reported before training, a failed write warns and returns the model, files get ``0o666 & ~umask``."""

from __future__ import annotations

import os
import stat
import warnings

import pytest
import torch
from torch import nn

from wdecomp.models import CacheWarning
from wdecomp.models import cache as model_cache
from wdecomp.models.base import build


def _fit_recording(log: list[str]):
    def fit(model: nn.Module) -> dict[str, float]:
        log.append("trained")
        with torch.no_grad():
            model.weight.add_(1.0)
        return {"loss": 0.5}

    return fit


def _build(log, **kw):
    return build("h8-cache-test", {"width": 3}, lambda: nn.Linear(3, 2), _fit_recording(log), seed=0, cache=True,
                 dtype=torch.float64, **kw)


@pytest.fixture
def a_file_as_cache(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("WDECOMP_CACHE", str(blocker))
    return blocker


@pytest.mark.parametrize("where", ["file", "read-only"])
def test_unwritable_cache_warns_before_training_and_returns_the_model(where, tmp_path, monkeypatch):
    if where == "file":
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("x")
        monkeypatch.setenv("WDECOMP_CACHE", str(blocker))
    else:
        monkeypatch.setenv("WDECOMP_CACHE", "/proc/wdecomp-cache")  # cannot be created, even by root
    log: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, metrics, from_cache = _build(log)
    cache_warnings = [w for w in caught if issubclass(w.category, CacheWarning)]
    assert len(cache_warnings) == 1
    assert "cannot be written" in str(cache_warnings[0].message) and "WDECOMP_CACHE" in str(cache_warnings[0].message)
    assert log == ["trained"]  # trained once, not lost
    assert metrics == {"loss": 0.5} and not from_cache
    torch.manual_seed(0)
    assert torch.allclose(model.weight, nn.Linear(3, 2).weight.double() + 1.0)


def test_unwritable_cache_is_checked_before_the_fit(a_file_as_cache):
    log: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        with pytest.raises(CacheWarning):
            _build(log)
    assert log == []  # the warning came before any training


def test_a_failed_cache_write_warns_and_returns_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("WDECOMP_CACHE", str(tmp_path / "cache"))

    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model_cache, "atomic_write_bytes", disk_full)
    log: list[str] = []
    with pytest.warns(CacheWarning, match="No space left on device"):
        model, metrics, _ = _build(log)
    assert log == ["trained"] and metrics == {"loss": 0.5}
    assert isinstance(model, nn.Linear)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_cache_files_respect_the_umask(umask, tmp_path, monkeypatch):
    monkeypatch.setenv("WDECOMP_CACHE", str(tmp_path / "cache"))
    old = os.umask(umask)
    try:
        _build([])
    finally:
        os.umask(old)
    files = sorted((tmp_path / "cache" / "models").iterdir())
    assert len(files) == 2
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f
    model = nn.Linear(3, 2)
    assert model_cache.load_entry("h8-cache-test", {"width": 3}, model) == {"loss": 0.5}
