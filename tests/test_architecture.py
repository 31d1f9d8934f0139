"""The layers of docs/ARCHITECTURE.md, checked on the source: an import across a forbidden arrow fails here.

Every ``import`` / ``from ... import`` of every module is read from its syntax tree (module level and
inside functions alike), so a lazy import cannot hide an arrow. The SDK and the kernels are also imported
in a fresh interpreter in which the server packages and their dependencies cannot be imported at all.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# folder in the repository -> the package name it is installed under
FOLDERS = {
    "compression": "deltazoo.compression",
    "registry": "deltazoo.registry",
    "services": "deltazoo.services",
    "workers": "deltazoo.workers",
    "api": "deltazoo.api",
    "migrations": "deltazoo.migrations",
}
SERVER = ("deltazoo.registry", "deltazoo.services", "deltazoo.workers", "deltazoo.api", "deltazoo.migrations")

# layer -> the deltazoo layers it may import (its own always allowed). The server settings still live in
# deltazoo.settings (shared with the SDK), so the server layers may import that one SDK module.
ALLOWED: dict[str, tuple[str, ...]] = {
    "deltazoo.compression": (),
    "deltazoo.kernels": ("deltazoo.compression",),
    # data: tables, repositories, database, object store; never the rules above it
    "deltazoo.registry": ("deltazoo.compression", "deltazoo.settings", "deltazoo.units", "deltazoo.errors"),
    # the rules, on the data
    "deltazoo.services": (
        "deltazoo.registry", "deltazoo.compression", "deltazoo.settings", "deltazoo.units", "deltazoo.errors",
    ),
    "deltazoo.workers": (
        "deltazoo.services", "deltazoo.registry", "deltazoo.compression", "deltazoo.settings",
    ),
    "deltazoo.api": (
        "deltazoo.services", "deltazoo.registry", "deltazoo.workers", "deltazoo.compression",
        "deltazoo.settings", "deltazoo.units", "deltazoo.models", "deltazoo.errors", "deltazoo.refs",
    ),
    "deltazoo.migrations": ("deltazoo.registry", "deltazoo.services", "deltazoo.settings"),
    # the SDK, CLI and host: everything of deltazoo except the server layers
    "deltazoo": ("deltazoo.compression", "deltazoo.kernels"),
}
# the one door from the client package into the server: `deltazoo serve` and `deltazoo worker` start them
SERVER_DOORS = {"deltazoo/cli_server.py"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts[0] in FOLDERS:
        parts[0] = FOLDERS[parts[0]]
    return ".".join(parts)


def layer_of(module: str) -> str | None:
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]  # from x import module
    return found


def source_files() -> list[Path]:
    files: list[Path] = []
    for top in ("deltazoo", *FOLDERS):
        files += sorted((ROOT / top).rglob("*.py"))
    return files


def test_no_import_crosses_a_forbidden_arrow() -> None:
    problems: list[str] = []
    for path in source_files():
        rel = path.relative_to(ROOT).as_posix()
        own = layer_of(module_name(path))
        assert own is not None, rel
        for line, name in imports_of(path):
            target = layer_of(name)
            if name == "deltazoo" or target is None or target == own:  # the namespace, third party, own layer
                continue
            if name.startswith(ALLOWED[own]) or (rel in SERVER_DOORS and name.startswith(SERVER)):
                continue
            problems.append(f"{rel}:{line} ({own}) imports {name} ({target})")
    assert not problems, "imports that cross the layers of docs/ARCHITECTURE.md:\n" + "\n".join(problems)


OLD_SERVICES = "deltazoo.registry" + ".services"  # written in two parts so that a rename does not touch it


def test_old_top_level_names_are_not_imported() -> None:
    """The wheel installs one top-level name: `import registry` would work in the repository only.

    The services moved out of the data layer: `deltazoo.registry.services` is now `deltazoo.services`."""
    old = tuple(FOLDERS)
    problems = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in [*source_files(), *(ROOT / "tests").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
        for line, name in imports_of(path)
        if name.split(".")[0] in old or name.startswith(OLD_SERVICES)
    ]
    assert not problems, "\n".join(problems)


BLOCKER = """
import importlib.abc, sys
BLOCKED = ("deltazoo.api", "deltazoo.registry", "deltazoo.services", "deltazoo.workers",
           "deltazoo.migrations", "fastapi", "sqlalchemy", "alembic", "celery", "minio", "uvicorn",
           "psycopg2")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == blocked or name.startswith(blocked + ".") for blocked in BLOCKED):
            raise ModuleNotFoundError(f"{name} is a server package", name=name)
        return None
sys.meta_path.insert(0, Block())
"""


@pytest.mark.parametrize(
    "statement",
    [
        "from deltazoo import Client; import deltazoo.cli, deltazoo.cache, deltazoo.models",
        "import deltazoo.kernels; from deltazoo.kernels import patch_model",
    ],
)
def test_client_and_kernels_import_without_the_server(statement: str) -> None:
    code = BLOCKER + statement + "\nprint('ok')"
    argv = [sys.executable, "-c", code]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
