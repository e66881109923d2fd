"""``wdecomp rank``: numerical rank and nullity (degeneracy), per parameter group."""

from __future__ import annotations

import argparse

from wdecomp.cli._args import add_common, name_list, positive_float
from wdecomp.cli._common import check_outputs, emit, load_model
from wdecomp.cli._operator import OPERATORS, operator
from wdecomp.spectral import rank


def configure(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--operator", default="ggn", choices=OPERATORS, help="curvature operator (default ggn)")
    p.add_argument("--params", type=name_list, default=None, metavar="A,B",
                   help="comma-separated parameter globs or module names (default: all parameters)")
    p.add_argument("--method", default="auto", choices=["auto", "dense", "gram", "density"],
                   help="how the rank is computed (default auto: exact when it fits in memory)")
    p.add_argument("--rtol", type=positive_float, default=None,
                   help="relative threshold: eigenvalues above rtol * largest count (default: the method's)")
    p.add_argument("--groups", default="module", choices=["parameter", "module", "none"],
                   help="also report the rank per parameter or per module (default module; none: total only)")


def run(args: argparse.Namespace) -> None:
    check_outputs(args)
    loaded = load_model(args.model, loss=args.loss, max_batches=args.max_batches, progress=args.progress)
    op = operator(loaded, args.operator, args.params)
    groups = None if args.groups == "none" else args.groups
    emit(rank(op, method=args.method, rtol=args.rtol, groups=groups, seed=args.seed), args)
