"""The counters the database keeps (registry.tallies) equal the rows they count: after pushes, a failed
encode, evaluations, deletes of versions and models, concurrent writers on Postgres, and after the
migration fills them on a populated database. Stats and the leaderboard's totals read them, not the
tables."""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from deltazoo.api.app import create_app
from deltazoo.registry.db import (
    alembic_config,
    dispose_engines,
    session_factory,
    session_scope,
    upgrade_database,
)
from deltazoo.registry.models import Evaluation, TextSet
from deltazoo.registry.objectstore import LocalObjectStore, object_store_from_settings
from deltazoo.registry.settings import Settings
from deltazoo.registry.tallies import TallyRepository, trigger_names
from deltazoo.services.access import OPEN
from deltazoo.services.refs import get_version
from deltazoo.services.versions import DeclaredFile, create_model, create_version, delete_version
from deltazoo.workers.jobs import JobContext, run_job
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, event, select, text
from sqlalchemy.orm import Session

from tests.test_api_support import base_state, checkpoint, finetune_state, push, wait_job

BEFORE = "issue15_version_creator"  # the schema before the counters


def _settings(home: Path, url: str | None, **update: Any) -> Settings:
    settings = Settings(home=home, database_url=url, broker_url=None, s3_endpoint=None, auth=False)
    return settings.model_copy(update=update)


def counted(session: Session) -> dict[str, int]:
    """What every counter must be, counted from the tables here (written apart from the triggers'
    terms, so a wrong term fails)."""

    def one(sql: str) -> int:
        return int(session.execute(text(sql)).scalar() or 0)

    out = {
        "models": one("SELECT count(*) FROM model"),
        "private_models": one("SELECT count(*) FROM model WHERE private"),
        "versions": one("SELECT count(*) FROM version"),
        "ready_logical_bytes": one("SELECT sum(logical_bytes) FROM version WHERE status = 'ready'"),
        "files": one("SELECT count(*) FROM file"),
        "tensors": one("SELECT count(*) FROM tensor"),
        "blobs": one("SELECT count(*) FROM blob"),
        "blob_bytes": one("SELECT sum(size) FROM blob"),
    }
    for encoding, n in session.execute(text("SELECT encoding, count(*) FROM tensor GROUP BY encoding")):
        out[f"encoding:{encoding}"] = int(n)
    rows = session.execute(
        text(
            "SELECT text_set_id, count(*), sum(CASE WHEN bits_per_byte > 0 THEN 1 ELSE 0 END) "
            "FROM evaluation GROUP BY text_set_id"
        )
    )
    for text_id, n, ranked in rows:
        out[f"text:{text_id}/evaluations"], out[f"text:{text_id}/ranked"] = int(n), int(ranked)
    return {k: v for k, v in out.items() if v}


def tallied(session: Session) -> dict[str, int]:
    return {k: v for k, v in TallyRepository(session).totals().items() if v}


def _text_set(settings: Settings, name: str = "held-out") -> None:
    """A text set row (registering one through the API would start evaluation jobs)."""
    with session_scope(settings) as s:
        s.add(TextSet(name=name, sha256="0" * 64, bytes=1))


def _evaluate(settings: Settings, name: str, bpb: float | None) -> None:
    with session_scope(settings) as s:
        org, short = name.split("/")
        _, version = get_version(s, org, short, None)
        text_id = s.scalar(select(TextSet.id).where(TextSet.name == "held-out"))
        s.add(Evaluation(version_id=version.id, text_set_id=text_id, bits_per_byte=bpb, status="ready"))


class BrokenStore(LocalObjectStore):
    """Fails for good (not a transient error) on the n-th ranged read: the encode job fails part-way."""

    def __init__(self, root: Path, fail_at: int) -> None:
        super().__init__(root)
        self.reads, self.fail_at = 0, fail_at

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        self.reads += 1
        if self.reads >= self.fail_at:
            raise ValueError("the object store returned garbage")
        return super().get_range(key, offset, length)


