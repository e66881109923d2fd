"""Write ``docs/refusals.md``, "What wdecomp refuses and why", from the test suite.

Every test that feeds bad input and asserts a wdecomp error carries
``@pytest.mark.refuses("<the bad input>", "<why, and what to do>")``. This script collects the
tests (``pytest --collect-only``: nothing runs), reads those markers and writes one table per
part of the package (the test tree mirrors it), each row naming the test that proves it.

    python docs/gen_refusals.py            # rewrite docs/refusals.md
    python docs/gen_refusals.py --check    # exit 1 if docs/refusals.md is stale (used by tests/docs)

It does not import wdecomp itself; pytest imports the test modules while collecting.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "refusals.md"

HEADER = """# What wdecomp refuses and why

wdecomp is never silently wrong: bad input raises a typed error from `wdecomp.errors` that names the
problem and says what to do (the command line prints it as `wdecomp COMMAND: error: ...` and exits
1, or 2 for a bad option). Each row below is a test that feeds the bad input and checks the error.

This page is generated from the tests' `@pytest.mark.refuses(what, why)` markers by
`python docs/gen_refusals.py`; `tests/docs/test_refusals_table.py` fails when it is stale.
"""


@dataclass
class Row:
    what: str
    why: str
    tests: list[str] = field(default_factory=list)


class _Collector:
    """pytest plugin: remember every collected item's ``refuses`` markers."""

    def __init__(self) -> None:
        self.found: list[tuple[str, str, str]] = []

    def pytest_collection_modifyitems(self, items) -> None:
        for item in items:
            for mark in item.iter_markers("refuses"):
                what, why = (list(mark.args) + [mark.kwargs.get("what", ""), mark.kwargs.get("why", "")])[:2] \
                    if mark.args else (mark.kwargs.get("what", ""), mark.kwargs.get("why", ""))
                self.found.append((item.nodeid, str(what), str(why)))


def collect(tests: Path = ROOT / "tests") -> list[tuple[str, str, str]]:
    """``(test id, what, why)`` for every test marked ``refuses``, in collection order."""
    collector = _Collector()
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT), str(tests)],
                           plugins=[collector])
    if code not in (0, 5):  # 5: no tests collected
        raise SystemExit(f"test collection failed (pytest exit {code}):\n{quiet.getvalue()[-4000:]}")
    return collector.found


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render(found: list[tuple[str, str, str]]) -> str:
    """The Markdown page: one section per test folder, one row per distinct (what, why)."""
    sections: dict[str, dict[tuple[str, str], Row]] = {}
    for nodeid, what, why in found:
        path = nodeid.split("::", 1)[0]
        parts = Path(path).parts
        area = parts[1] if len(parts) > 2 and parts[0] == "tests" else "general"
        rows = sections.setdefault(area, {})
        row = rows.setdefault((what, why), Row(what, why))
        row.tests.append(nodeid)
    total = sum(len(r.tests) for rows in sections.values() for r in rows.values())
    out = [HEADER, f"{sum(len(rows) for rows in sections.values())} kinds of bad input, checked by {total} "
           "test cases.\n"]
    for area in sorted(sections):
        out += [f"## {area}\n", "| bad input | why wdecomp refuses it, and what to do | proved by |",
                "|---|---|---|"]
        for row in sections[area].values():
            first = row.tests[0]
            more = f" (+{len(row.tests) - 1} cases)" if len(row.tests) > 1 else ""
            out.append(f"| {_cell(row.what)} | {_cell(row.why)} | `{_cell(first)}`{more} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed page is stale")
    args = parser.parse_args(argv)
    text = render(collect())
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET.relative_to(ROOT)} is stale: run python docs/gen_refusals.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
