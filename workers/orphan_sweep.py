"""The periodic object-store sweep (services/orphans.py) in a daemon thread of the API.

It runs when the API starts and then every ``DELTAZOO_ORPHAN_SWEEP_HOURS`` (0: never), on the embedded
default and the full stack alike; several API replicas sweeping at once is harmless (each deletion is
checked again just before it is made).
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from deltazoo.registry.db import session_scope
from deltazoo.registry.objectstore import ObjectStore
from deltazoo.registry.settings import Settings
from deltazoo.services.orphans import Audit, audit_store

log = logging.getLogger("deltazoo.orphans")


def sweep_once(settings: Settings, store: ObjectStore, *, repair: bool = True) -> Audit:
    with session_scope(settings) as session:
        return audit_store(session, store, timedelta(hours=settings.orphan_grace_hours), repair=repair)


def start_orphan_sweeper(settings: Settings, store: ObjectStore) -> threading.Event:
    """Sweep now and every interval in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    interval = settings.orphan_sweep_hours * 3600
    if interval <= 0:
        stop.set()
        return stop

    def loop() -> None:
        while not stop.is_set():
            try:
                sweep_once(settings, store)
            except Exception as exc:  # noqa: BLE001 - a store or database away: try at the next interval
                log.warning("object store sweep failed, trying again in %.0f s: %s", interval, exc)
            if stop.wait(interval):
                return

    threading.Thread(target=loop, name="deltazoo-orphan-sweep", daemon=True).start()
    return stop