def _zoo_lives_and_dies(settings: Settings) -> None:
    """Pushes (real encodes), a failed encode, evaluations (one re-scored, one without a bpb), a private
    model, deletes of a version and of a model; the counters are compared with the tables after each
    step, and /v1/stats and the leaderboard answer from them."""
    base = base_state()
    with TestClient(create_app(settings)) as client:
        for name, files, parent in (
            ("org/base", checkpoint(base), None),
            ("org/ft1", checkpoint(finetune_state(base, seed=1)), "org/base@1"),
            ("org/ft2", checkpoint(finetune_state(base, seed=2)), "org/base@1"),
            ("org/copy", checkpoint(base), None),
        ):
            assert (
                wait_job(client, push(client, name, files, base=parent)["job"]["id"])["status"] == "succeeded"
            )
        r = client.post("/v1/models", json={"name": "secret/m", "private": True})
        assert r.status_code == 201, r.text
        _text_set(settings)
        with session_scope(settings) as s:
            assert tallied(s) == counted(s)

        # a failed encode, part of its tensors written before it failed
        client.app.state.dispatcher.stop()  # type: ignore[attr-defined]
        client.app.state.dispatcher = type("Recorder", (), {"submit": staticmethod(lambda _id: None)})()  # type: ignore[attr-defined]
        job = push(client, "org/ft3", checkpoint(finetune_state(base, seed=3)), base="org/base@1")["job"]
        ctx = JobContext(settings, BrokenStore(settings.objects_dir, fail_at=3), lambda _id: None)
        assert run_job(job["id"], ctx) == "failed"
        assert client.get("/v1/models/org/ft3/versions/1").json()["status"] == "failed"

        with session_scope(settings) as s:
            assert tallied(s) == counted(s)
            assert s.scalar(text("SELECT count(*) FROM tensor")) > 0
        stats = client.get("/v1/stats").json()
        with session_scope(settings) as s:
            truth = counted(s)
        assert (stats["models"], stats["versions"], stats["files"], stats["tensors"], stats["blobs"]) == (
            truth["models"],
            truth["versions"],
            truth["files"],
            truth["tensors"],
            truth["blobs"],
        )
        assert stats["stored_bytes"] == truth["blob_bytes"]
        assert stats["logical_bytes"] == truth["ready_logical_bytes"]
        assert stats["encodings"] == {k[9:]: v for k, v in truth.items() if k.startswith("encoding:")}

    _evaluate(settings, "org/ft1", 0.91)
    _evaluate(settings, "org/ft2", 0.87)
    _evaluate(settings, "org/base", None)  # not evaluable: counted, not ranked
    with session_scope(settings) as s:
        row = s.scalars(select(Evaluation).where(Evaluation.bits_per_byte == 0.91)).one()
        row.bits_per_byte = 0.0  # re-scored to nothing: leaves the ranked ones
    with session_scope(settings) as s:
        assert tallied(s) == counted(s)

    with TestClient(create_app(settings)) as client:
        board = client.get("/v1/leaderboard", params={"text": "held-out"}).json()
        assert (board["ranked"], board["total"]) == (1, 3) and len(board["items"]) == 3
        assert client.delete("/v1/models/org/ft2/versions/1").status_code == 204
        assert client.delete("/v1/models/org/copy").status_code == 204
        assert client.delete("/v1/models/org/ft3").status_code == 204
        board = client.get("/v1/leaderboard", params={"text": "held-out"}).json()
        assert (board["ranked"], board["total"]) == (0, 2)
    with session_scope(settings) as s:
        assert tallied(s) == counted(s)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_counters_equal_the_rows_after_pushes_failures_and_deletes(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("empty_postgres_url") if backend == "postgres" else None
    if url:
        upgrade_database(url)
    settings = _settings(tmp_path / "home", url, encode_threads=1, job_commit_every_s=0.0)
    _zoo_lives_and_dies(settings)

    # the migration fills the counters of a populated database (and can be undone and redone)
    db_url = settings.resolved_database_url
    dispose_engines()
    command.downgrade(alembic_config(db_url), BEFORE)
    upgrade_database(db_url)
    with session_scope(settings) as s:
        assert counted(s)["versions"] > 0
        assert tallied(s) == counted(s)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_every_trigger_is_in_place_after_upgrade(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """A later migration that rebuilds a counted table on SQLite (batch mode) drops its triggers: it
    must reinstall them (registry.tallies.install), or this fails."""
    url = (
        request.getfixturevalue("empty_postgres_url")
        if backend == "postgres"
        else f"sqlite:///{tmp_path}/r.db"
    )
    upgrade_database(url)
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))
    try:
        with engine.connect() as conn:
            if backend == "postgres":
                q = "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"
            else:
                q = "SELECT name FROM sqlite_master WHERE type = 'trigger'"
            names = set(conn.execute(text(q)).scalars())
    finally:
        engine.dispose()
    assert trigger_names() <= names


