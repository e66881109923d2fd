"""``docs/refusals.md`` ("what wdecomp refuses and why") is generated from the tests' ``refuses``
markers and must match them: a new refusal test without a regenerated page fails here."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docs" / "gen_refusals.py"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_refusals", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_refusals"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_refusals_table_is_current():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:] + "\nregenerate with: python docs/gen_refusals.py"


def test_render_groups_by_area_and_merges_cases():
    gen = _generator()
    text = gen.render([
        ("tests/cli/test_a.py::test_x[1]", "CLI `--k 0`", "give k >= 1"),
        ("tests/cli/test_a.py::test_x[2]", "CLI `--k 0`", "give k >= 1"),
        ("tests/io/test_b.py::test_y", "a | pipe", "why"),
    ])
    assert "2 kinds of bad input, checked by 3 test cases." in text
    assert text.index("## cli") < text.index("## io")
    assert "| CLI `--k 0` | give k >= 1 | `tests/cli/test_a.py::test_x[1]` (+1 cases) |" in text
    assert "| a \\| pipe | why | `tests/io/test_b.py::test_y` |" in text


def test_the_marker_is_registered():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"refuses(what, why)' in text
