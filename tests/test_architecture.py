"""Dependencies point inward: domain <- application <- infrastructure/api/cli."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "idmanager"


def imports_of(path: Path) -> set[str]:
    """Return the absolute module names a file imports (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                found.add(f"{base}.{node.module}" if node.module else base)
            else:
                found.add(node.module or "")
    return found


def files(layer: str) -> list[Path]:
    return sorted((PACKAGE / layer).rglob("*.py"))


@pytest.mark.parametrize("path", files("domain"), ids=lambda p: p.name)
def test_domain_imports_only_the_standard_library_and_itself(path: Path) -> None:
    for name in imports_of(path):
        top = name.split(".")[0]
        assert name.startswith("idmanager.domain") or top in sys.stdlib_module_names, (
            f"{path.name} imports {name}: the domain must stay pure Python"
        )


@pytest.mark.parametrize("path", files("application"), ids=lambda p: p.name)
def test_application_does_not_import_the_entrypoints(path: Path) -> None:
    for name in imports_of(path):
        assert not name.startswith(("idmanager.api", "idmanager.cli", "fastapi", "typer")), (
            f"{path.name} imports {name}: the application must not know its callers"
        )


@pytest.mark.parametrize("path", files("infrastructure"), ids=lambda p: p.name)
def test_infrastructure_does_not_import_application_or_entrypoints(path: Path) -> None:
    for name in imports_of(path):
        assert not name.startswith(
            ("idmanager.application", "idmanager.api", "idmanager.cli", "fastapi")
        ), f"{path.name} imports {name}"
