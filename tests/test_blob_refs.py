"""Blob rows are inserted or ignored: two encodes storing the same bytes at once both count a reference
(no primary-key error, no retry), on Postgres and SQLite."""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

import pytest
from deltazoo.registry.db import session_factory, upgrade_database
from deltazoo.registry.models import Blob
from deltazoo.registry.repositories import BlobRepository
from deltazoo.registry.settings import Settings

from tests.services import wait_until


def _settings(url: str, home: Path) -> Settings:
    return Settings(home=home, database_url=url, broker_url=None, s3_endpoint=None, auth=False)


@pytest.fixture(params=["postgres", "sqlite"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "postgres":
        return _settings(request.getfixturevalue("postgres_url"), tmp_path)
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    upgrade_database(url)
    return _settings(url, tmp_path)


def test_the_same_blob_added_by_two_open_transactions(settings: Settings) -> None:
    sha = secrets.token_hex(32)
    factory = session_factory(settings)
    first, second = factory(), factory()
    outcome: dict[str, object] = {}

    def add_in_second() -> None:
        try:
            outcome["new"] = BlobRepository(second).add_reference(sha, 10)
            second.commit()
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc
            second.rollback()

    try:
        assert BlobRepository(first).add_reference(sha, 10) is True  # inserted, not committed yet
        if settings.resolved_database_url.startswith("sqlite"):  # one writer: the second one waits
            first.commit()
        other = threading.Thread(target=add_in_second)
        other.start()
        if not settings.resolved_database_url.startswith("sqlite"):
            # commit only once the second insert waits on this uncommitted row (the race itself)
            wait_until(lambda: _waiting_on_a_lock(settings) or bool(outcome), timeout=60, what="a lock wait")
            assert not outcome, f"the second insert did not wait for the first: {outcome}"
        first.commit()
        other.join()
        assert "error" not in outcome, outcome.get("error")
        assert outcome["new"] is False
        with factory() as check:
            blob = check.get(Blob, sha)
            assert blob is not None and blob.refcount == 2
    finally:
        first.close()
        second.close()


def _waiting_on_a_lock(settings: Settings) -> bool:
    from sqlalchemy import text

    query = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    with session_factory(settings)() as s:
        return bool(s.scalar(text(query)))
