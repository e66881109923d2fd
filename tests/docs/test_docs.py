"""The documentation: the site builds in strict mode, and every docstring example runs."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import wdecomp

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(m.name for m in pkgutil.walk_packages(wdecomp.__path__, "wdecomp.") if m.name != "wdecomp.__main__")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def test_docs_site_builds_strict(tmp_path):
    mkdocs = shutil.which("mkdocs")
    assert mkdocs is not None, "mkdocs is part of the test extra: pip install -e '.[test]'"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "api" / "curvature" / "index.html").exists()
    # every API page's ``::: module`` lines became rendered reference entries (mkdocstrings)
    for page in sorted((ROOT / "docs" / "api").glob("*.md")):
        html = (tmp_path / "site" / "api" / page.stem / "index.html").read_text()
        assert "doc doc-object" in html and ":::" not in html, f"{page.name} did not render its API entries"
    assert "What wdecomp refuses and why" in (tmp_path / "site" / "refusals" / "index.html").read_text()
    html = (tmp_path / "site" / "concepts" / "compute-equivalent" / "index.html").read_text()
    assert "loss recovered" in html


def test_readme_says_how_to_build_the_docs_and_names_every_command():
    readme = (ROOT / "README.md").read_text()
    assert "mkdocs serve" in readme and "mkdocs build" in readme
    from wdecomp.cli import COMMANDS

    for command in COMMANDS:
        assert f"wdecomp {command}" in readme, command
    assert "--quick" in readme and "WDECOMP_CACHE" in readme
