"""One unit of work per request: ``registry.db.end_read`` ends a read (so an upload's body streams in
with no transaction open) and refuses to end anything that wrote."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from deltazoo.registry.db import end_read, session_scope, upgrade_database
from deltazoo.registry.models import Blob, Namespace
from deltazoo.registry.settings import Settings
from sqlalchemy import select


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    upgrade_database(url)
    return Settings(home=tmp_path, database_url=url, broker_url=None, s3_endpoint=None, auth=False)


def test_end_read_ends_the_transaction_and_keeps_what_it_loaded(settings: Settings) -> None:
    with session_scope(settings) as session:
        session.add(Namespace(name="acme"))
    with session_scope(settings) as session:
        namespace = session.scalars(select(Namespace).where(Namespace.name == "acme")).one()
        assert session.in_transaction()
        end_read(session)
        assert not session.in_transaction()
        assert namespace.name == "acme" and not session.in_transaction()  # still loaded: no new read


def test_end_read_refuses_a_pending_write_and_the_unit_of_work_rolls_it_back(settings: Settings) -> None:
    sha = secrets.token_hex(32)
    with pytest.raises(RuntimeError, match="unit of work"), session_scope(settings) as session:
        session.add(Blob(sha256=sha, size=1, refcount=1))
        end_read(session)
    with session_scope(settings) as session:
        assert session.get(Blob, sha) is None
