"""On-disk cache of trained weights: safetensors plus a JSON sidecar, written atomically.

Layout, under :func:`cache_dir` (``$WDECOMP_CACHE`` or ``~/.cache/wdecomp``)::

    models/<name>-<key>.safetensors   the state dict (tensors only; loading runs no code)
    models/<name>-<key>.json          name, config, code version, SHA-256 of the weights, metrics

``key`` is a SHA-256 of the factory name, every configuration value that affects training and
:data:`CODE_VERSION`; bump the constant whenever a change to training code changes the weights.
An entry is trusted only if the sidecar parses, names the same factory, configuration and code
version, the weights file hashes to the recorded digest and every tensor matches the model's
names, shapes and dtypes. Anything else is reported with a :class:`CacheWarning` and the caller
retrains. Files are written to a temporary file in the same directory, flushed, ``fsync``-ed and
moved into place with ``os.replace``; the sidecar is written last, so a crash leaves either a
complete entry or one that fails verification.

Entries that ship with the package (the trained models of the full demo, under
:func:`shipped_dir`) are read the same way, after the user cache and with the same checks;
``$WDECOMP_SHIPPED=0`` ignores them (then everything is trained).

The SHA-256 guards against **corruption** (a truncated or damaged file, a stale sidecar), not
against **tampering**: whoever can write the cache can write weights and a matching digest
together, and such an entry is trusted. Keep the cache in a folder only you (or your group) can
write; loading never executes code (safetensors and JSON), so a forged entry can give wrong
weights but cannot run anything.

Files get the permissions of any new file (``0o666`` less the umask), so a shared cache under a
group-readable umask is readable by the group. If the cache cannot be written (a read-only
``$WDECOMP_CACHE``, a file where the folder should be), :func:`check_writable` says so with a
:class:`CacheWarning` *before* training, and :func:`save_entry` warns instead of raising: the
trained model is always returned.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from wdecomp.errors import OutputPathError
from wdecomp.io import atomic_write_bytes
from wdecomp.io import check_writable as _check_path

__all__ = [
    "CODE_VERSION",
    "CacheWarning",
    "cache_dir",
    "cache_key",
    "check_writable",
    "entry_paths",
    "load_entry",
    "save_entry",
    "shipped_dir",
    "use_shipped",
]

#: Version of the training code; part of every cache key.
CODE_VERSION = "1"


class CacheWarning(UserWarning):
    """A cache entry existed but could not be trusted; the model is retrained."""


def cache_dir() -> Path:
    """The cache root: ``$WDECOMP_CACHE`` if set, else ``~/.cache/wdecomp``."""
    env = os.environ.get("WDECOMP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "wdecomp"


def _canonical(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)


def cache_key(name: str, config: dict[str, Any]) -> str:
    """Hex digest identifying a trained model: hash of name, config and :data:`CODE_VERSION`."""
    payload = _canonical({"name": name, "config": config, "code_version": CODE_VERSION})
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def shipped_dir() -> Path:
    """The read-only entries that ship inside the package (the full demo's trained models)."""
    return Path(__file__).with_name("shipped")


def use_shipped() -> bool:
    """Whether :func:`load_entry` falls back to :func:`shipped_dir` (``$WDECOMP_SHIPPED`` != ``0``)."""
    return os.environ.get("WDECOMP_SHIPPED", "1") != "0"


def entry_paths(name: str, config: dict[str, Any], root: Path | None = None) -> tuple[Path, Path]:
    """``(weights_path, sidecar_path)`` of the entry for ``name`` and ``config`` under ``root``
    (default: the user cache, ``cache_dir() / "models"``)."""
    stem = f"{name}-{cache_key(name, config)}"
    root = cache_dir() / "models" if root is None else root
    return root / f"{stem}.safetensors", root / f"{stem}.json"


def _unwritable(name: str, reason: object) -> None:
    warnings.warn(f"the model cache {cache_dir()} cannot be written ({reason}); '{name}' is trained but not "
                  "cached: set WDECOMP_CACHE to a writable folder to keep it", CacheWarning, stacklevel=3)


def check_writable(name: str, config: dict[str, Any]) -> bool:
    """Whether the entry for ``name`` and ``config`` could be written; warns (before any training) if not.

    Returns:
        ``True`` if the cache folder can be created and written, else ``False`` after a
        :class:`CacheWarning` naming the folder and what to do.
    """
    try:
        _check_path(entry_paths(name, config)[0])
    except OutputPathError as exc:
        _unwritable(name, exc)
        return False
    return True


def save_entry(
    name: str, config: dict[str, Any], model: nn.Module, metrics: dict[str, Any]
) -> Path | None:
    """Write ``model``'s state dict and a sidecar with ``config`` and ``metrics``.

    A write that fails (read-only folder, full disk) is reported with a :class:`CacheWarning`,
    never raised, so a model that took minutes to train is not lost.

    Returns:
        Path of the weights file, or ``None`` if the entry could not be written.
    """
    try:
        return _save_entry(name, config, model, metrics)
    except OSError as exc:
        _unwritable(name, exc)
        return None


def _save_entry(name: str, config: dict[str, Any], model: nn.Module, metrics: dict[str, Any]) -> Path:
    weights_path, meta_path = entry_paths(name, config)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    blob = st_save(state, metadata={"name": name, "code_version": CODE_VERSION})
    atomic_write_bytes(weights_path, blob)
    sidecar = {
        "name": name,
        "config": config,
        "code_version": CODE_VERSION,
        "key": cache_key(name, config),
        "weights_file": weights_path.name,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "metrics": metrics,
        "torch_version": torch.__version__,
    }
    atomic_write_bytes(meta_path, (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode())
    return weights_path


def load_entry(name: str, config: dict[str, Any], model: nn.Module) -> dict[str, Any] | None:
    """Load a verified entry into ``model`` in place: the user cache first, then the entries
    shipped with the package (:func:`shipped_dir`, unless ``$WDECOMP_SHIPPED=0``).

    Returns:
        The stored metrics if a valid entry was loaded, ``None`` if there is no entry or it
        failed verification (then ``model`` is left untouched and a :class:`CacheWarning`
        says why).
    """
    roots = [None, shipped_dir()] if use_shipped() else [None]
    for root in roots:
        weights_path, meta_path = entry_paths(name, config, root)
        if meta_path.exists() or weights_path.exists():
            metrics = _load_verified(name, config, model, weights_path, meta_path)
            if metrics is not None:
                return metrics
    return None


def _load_verified(
    name: str, config: dict[str, Any], model: nn.Module, weights_path: Path, meta_path: Path
) -> dict[str, Any] | None:
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict):
            raise ValueError("sidecar is not a JSON object")
        if meta.get("name") != name or meta.get("code_version") != CODE_VERSION:
            raise ValueError("sidecar names a different model or code version")
        if _canonical(meta.get("config", {})) != _canonical(config):
            raise ValueError("sidecar configuration differs from the requested one")
        blob = weights_path.read_bytes()
        if hashlib.sha256(blob).hexdigest() != meta.get("weights_sha256"):
            raise ValueError("weights file does not match its recorded SHA-256")
        state = st_load(blob)
        expected = model.state_dict()
        if set(state) != set(expected):
            raise ValueError("tensor names differ from the model's state dict")
        for k, v in expected.items():
            if state[k].shape != v.shape or state[k].dtype != v.dtype:
                raise ValueError(f"tensor {k!r} has shape/dtype {tuple(state[k].shape)}/"
                                 f"{state[k].dtype}, model expects {tuple(v.shape)}/{v.dtype}")
        metrics = meta.get("metrics", {})
    except Exception as exc:  # noqa: BLE001 - any failure means: do not trust, retrain
        warnings.warn(
            f"ignoring cache entry {weights_path.name}: {exc}; retraining", CacheWarning,
            stacklevel=3,
        )
        return None
    model.load_state_dict(state, strict=True)
    return metrics
