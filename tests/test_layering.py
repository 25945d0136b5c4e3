"""Data flows one way: stats -> nn/optim/data/init -> monitor -> store -> report/cli.

Each package may import only the packages listed for it (what lies below it); a new edge
must be added here on purpose. The store depends on nothing of ours; the monitor writes to
it; the report reads the store (and tells the monitor's findings); the CLI sits on top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "vitalstats"

ALLOWED: dict[str, set[str]] = {
    "stats": set(),
    "data": {"stats"},
    "nn": {"stats"},
    "optim": {"stats"},
    "init": {"stats", "nn"},
    "store": set(),
    "monitor": {"stats", "nn", "optim", "store"},
    "report": {"stats", "monitor", "store"},
    "integrations": {"monitor", "store", "report"},
    "doctor": {"stats", "data", "nn", "init", "optim", "monitor", "store", "report"},
    "commands": {"stats", "data", "nn", "init", "optim", "monitor", "store", "report", "doctor"},
}


def _imported_packages(package: str) -> dict[str, set[Path]]:
    found: dict[str, set[Path]] = {}
    for path in (SOURCE / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "vitalstats" and len(parts) > 1 and parts[1] != package:
                    found.setdefault(parts[1], set()).add(path.relative_to(SOURCE))
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_lies_below_it(package):
    imported = _imported_packages(package)
    upward = {name: sorted(map(str, files)) for name, files in imported.items()
              if name not in ALLOWED[package] and name != "_version"}  # fmt: skip
    assert not upward, f"{package} imports {upward}"


def test_every_package_is_listed():
    packages = {p.name for p in SOURCE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(ALLOWED)
