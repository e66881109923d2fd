"""``wdecomp ablate``: an ablation sweep scored by loss, KL, loss recovered and compute-equivalent."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from wdecomp import scaling
from wdecomp.ablation import METHODS, ablation_sweep
from wdecomp.bases import interaction_basis
from wdecomp.cli._args import add_common, int_list, name_list, positive_float
from wdecomp.cli._common import check_outputs, emit, layers, load_model, wrote
from wdecomp.cli.basis import BASES, LAYERS_HELP, add_variant_option
from wdecomp.cli.scaling import LAWS_HELP, add_original_model_options, load_laws
from wdecomp.errors import DataError, SelectionError, WdecompError

NAMED_LAWS = {"chinchilla": scaling.CHINCHILLA, "epoch": scaling.EPOCH, "kaplan": scaling.KAPLAN}


def configure(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--layers", type=name_list, default=None, metavar="A,B,C", help=LAYERS_HELP)
    p.add_argument("--at", default=None, metavar="LAYER",
                   help="the layer (one of --layers) whose components are ablated (default: the middle one)")
    p.add_argument("--basis", default="lib", choices=BASES, help="basis whose components are ablated (default lib)")
    add_variant_option(p)
    p.add_argument("--method", default="zero", choices=list(METHODS),
                   help="what an ablated component is replaced by (default zero)")
    p.add_argument("--order", default="least_important", choices=["least_important", "most_important"],
                   help="which components go first (default least_important)")
    p.add_argument("--levels", type=int_list, default=None, metavar="0,2,4",
                   help="comma-separated numbers of components to ablate (default: 0%%, 10%%, ..., 100%%)")
    p.add_argument("--law", default=None, metavar="LAW",
                   help="scaling law for the compute-equivalent: chinchilla, epoch, kaplan or a JSON file of a "
                        "fitted law (default: none)")
    p.add_argument("--tokens", type=positive_float, default=None,
                   help="training tokens D, for the parameter-equivalent (default: not reported)")
    p.add_argument("--laws", type=name_list, default=None, metavar="LAWS",
                   help=LAWS_HELP + "; each gets its own rows with intervals (a 'which law' column)")
    add_original_model_options(p)
    p.add_argument("--plot", default=None, metavar="FILE", help="also plot the sweep to FILE (.png, .svg)")


def load_law(name: str | None) -> Any:
    """A named scaling law or one read from a JSON file.

    Raises:
        SelectionError: neither a known name nor an existing file.
        DataError: the file is not a JSON scaling law.
    """
    if name is None:
        return None
    if name.lower() in NAMED_LAWS:
        return NAMED_LAWS[name.lower()]
    path = Path(name)
    if not path.is_file():
        raise SelectionError(f"unknown scaling law '{name}': use chinchilla, epoch, kaplan or a JSON file of a "
                             "fitted law")
    try:
        return scaling.law_from_dict(json.loads(path.read_text(encoding="utf-8")))
    except WdecompError:
        raise
    except (ValueError, KeyError, TypeError, RecursionError) as exc:  # bad JSON, missing key, wrong type
        raise DataError(f"'{name}' is not a scaling law file ({type(exc).__name__}: {exc}); write it with "
                        "wdecomp.scaling (law.to_dict()) or name a built-in law") from exc


def run(args: argparse.Namespace) -> None:
    check_outputs(args, files=("plot",))
    law = load_law(args.law)
    laws = load_laws(args.laws) or None
    if args.at is not None and args.layers and args.at not in args.layers:
        raise SelectionError(f"--at '{args.at}' is not one of --layers {','.join(args.layers)}; pick one of them")
    loaded = load_model(args.model, loss=args.loss, max_batches=args.max_batches, progress=args.progress)
    names = layers(loaded, args.layers)
    if args.at is not None and args.at not in names:
        raise SelectionError(f"--at '{args.at}' is not one of the layers {', '.join(names)}; pick one of them")
    basis = interaction_basis(loaded.model, loaded.data, layers=names, method=args.basis, variant=args.variant)
    target = basis[args.at or names[len(names) // 2]]
    n = target.size
    if args.levels is not None and max(args.levels) > n:
        raise SelectionError(f"--levels asks to ablate {max(args.levels)} components, but the layer has {n}")
    levels = args.levels if args.levels is not None else sorted({round(i * n / 10) for i in range(11)})
    result = ablation_sweep(loaded.model, target, loaded.data, k=levels, order=args.order, method=args.method,
                            loss=loaded.loss, law=law, tokens=args.tokens, progress=args.progress, laws=laws,
                            training_compute=args.training_compute, n_params=args.n_params,
                            trivial_loss=args.trivial_loss)
    if args.plot:
        result.plot(args.plot)
        wrote(args.plot)
    emit(result, args)
