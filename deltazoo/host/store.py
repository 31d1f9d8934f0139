"""The fine-tunes a host holds in memory: an LRU of packed artifacts with a byte budget.

Entries are pinned while a request runs with them and never evicted then. ``get`` loads a missing
artifact with the loader (a fetch from the registry, or from the client's disk cache) after evicting
least recently used unpinned entries until it fits.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from deltazoo.compression.packed import PackedArtifact

from .errors import HostError


def artifact_bytes(artifact: PackedArtifact) -> int:
    """Bytes the artifact holds in memory: packed deltas plus exact tensors."""
    packed = sum(d.nbytes for d in artifact.packed.values())
    return packed + sum(t.numel() * t.element_size() for t in artifact.dense.values())


class DeltaStore:
    def __init__(self, budget_bytes: int, loader: Callable[[str], PackedArtifact]) -> None:
        if budget_bytes <= 0:
            raise ValueError(f"the delta budget must be positive; got {budget_bytes} bytes")
        self.budget = budget_bytes
        self._loader = loader
        self._entries: OrderedDict[str, tuple[PackedArtifact, int]] = OrderedDict()
        self._pins: dict[str, int] = {}
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self.loads = 0
        self.evictions: list[str] = []

    @property
    def used(self) -> int:
        with self._lock:
            return sum(n for _, n in self._entries.values())

    def resident(self) -> list[str]:
        """Keys held, least recently used first."""
        with self._lock:
            return list(self._entries)

    def artifact(self, key: str) -> PackedArtifact:
        with self._lock:
            return self._entries[key][0]

    def acquire(self, key: str) -> PackedArtifact:
        """The artifact of ``key``, loaded when missing, pinned until ``release(key)``."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self._pins[key] = self._pins.get(key, 0) + 1
                return self._entries[key][0]
        with self._load_lock:  # one load at a time; a second request for the same key waits here
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    self._pins[key] = self._pins.get(key, 0) + 1
                    return self._entries[key][0]
            artifact = self._loader(key)
            size = artifact_bytes(artifact)
            with self._lock:
                if size > self.budget:
                    raise HostError(
                        413, "over_budget",
                        f"{key} needs {size:,} bytes but the host's delta budget is {self.budget:,} "
                        "bytes; start the host with a larger --budget",
                    )
                self._make_room(size, key)
                self._entries[key] = (artifact, size)
                self._pins[key] = self._pins.get(key, 0) + 1
                self.loads += 1
                return artifact

    def _make_room(self, size: int, key: str) -> None:
        used = sum(n for _, n in self._entries.values())
        for old in list(self._entries):
            if used + size <= self.budget:
                break
            if self._pins.get(old, 0) == 0:
                used -= self._entries.pop(old)[1]
                self.evictions.append(old)
        if used + size > self.budget:
            raise HostError(
                503, "budget_busy",
                f"{key} needs {size:,} bytes and running requests hold {used:,} of the "
                f"{self.budget:,}-byte delta budget; retry when they finish, or raise --budget",
                retry_after=1,
            )

    def release(self, key: str) -> None:
        with self._lock:
            left = self._pins.get(key, 0) - 1
            if left <= 0:
                self._pins.pop(key, None)
            else:
                self._pins[key] = left
