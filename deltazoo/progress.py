"""A progress bar shared by the files of one push or pull, each file moving it from its own thread."""

from __future__ import annotations

import threading
from typing import Any


class BarShare:
    """One file's view of a progress bar shared by the files of a pull or push: its ``n`` and
    ``update`` move the shared bar by the difference (under a lock: files travel on several threads)."""

    def __init__(self, bar: Any, lock: threading.Lock) -> None:
        self.bar, self.lock, self._n = bar, lock, 0

    @property
    def n(self) -> int:
        return self._n

    @n.setter
    def n(self, value: int) -> None:
        self.update(value - self._n)

    def update(self, delta: int) -> None:
        with self.lock:
            self._n += delta
            self.bar.update(delta)

    def refresh(self) -> None:
        with self.lock:
            self.bar.refresh()
