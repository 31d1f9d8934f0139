"""An upload declaring many tensors costs a few SQL statements per batch of tensors, not per tensor:
the dedup lookups, the blob references and the tensor rows of an encode are written a batch at a time."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from deltazoo.api.app import create_app
from deltazoo.registry.db import session_factory
from deltazoo.registry.objectstore import LocalObjectStore
from deltazoo.registry.settings import Settings
from deltazoo.services.encode_pipeline import LOOKUP_BATCH
from deltazoo.workers.jobs import JobContext, run_job
from fastapi.testclient import TestClient
from sqlalchemy import event

from tests.test_api_support import checkpoint, push, sha

N = LOOKUP_BATCH + 44  # two batches; ten times as many tensors make twelve


def many_tensors(count: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A base of ``count`` tiny tensors and a fine-tune of it: every third tensor unchanged (``same`` of
    the base's, found by the dedup lookup), every seventh a copy of the tensor before it (``same`` of a
    tensor of this very upload), the rest changed (coded; so tiny that their bytes are stored as they
    are, ``plain``)."""
    g = torch.Generator().manual_seed(count)
    base = {f"t.{i}": torch.randn(8, generator=g).to(torch.bfloat16) for i in range(count)}
    ft: dict[str, torch.Tensor] = {}
    for i, (name, t) in enumerate(base.items()):
        if i % 3 == 0:
            ft[name] = t.clone()
        elif i % 7 == 0:
            ft[name] = ft[f"t.{i - 1}"].clone()
        else:
            ft[name] = (t.float() + 0.5).to(torch.bfloat16)  # every element changes
    return base, ft


@contextmanager
def counted(engine: Any) -> Iterator[list[str]]:
    """Statements the calling thread sends (the encode lanes never touch the database)."""
    seen: list[str] = []
    me = threading.get_ident()

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if threading.get_ident() == me:
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


def encode_statements(
    home: Path, database_url: str | None, count: int, monkeypatch: pytest.MonkeyPatch
) -> int:
    """Statements of the fine-tune's encode job, run to the end in this thread; checks the pull."""
    settings = Settings(
        home=home, database_url=database_url, broker_url=None, s3_endpoint=None, auth=False, encode_threads=2,
        job_commit_every_s=float("inf"),  # no time-based commits in the count
    )
    base, ft = many_tensors(count)
    files = {"base": checkpoint(base), "ft": checkpoint(ft)}
    with TestClient(create_app(settings)) as client:
        client.app.state.dispatcher.stop()  # type: ignore[attr-defined]
        client.app.state.dispatcher = type("Recorder", (), {"submit": staticmethod(lambda _id: None)})()  # type: ignore[attr-defined]
        ctx = JobContext(settings, LocalObjectStore(settings.objects_dir), lambda _id: None)
        assert run_job(push(client, "org/base", files["base"])["job"]["id"], ctx) == "succeeded"
        job = push(client, "org/ft", files["ft"], base="org/base@1")["job"]
        with counted(session_factory(settings).kw["bind"]) as seen:
            assert run_job(job["id"], ctx) == "succeeded"
        detail = client.get("/v1/models/org/ft/versions/1").json()
        encodings = [t["encoding"] for t in detail["tensors"]]
        assert encodings.count("same") == len([i for i in range(count) if i % 3 == 0 or i % 7 == 0])
        coded = encodings.count("delta") + encodings.count("plain")  # tiny: their bytes as they are
        assert coded == count - encodings.count("same")
        for path, data in files["ft"].items():
            assert sha(client.get(f"/v1/models/org/ft/versions/1/files/{path}").content) == sha(data)
        return len(seen)


def batches(count: int) -> int:
    return -(-count // LOOKUP_BATCH)


def assert_statements_per_batch_flat(small: int, large: int) -> None:
    per_batch = (large - small) / (batches(10 * N) - batches(N))
    seen = f"{small} statements for {N} tensors, {large} for {10 * N}: {per_batch:.1f} per batch"
    # a batch closes early when the next hash is not done yet, so timing adds a batch now and then;
    # the old code sent ~300 statements per 256 tensors
    assert per_batch <= 12, seen
    assert large < 10 * N / 20, f"{large} statements for {10 * N} tensors"


def test_encode_statements_per_batch_do_not_grow_on_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = encode_statements(tmp_path / "small", None, N, monkeypatch)
    large = encode_statements(tmp_path / "large", None, 10 * N, monkeypatch)
    assert_statements_per_batch_flat(small, large)


def test_encode_statements_per_batch_do_not_grow_on_postgres(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_postgres_url: str
) -> None:
    from tests.services import temporary_database

    small = encode_statements(tmp_path / "small", empty_postgres_url, N, monkeypatch)
    with temporary_database() as url:
        large = encode_statements(tmp_path / "large", url, 10 * N, monkeypatch)
    assert_statements_per_batch_flat(small, large)
