"""Keep a server process's memory bounded by the tensors it is working on.

glibc's malloc raises its mmap threshold to the size of the largest block freed (up to 32 MiB), after
which every tensor-sized buffer comes from a heap arena, and each thread (request threads, job
threads) gets its own arena that rarely shrinks: the process then holds a dozen freed tensors' worth of
memory. Pinning the threshold at 1 MiB keeps tensor buffers in their own mappings, which go back to the
system when freed, and capping the arenas bounds what small allocations can strand.

But a fresh mapping costs a page fault per 4 KiB touched (about 2,050 per 8 MiB chunk: on this VM a
chunk-sized buffer took 2-5 ms of faults, and a cold pull faulted ~1 GB of pages per 256 MiB sent, more
CPU than its decode). So each arena keeps ``TOP_PAD`` bytes free at its top: a buffer that fits there
is carved from it and, freed, goes back to it, already faulted in, for the next chunk. What a process
holds beyond what it uses is then at most ``TOP_PAD`` per arena (main + ``ARENA_MAX``), a constant,
whatever the checkpoint; a buffer larger than what is free there still gets its own mapping.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("deltazoo.memory")

_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD = 1 << 20
ARENA_MAX = 2
TOP_PAD = 64 << 20  # a few 8 MiB chunks in flight per arena (decode-ahead, encode lanes)


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
    applied = all(
        libc.mallopt(option, value)
        for option, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_ARENA_MAX, ARENA_MAX),
            (_M_TOP_PAD, TOP_PAD),
        )
    )
    if not applied:
        log.warning("mallopt refused the memory settings; peak memory may exceed a few tensors")
    return applied


def release_free_memory() -> None:
    """Hand freed heap pages back to the system (after a job: its buffers are gone)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
