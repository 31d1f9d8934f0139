"""Keep a server process's memory bounded by the tensors it is working on.

glibc's malloc raises its mmap threshold to the size of the largest block freed (up to 32 MiB), after
which every tensor-sized buffer comes from a heap arena, and each thread (request threads, job
threads) gets its own arena that rarely shrinks: the process then holds a dozen freed tensors' worth of
memory. Pinning the threshold at 1 MiB keeps tensor buffers in their own mappings, which go back to the
system when freed, and capping the arenas bounds what small allocations can strand.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("deltazoo.memory")

_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD = 1 << 20
ARENA_MAX = 2


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def bound_heap() -> bool:
    """Apply the malloc settings above (glibc only); returns whether they were applied."""
    libc = _libc()
    if libc is None:
        return False
    applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(_M_ARENA_MAX, ARENA_MAX)
    )
    if not applied:
        log.warning("mallopt refused the memory settings; peak memory may exceed a few tensors")
    return applied


def release_free_memory() -> None:
    """Hand freed heap pages back to the system (after a job: its buffers are gone)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
