"""``wdecomp demo``: decompose small models end to end and write a report folder."""

from __future__ import annotations

import argparse
import sys

from wdecomp.cli._args import add_common
from wdecomp.cli._common import check_outputs
from wdecomp.demo import run_demo


def configure(p: argparse.ArgumentParser) -> None:
    add_common(p, model=False)
    p.add_argument("--out", default="wdecomp-report", metavar="FOLDER",
                   help="report folder, created if missing (default wdecomp-report)")
    p.add_argument("--quick", action="store_true",
                   help="small settings (well under a minute; for CI and a first look)")


def run(args: argparse.Namespace) -> None:
    check_outputs(args, folders=("out",))
    report = run_demo(args.out, quick=args.quick, progress=args.progress)
    print(report.summary())
    print(f"\nreport written to {report.folder}", file=sys.stderr)
