"""Lays out the one installed package and builds the optional C kernels of the codecs; metadata is in
pyproject.toml.

The wheel installs one top-level import name, `deltazoo`. The repository keeps the server's folders at its
top level (api/, registry/, services/, compression/, workers/, migrations/, as docs/ARCHITECTURE.md lays
them out) and maps each under the package: api/ is imported as deltazoo.api, services/ as
deltazoo.services, and so on. Editable installs map them the same way.

Every compression/_*.c is an optional extension deltazoo.compression._*: without a C compiler the install
still succeeds and the codecs run the same formats in numpy (slower). compression/_*.h are headers they share.
"""

import platform
from pathlib import Path

from setuptools import Extension, setup

MAPPED = ("api", "registry", "services", "compression", "workers", "migrations")

# x86-64-v2 (SSE4.2, POPCNT; every x86-64 CPU since 2009) and never -march=native: the wheel must run
# on other machines than the one that built it.
FLAGS = ["-O3", "-std=c99"] + (["-march=x86-64-v2"] if platform.machine() in ("x86_64", "AMD64") else [])


def packages() -> tuple[list[str], dict[str, str]]:
    """Every package under deltazoo/ and the mapped folders, and the folder of each mapped one."""
    names: list[str] = []
    folders: dict[str, str] = {}
    for top in ("deltazoo", *MAPPED):
        for init in sorted(Path(top).rglob("__init__.py")):
            parts = init.parent.parts
            name = ".".join(parts if top == "deltazoo" else ("deltazoo", *parts))
            names.append(name)
            if top != "deltazoo":
                folders[name] = init.parent.as_posix()
    return names, folders


def c_extensions() -> list[Extension]:
    """One extension per compression/_*.c; the headers beside them (compression/_*.h, #included by name) are
    listed as their dependencies: a change rebuilds them, and the sdist carries the headers."""
    headers = [h.as_posix() for h in sorted(Path("compression").glob("_*.h"))]
    return [
        Extension(f"deltazoo.compression.{source.stem}", sources=[source.as_posix()], depends=headers,
                  extra_compile_args=FLAGS, optional=True)
        for source in sorted(Path("compression").glob("_*.c"))
    ]


PACKAGES, PACKAGE_DIR = packages()
setup(packages=PACKAGES, package_dir=PACKAGE_DIR, ext_modules=c_extensions())
