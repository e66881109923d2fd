# Adding a subcommand (e.g. `wdecomp sae`): create wdecomp/cli/sae.py with two functions,
#   configure(p: argparse.ArgumentParser) -> None   # call add_common(p) from wdecomp.cli._args, then your
#                                                    # options, each with help= and a checked type= (see _args)
#   run(args: argparse.Namespace) -> None           # check_outputs(args, ...) FIRST, then compute; raise wdecomp errors
# and add one line `"sae": "one-line summary"` to COMMANDS below. Heavy imports stay in your module (loaded only
# when your command runs); add a test in tests/cli/ (exit codes, help for every option is checked for you).
"""The ``wdecomp`` command line.

Usage: wdecomp COMMAND --model NAME [options]; wdecomp COMMAND --help lists a command's options.

A model is a built-in name (modular_addition, toy_superposition, digits_mlp, char_transformer) or
module:factory, a function returning (model, data) or a wdecomp.models.ModelBundle; the current
folder is searched first, as with python -m.

Exit status: 0 success; 1 a wdecomp error (bad input, non-finite values, a mismatched model, an
output that cannot be written); 2 a usage error (an unknown option or a bad option value). Every
error is one line on standard error: "wdecomp COMMAND: error: what is wrong and what to do".
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from wdecomp import __version__
from wdecomp.errors import WdecompError

# command -> one-line summary; the command's code lives in the module wdecomp.cli.<command>
COMMANDS: dict[str, str] = {
    "spectrum": "top or bottom eigenpairs of a curvature operator, with residuals",
    "rank": "numerical rank and nullity (degeneracy) of a curvature operator, per parameter group",
    "basis": "interaction basis (LIB) of chosen layers and the components it gives; saves them",
    "graph": "build, prune, export and plot an interaction graph",
    "ablate": "ablation sweep scored by loss, KL, loss recovered and compute-equivalent",
    "demo": "decompose small models end to end and write a report folder",
    "decompose": "parameter decomposition (SPD) of linear layers into rank-one subcomponents; saves them",
    "scaling": "fit your own scaling law to a sweep; read losses as compute-equivalents with intervals",
    "degrade": "talk to a degraded model: side-by-side generations and where the loss rises, per token class",
}

_DESCRIPTION = __doc__.split("\n", 2)[2]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser.

    Args:
        only: Configure just this command's options (the others get a name and summary only, so
            ``wdecomp --help`` imports nothing heavy); ``None`` configures every command.
    """
    parser = argparse.ArgumentParser(prog="wdecomp", description=_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"wdecomp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of:",
                                title="commands (wdecomp COMMAND --help for its options)")
    for name, summary in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
        if only is None or only == name:
            module = importlib.import_module(f"wdecomp.cli.{name}")
            module.configure(p)
            p.set_defaults(run=module.run)
    return parser


def _command(argv: Sequence[str]) -> str:
    """The command named in ``argv`` (the first word that is not an option), or '' if none."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else ""
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 success, 1 a wdecomp error, 2 a usage error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    parser = build_parser(only=_command(argv))
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the command's own parser, so the message reads "wdecomp COMMAND: error: ..."
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        commands.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.run(args)
    except WdecompError as exc:
        print(f"wdecomp {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"wdecomp {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
