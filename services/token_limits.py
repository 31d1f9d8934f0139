"""Per-token limits, so one client (a runaway script, a leaked token) cannot hold the server alone:

- **pending versions:** a token may hold at most ``max_pending_versions`` versions created and not yet
  committed (``DELTAZOO_MAX_PENDING_VERSIONS``, default 20). Creating one more answers 429
  ``too_many_pending`` naming the way out: commit or delete them, or wait for the oldest to expire.
  The count is exact under concurrent creates: the new row is written first, then counted under a lock
  per token (Postgres: a transaction advisory lock; SQLite: the write lock the insert already holds).
- **concurrent uploads:** a token may stream at most ``max_concurrent_uploads`` file bodies at once
  (``DELTAZOO_MAX_CONCURRENT_UPLOADS``, default 16; counted per API process): the next one answers 429
  ``too_many_uploads`` with Retry-After 1 before any byte is read. Every upload route holds a slot: REST
  files and their parts, Hub commits and Git LFS objects.

The admin token is limited like any other (it is a token too, and a script holding it can exhaust the
server just the same; the operator raises the limits in the settings instead). With auth off every
caller is one and the same caller, so the limits hold for all of them together.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from deltazoo.registry.errors import TooManyRequests
from deltazoo.registry.models import utcnow
from deltazoo.registry.repositories import VersionRepository
from sqlalchemy import func, select
from sqlalchemy.orm import Session

_PENDING_LOCK = 0x64_7A_70  # advisory lock class "dzp": one lock per token, held to the transaction's end


@dataclass(frozen=True)
class PendingLimit:
    max_versions: int
    expiry: timedelta  # pending versions are removed this long after their creation


def check_pending_limit(session: Session, token_id: int | None, limit: PendingLimit) -> None:
    """Call once the new pending version is flushed: 429 when the token now holds more than allowed."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(_PENDING_LOCK, token_id or 0)))
    held, oldest = VersionRepository(session).pending_created_by(token_id)
    if held <= limit.max_versions:
        return
    wait = max(1, int(((oldest or utcnow()) + limit.expiry - utcnow()).total_seconds()))
    raise TooManyRequests(
        f"this token already holds {held - 1} pending versions (created, not committed), the server's "
        f"limit (DELTAZOO_MAX_PENDING_VERSIONS={limit.max_versions}); commit or delete them first "
        f"(`deltazoo ls --pending` lists them, `deltazoo rm NAME@REV` deletes one), or wait until the "
        f"oldest expires in {_duration(wait)}",
        code="too_many_pending",
        retry_after=wait,
    )


def _duration(seconds: int) -> str:
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{max(1, seconds // 60)} min" if seconds >= 60 else f"{seconds} s"


class UploadSlots:
    """How many uploads each token streams at once in this process; ``hold`` takes one for a request."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: Counter[int | None] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, token_id: int | None) -> Iterator[None]:
        with self._lock:
            if self._held[token_id] >= self.limit:
                raise TooManyRequests(
                    f"this token is already sending {self.limit} files at once, the server's limit "
                    "(DELTAZOO_MAX_CONCURRENT_UPLOADS); send the next file once one has finished "
                    "(the deltazoo client waits and retries by itself)",
                    code="too_many_uploads",
                    retry_after=1,
                )
            self._held[token_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._held[token_id] -= 1
                if self._held[token_id] <= 0:
                    del self._held[token_id]

    def held(self, token_id: int | None) -> int:
        with self._lock:
            return self._held[token_id]
