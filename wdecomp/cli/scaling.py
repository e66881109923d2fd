"""``wdecomp scaling``: fit a model family's own scaling law; read losses as compute-equivalents.

``wdecomp scaling fit SWEEP.json`` fits the Chinchilla form to a sweep of sizes (or, with
``--checkpoints``, the compute form to one run's checkpoints), refits with a constrained form when
the fit is degenerate, prints the fit report, and with ``--out FOLDER`` writes ``law.json``
(usable as ``--laws FOLDER/law.json``), ``report.txt`` and ``fit.png``.

``wdecomp scaling equivalents --reference L --losses L1,L2 --laws chinchilla,epoch,law.json``
prints each loss's frontier fraction and training fraction (the fraction of the model's own
training compute, Gao et al. 2024's quantity) with intervals, per law.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from wdecomp import scaling
from wdecomp.cli._args import add_common, name_list, nonnegative_float, nonnegative_int, positive_float
from wdecomp.cli._common import check_outputs, emit, wrote
from wdecomp.errors import DataError, SelectionError

LAWS_HELP = ("comma-separated scaling laws: chinchilla, chinchilla-tex, epoch, kaplan, or JSON files of fitted "
             "laws (wdecomp scaling fit --out)")


def _float_list(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of numbers") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"'{text}' has a value that is not a finite number")
    return values


#: Options an equivalents table needs of the original model besides its training tokens, each a
#: positive number (default: not given): (option, metavar, help).
ORIGINAL_MODEL_OPTIONS = (
    ("--training-compute", "FLOPS", "the original model's training compute: adds the fraction of it (Gao et al. 2024)"),
    ("--n-params", "N", "the original model's parameters; with --tokens the training compute is 6ND"),
    ("--trivial-loss", "L0", "loss of a trivial model (log vocabulary size, or the unigram entropy): levels at or "
                             "above it are flagged"),
)


def add_original_model_options(p: argparse.ArgumentParser) -> None:
    """``--training-compute``, ``--n-params`` and ``--trivial-loss`` (:data:`ORIGINAL_MODEL_OPTIONS`)."""
    for option, metavar, text in ORIGINAL_MODEL_OPTIONS:
        p.add_argument(option, type=positive_float, default=None, metavar=metavar, help=text)


def configure(p: argparse.ArgumentParser) -> None:
    add_common(p, model=False)
    sub = p.add_subparsers(dest="scaling_command", required=True, metavar="ACTION",
                           help="fit: fit your own law to a sweep; equivalents: read losses off laws")
    f = sub.add_parser("fit", help="fit a scaling law to a sweep (or one run's checkpoints)",
                       description="Fit a scaling law to SWEEP.json, with bootstrap intervals and diagnostics.")
    f.add_argument("sweep", metavar="SWEEP.json",
                   help="JSON list of points with N, D, loss (or n_params, n_tokens, loss; or C, loss)")
    f.add_argument("--checkpoints", action="store_true",
                   help="the points are one run's (C, loss) checkpoints: fit L(C) = E + A/C^alpha")
    f.add_argument("--fix-e", type=nonnegative_float, default=None, metavar="E",
                   help="hold the irreducible loss E at this value (0 drops the term)")
    f.add_argument("--bootstrap", choices=["cases", "residuals"], default="cases",
                   help="resample points (cases, default) or log-residuals at fixed (N, D) (small grids)")
    f.add_argument("--n-bootstrap", type=nonnegative_int, default=100, metavar="B",
                   help="bootstrap refits for the intervals (default 100; 0: none)")
    f.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    f.add_argument("--loss-unit", default="nats/token", choices=list(scaling.LOSS_UNITS),
                   help="unit of the losses in the file (default nats/token)")
    f.add_argument("--name", default="own", help="name of the fitted law, as tables show it (default own)")
    f.add_argument("--no-guide", action="store_true",
                   help="do not refit with the suggested constrained form when the fit is degenerate")
    f.add_argument("--strict", action="store_true", help="exit with an error if the final fit is degenerate")
    f.add_argument("--out", default=None, metavar="FOLDER",
                   help="write law.json, report.txt and fit.png (points, fitted frontier with band, residuals)")
    f.add_argument("--json", default=None, metavar="FILE", help="also write the fit as JSON to FILE ('-': stdout)")
    e = sub.add_parser("equivalents", help="frontier and training fractions of losses, per law, with intervals",
                       description="Read losses off scaling laws as compute-equivalents, with intervals.")
    e.add_argument("--reference", type=positive_float, required=True, metavar="L",
                   help="the original model's loss")
    e.add_argument("--losses", type=_float_list, required=True, metavar="L1,L2",
                   help="comma-separated degraded losses")
    e.add_argument("--laws", type=name_list, default=["chinchilla", "epoch", "kaplan"], metavar="LAWS",
                   help=LAWS_HELP + " (default chinchilla,epoch,kaplan)")
    e.add_argument("--tokens", type=positive_float, default=None, metavar="D",
                   help="the original model's training tokens, for the parameter fraction")
    add_original_model_options(e)
    e.add_argument("--same-data", action="store_true",
                   help="the losses are measured on the published laws' own data and tokenizer")
    e.add_argument("--json", default=None, metavar="FILE", help="also write the table as JSON to FILE ('-': stdout)")


def load_laws(names: list[str] | None) -> list[Any]:
    """Law specifications for :func:`wdecomp.scaling.equivalents_table`: names kept, files loaded.

    Raises:
        SelectionError: neither a published name nor an existing file.
        DataError: a file that is not a scaling law or fit.
    """
    if not names:
        return []
    out: list[Any] = []
    for name in names:
        if name.lower() in scaling.PUBLISHED:
            out.append(name.lower())
            continue
        try:
            text = open(name, encoding="utf-8").read()
        except FileNotFoundError:
            raise SelectionError(f"unknown scaling law '{name}': use {', '.join(sorted(scaling.PUBLISHED))} or a "
                                 "JSON file of a fitted law") from None
        except OSError as exc:
            raise DataError(f"cannot read the law file '{name}': {exc}") from exc
        try:
            d = json.loads(text)
            out.append(scaling.ScalingFit.from_dict(d) if "estimates" in d else scaling.law_from_dict(d))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise DataError(f"'{name}' is not a scaling law file ({type(exc).__name__}: {exc}); write it with "
                            "wdecomp scaling fit --out, or name a published law") from exc
    return out


def run(args: argparse.Namespace) -> None:
    if args.scaling_command == "fit":
        check_outputs(args, folders=("out",) if args.out else ())
        kwargs = dict(n_bootstrap=args.n_bootstrap, bootstrap=args.bootstrap, seed=args.seed, fix_E=args.fix_e,
                      loss_unit=args.loss_unit, name=args.name)
        result = scaling.guided_fit(args.sweep, checkpoints=args.checkpoints,
                                    max_attempts=1 if args.no_guide else 3, **kwargs)
        if args.strict and result.fit.degenerate:
            raise DataError("the fit is degenerate: " + "; ".join(result.fit.diagnostics))
        if args.out:
            for path in scaling.write_fit_report(result, args.out).values():
                wrote(path)
        emit(result, args)
        return
    check_outputs(args)
    table = scaling.equivalents_table(args.losses, args.reference, load_laws(args.laws),
                                      training_compute=args.training_compute, N=args.n_params, D=args.tokens,
                                      trivial_loss=args.trivial_loss, same_data=args.same_data)
    emit(table, args)
