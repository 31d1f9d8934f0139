"""The layers of docs/ARCHITECTURE.md, checked on the source: an import across a forbidden arrow fails here.

Every ``import`` / ``from ... import`` of every module is read from its syntax tree (module level and
inside functions alike), so a lazy import cannot hide an arrow. The SDK and the kernels are also imported
in a fresh interpreter in which the server packages and their dependencies cannot be imported at all.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable
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

# The contract modules: client-side modules the server imports too, so that one definition serves both
# sides (the response shapes the API produces and the SDK parses; the ref parser; how sizes are written for
# people, in CLI tables and web pages alike; big files written and read around the page cache; the root of
# the SDK's errors, which the ref parser raises). They
# import nothing of deltazoo but each other, so the server never pulls in the SDK through them.
CONTRACT = (
    "deltazoo.schemas",
    "deltazoo.refs",
    "deltazoo.units",
    "deltazoo.direct_io",
    "deltazoo.error_base",
)

# layer -> the deltazoo layers it may import (its own always allowed). The server layers take nothing of
# the client package but the contract modules (their settings are deltazoo.registry.settings).
ALLOWED: dict[str, tuple[str, ...]] = {
    "deltazoo.compression": (),
    "deltazoo.kernels": ("deltazoo.compression",),
    **{module: CONTRACT for module in CONTRACT},
    # data: tables, repositories, database, object store, the server's settings; never the rules above it
    "deltazoo.registry": ("deltazoo.compression", *CONTRACT),
    # the rules, on the data
    "deltazoo.services": ("deltazoo.registry", "deltazoo.compression", *CONTRACT),
    "deltazoo.workers": ("deltazoo.services", "deltazoo.registry", "deltazoo.compression", *CONTRACT),
    "deltazoo.api": (
        "deltazoo.services",
        "deltazoo.registry",
        "deltazoo.workers",
        "deltazoo.compression",
        *CONTRACT,
    ),
    "deltazoo.migrations": ("deltazoo.registry", "deltazoo.services"),
    # the SDK, CLI and host: everything of deltazoo except the server layers
    "deltazoo": ("deltazoo.compression", "deltazoo.kernels", *CONTRACT),
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
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                own = module_name(path)
                package = own if path.name == "__init__.py" else own.rsplit(".", 1)[0]
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
        "from deltazoo import Client; import deltazoo.cli, deltazoo.cache, deltazoo.models, deltazoo.refs",
        "import deltazoo.kernels; from deltazoo.kernels import patch_model",
    ],
)
def test_client_and_kernels_import_without_the_server(statement: str) -> None:
    code = BLOCKER + statement + "\nprint('ok')"
    argv = [sys.executable, "-c", code]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def runtime_imports_of(path: Path) -> list[tuple[int, str]]:
    """``imports_of`` less the imports under ``if TYPE_CHECKING:`` (annotations only, never executed)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {n.lineno for stmt in node.body for n in ast.walk(stmt) if hasattr(n, "lineno")}
    return [(line, name) for line, name in imports_of(path) if line not in typing_only]