def test_concurrent_writers_keep_the_counters_exact_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    """Four threads create models and versions, mark them ready, add evaluations and delete some, each in
    its own transactions, at once; the counters (appended deltas, folded by concurrent readers) equal
    the rows. The shared database holds other tests' rows too: only the differences are compared."""
    settings = _settings(tmp_path, postgres_url)
    org = f"t{secrets.token_hex(4)}"
    _text_set(settings, f"held-out-{org}")
    with session_scope(settings) as s:
        text_id = s.scalar(select(TextSet.id).where(TextSet.name == f"held-out-{org}"))
    errors: list[BaseException] = []
    folded = threading.Event()

    def writer(t: int) -> None:
        try:
            for i in range(8):
                name = f"{org}-{t}/m-{i}"  # a namespace per thread: creating one is not what is tested
                with session_scope(settings) as s:
                    model, _ = create_model(s, name, "", i % 4 == 1, True)
                    # bytes of its own: a push deduplicated against a file another thread is deleting
                    # is a race of the push path, not of the counters
                    own = [DeclaredFile("config.json", 2, f"{t:02x}{i:02x}".ljust(64, "a"))]
                    version, _ = create_version(s, model, None, "finetune", [], own, viewer=OPEN)
                    version.logical_bytes = 1000 + i
                    version.status = "ready"
                    s.flush()
                    s.add(
                        Evaluation(version_id=version.id, text_set_id=text_id, bits_per_byte=i / 10 or None)
                    )
                if i % 3 == 0:
                    with session_scope(settings) as s:
                        _, version = get_version(s, f"{org}-{t}", f"m-{i}", None)
                        delete_version(s, object_store_from_settings(settings), version, name)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def reader() -> None:
        try:
            while not folded.is_set():
                with session_scope(settings) as s:
                    TallyRepository(s).totals()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    with session_scope(settings) as s:
        before_counted, before_tallied = counted(s), tallied(s)
    assert before_tallied == before_counted
    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    readers = [threading.Thread(target=reader) for _ in range(2)]
    for th in threads + readers:
        th.start()
    for th in threads:
        th.join()
    folded.set()
    for th in readers:
        th.join()
    assert errors == []
    with session_scope(settings) as s:
        after = counted(s)
        assert tallied(s) == after
    assert after["models"] - before_counted.get("models", 0) == 4 * 8
    assert after["versions"] - before_counted.get("versions", 0) == 4 * (8 - 3)


def _statements(engine: Any) -> Iterator[list[str]]:
    seen: list[str] = []

    def grab(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if not threading.current_thread().name.startswith("deltazoo-job"):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", grab)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", grab)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_stats_and_leaderboard_totals_count_no_table(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """What keeps them flat as the zoo grows: no statement of a stats or leaderboard request counts or
    reads the model, version, file or tensor tables (the leaderboard reads its one page)."""
    url = request.getfixturevalue("empty_postgres_url") if backend == "postgres" else None
    if url:
        upgrade_database(url)
    settings = _settings(tmp_path / "home", url)
    with TestClient(create_app(settings)) as client:
        base = base_state()
        assert (
            wait_job(client, push(client, "org/base", checkpoint(base))["job"]["id"])["status"] == "succeeded"
        )
        _text_set(settings)
        _evaluate(settings, "org/base", 0.9)
        engine = session_factory(settings).kw["bind"]
        grabbing = _statements(engine)
        seen = next(grabbing)
        assert client.get("/v1/stats").json()["tensors"] > 0
        stats = list(seen)
        seen.clear()
        board = client.get("/v1/leaderboard", params={"text": "held-out"}).json()
        leaderboard = list(seen)
        next(grabbing, None)
    assert board["total"] == 1 and board["ranked"] == 1
    table = re.compile(r"\b(FROM|JOIN)\s+(model|version|file|tensor)\b", re.IGNORECASE)
    assert not [s for s in stats if table.search(s) or "count(" in s.lower()], stats
    assert not [s for s in leaderboard if "count(" in s.lower()], leaderboard
