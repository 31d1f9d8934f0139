"""A push deduplicated against a version that someone else deletes still succeeds with its exact bytes
(services.dedup_handover): deleted before the push's encode copies it, and, on Postgres, deleted at
the very moment the push picks it as its dedup source."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from deltazoo.api.app import create_app
from deltazoo.registry.db import session_factory, session_scope, upgrade_database
from deltazoo.registry.objectstore import object_store_from_settings
from deltazoo.registry.settings import Settings
from deltazoo.services.access import OPEN
from deltazoo.services.refs import get_model
from deltazoo.services.versions import DeclaredFile, create_model, create_version, delete_model
from fastapi.testclient import TestClient
from sqlalchemy import event, text

from tests.checkpoints import TINY_LLAMA_SHAPES, random_tensors
from tests.test_api_support import checkpoint, push, sha, wait_job

FILES = checkpoint(random_tensors(TINY_LLAMA_SHAPES, seed=77))


def _settings(home: Path, url: str | None) -> Settings:
    return Settings(home=home, database_url=url, broker_url=None, s3_endpoint=None, auth=False)


def _commit_and_check(client: TestClient, name: str) -> None:
    """Commit revision 1 of ``name``: its encode succeeds and it serves the bytes pushed."""
    r = client.post(f"/v1/models/{name}/versions/1/commit")
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job"]["id"])
    assert job["status"] == "succeeded", job
    for path, data in FILES.items():
        assert sha(client.get(f"/v1/models/{name}/versions/1/files/{path}").content) == sha(data)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_deduplicated_push_survives_the_delete_of_its_source_before_its_encode(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("empty_postgres_url") if backend == "postgres" else None
    if url:
        upgrade_database(url)
    with TestClient(create_app(_settings(tmp_path / "home", url))) as client:
        assert wait_job(client, push(client, "org/a", FILES)["job"]["id"])["status"] == "succeeded"
        assert client.post("/v1/models", json={"name": "other/b"}).status_code == 201
        body = {"files": [{"path": p, "size": len(d), "sha256": sha(d)} for p, d in FILES.items()]}
        created = client.post("/v1/models/other/b/versions", json=body)
        assert created.status_code == 201, created.text
        assert not any(up["needed"] for up in created.json()["uploads"])  # deduplicated against org/a
        assert client.delete("/v1/models/org/a").status_code == 204
        _commit_and_check(client, "other/b")
        assert client.get("/v1/models/org/a").status_code == 404


def _waiting_on_a_lock(url: str) -> bool:
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            query = (
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return bool(conn.execute(text(query)).scalar_one())
    finally:
        engine.dispose()


def test_a_push_deduplicating_against_a_version_being_deleted_succeeds_on_postgres(
    tmp_path: Path, empty_postgres_url: str
) -> None:
    """Right after the push's dedup lookup has picked org/a's file (and before it inserts the row that
    names it), another thread deletes org/a: the delete waits for the push's commit, then hands the bytes
    over. (Before, the delete went through and the push's insert failed on the source_file_id foreign
    key: a 409 for a push that had done nothing wrong.)"""
    upgrade_database(empty_postgres_url)
    settings = _settings(tmp_path / "home", empty_postgres_url)
    errors: list[BaseException] = []

    def delete() -> None:
        try:
            with session_scope(settings) as s:
                store = object_store_from_settings(settings)
                delete_model(s, store, get_model(s, "org", "a"), "org/a")
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    deleter = threading.Thread(target=delete)
    pusher = threading.current_thread()

    def after_lookup(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        """In the push, once its dedup lookup ran: start the delete and let it run until it is done or
        waits on a lock."""
        if threading.current_thread() is not pusher or deleter.ident or "file.sha256 =" not in statement:
            return
        deleter.start()
        while deleter.is_alive() and not _waiting_on_a_lock(empty_postgres_url):
            deleter.join(0.05)

    with TestClient(create_app(settings)) as client:
        assert wait_job(client, push(client, "org/a", FILES)["job"]["id"])["status"] == "succeeded"
        declared = [DeclaredFile(p, len(d), sha(d)) for p, d in FILES.items()]
        engine = session_factory(settings).kw["bind"]
        event.listen(engine, "after_cursor_execute", after_lookup)
        try:
            with session_scope(settings) as s:
                model, _ = create_model(s, "other/b", "", False, False)
                _, uploads = create_version(s, model, None, "finetune", [], declared, viewer=OPEN)
                assert not any(needed for _, needed in uploads)
        finally:
            event.remove(engine, "after_cursor_execute", after_lookup)
            if deleter.ident:
                deleter.join()
        assert deleter.ident and errors == []
        _commit_and_check(client, "other/b")
        assert client.get("/v1/models/org/a").status_code == 404
