"""The DESIGN layer order is a contract (import-linter, `[tool.importlinter]`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command;"
        " sys.exit(lint_imports_command())", "--no-cache"]


def lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(LINT, cwd=cwd, capture_output=True, text=True, timeout=300,
                          check=False, env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"})


def test_the_layer_contracts_hold():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


def test_a_backwards_import_breaks_them(tmp_path):
    for name in ("p2pgate", "sync"):
        shutil.copytree(ROOT / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    database = tmp_path / "p2pgate" / "storage" / "database.py"
    database.write_text(database.read_text() + "\nfrom p2pgate.api import errors  # upward\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert "p2pgate.storage is not allowed to import p2pgate.api" in result.stdout
