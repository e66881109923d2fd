"""Argument types and the options every subcommand shares; checked by argparse, so a bad value is a
usage error (``wdecomp X: error: argument --k: ...``, exit 2) before anything is computed."""

from __future__ import annotations

import argparse
import math

BUILTIN_LOSSES = ("cross_entropy", "mse")


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} is too small: give an integer >= {low}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be > 0")
    return value


def fraction(text: str) -> float:
    """A finite number in (0, 1]."""
    value = _finite(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value} is not a fraction in (0, 1]")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _number(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number >= 0")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None


def _finite(text: str) -> float:
    value = _number(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"'{text}' is not a finite number")
    return value


def int_list(text: str) -> list[int]:
    """Comma-separated integers >= 0, e.g. ``0,2,4``."""
    items = [t.strip() for t in text.split(",")]
    if not items or any(not t for t in items):
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers (e.g. 0,2,4)")
    return [_int_at_least(t, 0) for t in items]


def name_list(text: str) -> list[str]:
    """Comma-separated names (module names, hook points, parameter globs), none empty."""
    items = [t.strip() for t in text.split(",")]
    if any(not t for t in items):
        raise argparse.ArgumentTypeError(f"'{text}' has an empty name: write names separated by single commas")
    return items


def add_common(parser: argparse.ArgumentParser, *, model: bool = True) -> None:
    """The options the subcommands share: model selection, JSON output, seed and progress
    (``model=False``: progress only, for commands that choose their own models)."""
    if model:
        parser.add_argument("--model", required=True, metavar="NAME",
                            help="a built-in model (modular_addition, toy_superposition, digits_mlp, "
                                 "char_transformer) or module:factory, a function in an importable module "
                                 "(the current folder is searched first) returning (model, data)")
        parser.add_argument("--loss", default=None, choices=BUILTIN_LOSSES,
                            help="the loss (default: the model's own, else cross_entropy)")
        parser.add_argument("--max-batches", type=positive_int, default=None, metavar="N",
                            help="use only the first N batches of the data (default: all)")
        parser.add_argument("--json", metavar="FILE", default=None,
                            help="also write the result as JSON to FILE ('-': JSON on standard output only)")
        parser.add_argument("--seed", type=int, default=0,
                            help="random seed for probes, start vectors and sampling (default 0)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show progress (default: bars on a terminal, a line per stage otherwise)")

