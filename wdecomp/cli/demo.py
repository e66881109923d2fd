"""``wdecomp demo``: decompose small models end to end and write a report folder."""

from __future__ import annotations

import argparse
import os
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
    p.add_argument("--train", action="store_true",
                   help="train the full demo's models from scratch instead of loading the trained copies that "
                        "ship with the package (same as WDECOMP_SHIPPED=0; about 2 more minutes on 2 idle cores)")


def run(args: argparse.Namespace) -> None:
    check_outputs(args, folders=("out",))
    if args.train:
        os.environ["WDECOMP_SHIPPED"] = "0"
    report = run_demo(args.out, quick=args.quick, progress=args.progress)
    print(report.summary())
    print(f"\nreport written to {report.folder}", file=sys.stderr)
