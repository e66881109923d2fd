"""The layer order in ``pyproject.toml`` ([tool.importlinter]) holds, and an upward import breaks it.

``docs/architecture.md`` draws the same order; this test is what enforces it in CI.
"""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _lint(package_parent: Path) -> subprocess.CompletedProcess:
    """Run import-linter with the project's contracts on the ``wdecomp`` found in ``package_parent``."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from importlinter.cli import lint_imports;"
        "sys.exit(lint_imports(config_filename=sys.argv[2]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(package_parent), str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        cwd=package_parent,
        timeout=300,
    )


def test_layer_contract_is_kept():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    # errors is the bottom layer: importing the CLI from it is the most upward import there is.
    shutil.copytree(ROOT / "wdecomp", tmp_path / "wdecomp", ignore=shutil.ignore_patterns("__pycache__"))
    errors = tmp_path / "wdecomp" / "errors.py"
    errors.write_text(errors.read_text() + "\n\ndef _upward():\n    from wdecomp import cli  # noqa: F401\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout
    assert "wdecomp.errors -> wdecomp.cli" in result.stdout
