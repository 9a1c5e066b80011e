"""Dependencies point inward, as the layout claims.

- ``domain``: the standard library only.
- ``application``: the standard library and ``domain``; no SQLAlchemy, no web, no CLI.
- ``infrastructure``: SQLAlchemy, Alembic and ``domain``; never ``application`` or an edge.
- ``problems`` (the error registry): ``domain`` only.
- ``client``: ``httpx``, ``domain``, ``application.results`` and ``problems``; no SQLAlchemy.
- ``api`` and ``cli``: anything inside, but not each other (``serve`` starts the API lazily).

Every import is checked, including those inside functions.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "idmanager"
STDLIB = sys.stdlib_module_names


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
    target = PACKAGE / layer
    return sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]


def outside(path: Path, allowed: tuple[str, ...]) -> list[str]:
    """Return the imports of ``path`` that are neither the standard library nor allowed."""
    return sorted(
        name
        for name in imports_of(path)
        if name.split(".")[0] not in STDLIB and not name.startswith(allowed)
    )


@pytest.mark.parametrize("path", files("domain"), ids=lambda p: p.name)
def test_the_domain_is_pure_python(path: Path) -> None:
    assert outside(path, ("idmanager.domain",)) == []


@pytest.mark.parametrize("path", files("application"), ids=lambda p: p.name)
def test_the_application_knows_only_the_domain(path: Path) -> None:
    assert outside(path, ("idmanager.domain", "idmanager.application")) == []


@pytest.mark.parametrize("path", files("infrastructure"), ids=lambda p: p.name)
def test_infrastructure_implements_the_domain_without_knowing_its_callers(path: Path) -> None:
    allowed = ("idmanager.domain", "idmanager.infrastructure", "sqlalchemy", "alembic")
    assert outside(path, allowed) == []


def test_the_error_registry_knows_only_the_domain() -> None:
    assert outside(PACKAGE / "problems.py", ("idmanager.domain",)) == []


def test_the_client_needs_httpx_and_no_database() -> None:
    allowed = (
        "httpx",
        "idmanager.domain",
        "idmanager.application.results",
        "idmanager.problems",
    )
    assert outside(PACKAGE / "client.py", allowed) == []


@pytest.mark.parametrize("path", files("api"), ids=lambda p: p.name)
def test_the_api_does_not_use_the_command_line(path: Path) -> None:
    assert not [name for name in imports_of(path) if name.startswith("idmanager.cli")]


@pytest.mark.parametrize("path", files("cli"), ids=lambda p: p.name)
def test_the_command_line_reaches_the_api_only_to_serve_it(path: Path) -> None:
    found = [name for name in imports_of(path) if name.startswith(("idmanager.api", "fastapi"))]
    assert found == (["idmanager.api.serving"] if path.name == "serve.py" else [])


def test_importing_the_client_loads_no_sqlalchemy() -> None:
    code = (
        "import sys, idmanager.client; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('sqlalchemy', 'asyncpg', 'psycopg', 'pymysql', 'aiosqlite', 'fastapi')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