def import_graph(imports: Callable[[Path], list[tuple[int, str]]]) -> dict[str, set[str]]:
    """Module -> the deltazoo modules it imports (an import of a module's own package is no edge: Python
    imports a package before any of its modules)."""
    paths = {module_name(path): path for path in source_files()}

    def resolve(name: str) -> str | None:
        parts = name.split(".")
        prefixes = (".".join(parts[:i]) for i in range(len(parts), 0, -1))
        return next((prefix for prefix in prefixes if prefix in paths), None)

    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        targets = {resolve(name) for _, name in imports(path)}
        graph[module] = {
            t for t in targets if t is not None and t != module and not module.startswith(t + ".")
        }
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycles_finds_a_loop_and_only_a_loop() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_import_cycle_among_deltazoo_modules() -> None:
    """Every import that runs (module level or inside a function) counts: a lazy import that closes a
    loop is still a loop, it only moves the failure to a later moment."""
    loops = cycles(import_graph(runtime_imports_of))
    assert not loops, "modules that import each other (in a loop):\n" + "\n".join(map(" <-> ".join, loops))


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_names_used_across(path: Path) -> list[str]:
    """``from deltazoo.x import _y`` and ``x._y`` (``x`` an imported deltazoo module) in one file.

    A C extension ``compression/_name.c`` imported by its own wrapper ``compression/name.py`` is the one
    exception: the leading underscore there names the compiled half of that module."""
    modules = {module_name(p) for p in source_files()}
    own = module_name(path) if path.is_relative_to(ROOT) else ""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    bound: dict[str, str] = {}  # local name -> the deltazoo module it holds
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("deltazoo"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                extension = full.startswith("deltazoo.compression._") and own == full.replace("._", ".", 1)
                if is_private(alias.name) and not extension:
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
                if full in modules:
                    bound[alias.asname or alias.name] = full
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("deltazoo") and alias.asname:
                    bound[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and is_private(node.attr)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
        ):
            found.append(f"{node.lineno}: {bound[node.value.id]}.{node.attr}")
    return found


def test_private_names_check_finds_an_import_and_an_attribute(tmp_path: Path) -> None:
    module = tmp_path / "example.py"
    module.write_text(
        "from deltazoo.services.evaluation import _row\n"
        "from deltazoo.services import storage\n"
        "storage._helper()\n"
        "from deltazoo.services.storage import read_blob\n"
    )
    assert private_names_used_across(module) == [
        "1: from deltazoo.services.evaluation import _row",
        "3: deltazoo.services.storage._helper",
    ]


def test_no_private_name_is_used_across_modules() -> None:
    """A name that starts with ``_`` belongs to its module: another module of the package (or a
    benchmark) that needs it needs a public name, or the code belongs where the name is."""
    problems = [
        f"{path.relative_to(ROOT)}:{problem}"
        for path in [*source_files(), *(ROOT / "benchmarks").glob("*.py")]
        for problem in private_names_used_across(path)
    ]
    assert not problems, "private names used across modules:\n" + "\n".join(problems)


def route_problems(path: Path) -> list[str]:
    """What a route module may not do: query (a repository, ``select``), open a session of its own
    (``session_scope``, ``session_factory``), end the unit of work (``.commit()``, ``.rollback()``) or
    reach past the enqueue dependency (``app.state.dispatcher``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = [
        f"{line}: imports {name}"
        for line, name in imports_of(path)
        if name.endswith(("Repository", ".select", ".session_scope", ".session_factory"))
        or "repositories" in name
        or name.endswith("_repository")
    ]
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        ends_the_session = (
            node.attr in ("commit", "rollback", "close")
            and isinstance(node.value, ast.Name)
            and node.value.id.endswith("session")
        )
        if ends_the_session or node.attr == "dispatcher":
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_route_problems_finds_a_query_a_session_and_a_commit(tmp_path: Path) -> None:
    route = tmp_path / "route.py"
    route.write_text(
        "from deltazoo.registry.repositories import ModelRepository\n"
        "from deltazoo.registry.db import session_scope\n"
        "def r(session, request, hub_commit):\n"
        "    session.commit()\n"
        "    request.app.state.dispatcher.submit(1)\n"
        "    hub_commit.commit(session)\n"  # a service named commit is no transaction
    )
    assert route_problems(route) == [
        "1: imports deltazoo.registry.repositories",
        "1: imports deltazoo.registry.repositories.ModelRepository",
        "2: imports deltazoo.registry.db.session_scope",
        "4: session.commit",
        "5: request.app.state.dispatcher",
    ]


def test_routes_are_thin() -> None:
    """Routes parse, are authorised by a dependency, call a service and return: the queries live in
    the repositories, the unit of work in the ``DB`` dependency, the enqueueing in ``Enqueue``."""
    problems = [
        f"{path.relative_to(ROOT)}:{problem}"
        for path in sorted((ROOT / "api" / "routes").glob("*.py"))
        for problem in route_problems(path)
    ]
    assert not problems, "routes that do what belongs below them:\n" + "\n".join(problems)


def test_the_client_settings_hold_no_server_setting() -> None:
    """The SDK's settings are what a client needs; database, object store, broker and limits are the
    server's (deltazoo.registry.settings), and no variable means one thing to both."""
    from deltazoo.registry.settings import Settings as ServerSettings

    from deltazoo.settings import Settings as ClientSettings

    client = {"url", "token", "cache", "retries", "upload_part_mb", "outage_wait_s", "offline", "direct_io"}
    assert set(ClientSettings.model_fields) == client
    # DELTAZOO_DIRECT_IO is the one shared variable, and means the same on both: this machine's big
    # files go around the page cache (deltazoo.direct_io), or not where its filesystem refuses it
    assert set(ClientSettings.model_fields) & set(ServerSettings.model_fields) == {"direct_io"}


def test_every_declared_answer_is_a_contract_model() -> None:
    """Each response shape is written once: the API's response models are deltazoo/schemas.py's, the
    models the SDK parses with (a second copy in api/ or services/ would drift again)."""
    import importlib

    from fastapi.routing import APIRoute
    from pydantic import BaseModel

    declared = {}
    for path in sorted((ROOT / "api" / "routes").glob("*.py")):
        router = getattr(importlib.import_module(f"deltazoo.api.routes.{path.stem}"), "router", None)
        for route in getattr(router, "routes", ()):
            model = route.response_model if isinstance(route, APIRoute) else None
            if isinstance(model, type) and issubclass(model, BaseModel):
                declared[route.path] = f"{model.__module__}.{model.__name__}"
    assert len(declared) >= 15, sorted(declared)
    elsewhere = {path: name for path, name in declared.items() if not name.startswith("deltazoo.schemas.")}
    assert not elsewhere, elsewhere
