"""``wdecomp spectrum``: top or bottom eigenpairs of a curvature operator, with residuals."""

from __future__ import annotations

import argparse

from wdecomp.cli._args import add_common, name_list, positive_float, positive_int
from wdecomp.cli._common import check_outputs, emit, load_model, wrote
from wdecomp.cli._operator import OPERATORS, operator
from wdecomp.errors import ArgumentError
from wdecomp.spectral import eigh, slq_density


def configure(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--operator", default="hessian", choices=OPERATORS, help="curvature operator (default hessian)")
    p.add_argument("--params", type=name_list, default=None, metavar="A,B",
                   help="comma-separated parameter globs or module names (default: all parameters)")
    p.add_argument("--k", type=positive_int, default=10, help="number of eigenpairs (default 10)")
    p.add_argument("--which", default="largest", choices=["largest", "smallest", "magnitude"],
                   help="which end of the spectrum (default largest)")
    p.add_argument("--tol", type=positive_float, default=None,
                   help="relative residual tolerance ||Hv - lv|| / ||H|| (default: the solver's, from the dtype)")
    p.add_argument("--block-size", type=positive_int, default=None,
                   help="Lanczos block size (default min(k, 4)); at least the largest multiplicity expected")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="recompute each residual from a product (--no-verify: Ritz estimates, k fewer products)")
    p.add_argument("--density", metavar="PNG", default=None, help="also plot the spectral density (SLQ) to PNG")


def run(args: argparse.Namespace) -> None:
    check_outputs(args, files=("density",))
    loaded = load_model(args.model, loss=args.loss, max_batches=args.max_batches, progress=args.progress)
    op = operator(loaded, args.operator, args.params)
    if args.k > op.shape[0]:
        raise ArgumentError(f"--k {args.k} asks for more eigenpairs than the operator's size p = {op.shape[0]}; "
                            f"give --k {op.shape[0]} or fewer")
    result = eigh(op, k=args.k, which=args.which, tol=args.tol, block_size=args.block_size, verify=args.verify,
                  seed=args.seed, progress=args.progress)
    emit(result, args)
    if args.density:
        slq_density(op, seed=args.seed).plot(args.density)
        wrote(args.density)
