"""What every subcommand shares: resolving ``--model`` into model, data and loss, checking output
paths before the computation, and printing/writing the result."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wdecomp import batch, models
from wdecomp.errors import DataError, SelectionError, WdecompError
from wdecomp.io import atomic_write_text, check_writable


@dataclass
class LoadedModel:
    """What a subcommand needs: the model, its data, the loss and its hook points."""

    model: Any
    data: list
    loss: Any
    hook_points: tuple[str, ...]
    name: str
    bundle: Any = None


def _factory(spec: str) -> Any:
    """Import ``module:factory`` with the current folder on the import path (as ``python -m`` has)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr or ":" in attr:
        raise SelectionError(f"'{spec}' is not module:factory; write e.g. mymodels:make_model "
                             "(mymodels.py in the current folder or an installed module)")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SelectionError(f"cannot load model factory '{spec}': {exc} (searched the current folder "
                             f"{os.getcwd()} and the installed packages)") from exc
    factory = getattr(module, attr, None)
    if factory is None:
        raise SelectionError(f"cannot load model factory '{spec}': module '{module_name}' has no '{attr}'")
    if not callable(factory):
        raise SelectionError(f"'{spec}' is a {type(factory).__name__}, not a function: the factory must be a "
                             "function returning (model, data)")
    return factory


def load_model(spec: str, *, loss: str | None = None, max_batches: int | None = None, dtype: str = "float64",
               progress: bool | None = None) -> LoadedModel:
    """Resolve ``spec`` (a built-in name or ``module:factory``) into model, data and loss.

    Raises:
        SelectionError: the name cannot be resolved or the factory returns something else.
    """
    if ":" in spec:
        factory = _factory(spec)
        try:
            produced = factory()
        except WdecompError:
            raise
        except Exception as exc:  # the user's own code: say whose it is, keep the cause chained
            raise SelectionError(f"model factory '{spec}' raised {type(exc).__name__}: {exc}") from exc
    else:
        if spec not in models.available():
            raise SelectionError(f"unknown model '{spec}'; built-in models: {', '.join(models.available())}, "
                                 "or name a factory as module:function")
        produced = models.load(spec, progress=progress)
    bundle = produced if hasattr(produced, "loss_name") else None
    if not isinstance(produced, (tuple, list)) or len(produced) < 2:
        raise SelectionError(f"model factory '{spec}' must return (model, data), got {type(produced).__name__}")
    model, data = produced[0], produced[1]
    if not isinstance(model, torch.nn.Module):
        raise SelectionError(f"model factory '{spec}' returned a {type(model).__name__} as its model; "
                             "it must return (torch.nn.Module, data)")
    if next(model.parameters(), None) is None:
        raise SelectionError(f"the model from '{spec}' has no parameters")
    model = model.to(getattr(torch, dtype)).eval()
    data = list(batch.as_batches(data, what=f"the data of '{spec}'"))
    if not data:
        raise DataError(f"the model from '{spec}' came with no data batches")
    if max_batches is not None:
        data = data[:max_batches]
    device = next(model.parameters()).device
    data = [batch.to(b, device, getattr(torch, dtype)) for b in data]
    loss_spec: Any = loss
    if loss_spec is None:
        if bundle is not None:
            loss_spec = bundle.loss_name if bundle.loss_name in ("cross_entropy", "mse") else bundle.loss
        elif len(produced) >= 3:
            loss_spec = produced[2]
        else:
            loss_spec = "cross_entropy"
    points = tuple(getattr(bundle, "hook_points", ()) or ())
    return LoadedModel(model, data, loss_spec, points, spec, bundle)


def check_outputs(args: argparse.Namespace, files: Sequence[str] = (), folders: Sequence[str] = ()) -> None:
    """Check every output path named in ``args`` before anything is computed.

    Raises:
        OutputPathError: a path is a folder where a file is expected, or cannot be written.
    """
    for name in ("json", *files):
        value = getattr(args, name, None)
        if value and value != "-":
            check_writable(value)
    for name in folders:
        value = getattr(args, name, None)
        if value:
            check_writable(value, folder=True)


def emit(result: Any, args: argparse.Namespace) -> None:
    """Print ``result``; with ``--json`` also write it as JSON (``-``: JSON on standard output only)."""
    if args.json:
        payload = result.to_dict() if hasattr(result, "to_dict") else result
        text = json.dumps(payload, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            atomic_write_text(args.json, text)
            print(f"wrote {args.json}", file=sys.stderr)
    if not args.json or args.json != "-":
        print(result)


def wrote(path: str | Path) -> None:
    """Tell the user (on standard error) that a file was written."""
    print(f"wrote {path}", file=sys.stderr)


def layers(loaded: LoadedModel, names: Sequence[str] | None) -> list[str]:
    """The hook points to read: ``--layers`` (checked against the model) or the model's own.

    Raises:
        SelectionError: a name is not a module of the model, or none are given and the model names none.
    """
    if not names:
        if not loaded.hook_points:
            raise SelectionError("this model names no hook points: pass --layers a,b,c (module names in forward "
                                 "order)")
        return list(loaded.hook_points)
    modules = dict(loaded.model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        known = [n for n in modules if n][:12]
        raise SelectionError(f"--layers names no module '{missing[0]}' of this model; its modules include: "
                             f"{', '.join(known)}")
    return list(names)
