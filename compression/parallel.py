"""How a codec runs: its C kernel or its numpy twin (``pick_c_kernel``), and its chunks or segments on several
threads (``thread_map``; the C kernels release the GIL)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import TypeVar

from deltazoo.compression.exact_errors import CodecError

T = TypeVar("T")
R = TypeVar("R")


def thread_map(fn: Callable[[T], R], items: Iterable[T], threads: int) -> list[R]:
    """fn over items, in order; on ``threads`` threads when > 1 (the C kernels release the GIL)."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, not {threads}")
    items = list(items)
    if threads == 1 or len(items) < 2:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(min(threads, len(items))) as pool:
        return list(pool.map(fn, items))


def pick_c_kernel(extension: ModuleType | None, name: str, backend: str) -> bool:
    """Whether to run the C kernel ``extension`` (None where it did not build) for ``backend``: auto (C when
    built), c (C or a clear error), numpy (the twin that writes and reads the same bytes)."""
    if backend not in ("auto", "c", "numpy"):
        raise ValueError(f"backend must be auto, c or numpy, not {backend!r}")
    if backend == "c" and extension is None:
        raise CodecError(f"the compression.{name} extension is not built; reinstall with a C compiler")
    return extension is not None and backend != "numpy"
