"""``GET /v1/jobs/{id}?wait=S``: a status answer held until the job ends, and the SDK's wait built on it
(which still polls a server that answers at once)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from deltazoo.api.app import create_app
from deltazoo.api.routes.misc import MAX_JOB_WAIT_S
from deltazoo.registry.objectstore import LocalObjectStore
from deltazoo.workers.jobs import JobContext, run_job
from fastapi.testclient import TestClient

from deltazoo import jobs
from deltazoo.schemas import Job
from tests.test_api_roundtrip import embedded_settings
from tests.test_api_support import base_state, checkpoint, push
from tests.test_encode_parallel import _manual_dispatch


def test_held_answer_comes_when_the_job_ends(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path / "home")
    with TestClient(create_app(settings)) as client:
        _manual_dispatch(client)  # the job stays queued until this test runs it
        job_id = push(client, "org/base", checkpoint(base_state()))["job"]["id"]
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
        assert client.get(f"/v1/jobs/{job_id}", params={"wait": 0.2}).json()["status"] == "queued"

        ctx = JobContext(settings, LocalObjectStore(settings.objects_dir), lambda _id: None)
        later = threading.Timer(0.5, run_job, (job_id, ctx))
        later.start()
        try:
            held = client.get(f"/v1/jobs/{job_id}", params={"wait": MAX_JOB_WAIT_S})
        finally:
            later.join()
        assert held.status_code == 200, held.text
        assert held.json()["status"] == "succeeded"  # asked while queued: answered once it had ended
        assert held.json()["progress"] == 1.0


@pytest.mark.parametrize("wait", ["-1", str(MAX_JOB_WAIT_S + 1), "soon"])
def test_a_bad_wait_is_a_422(tmp_path: Path, wait: str) -> None:
    with TestClient(create_app(embedded_settings(tmp_path / "home"))) as client:
        r = client.get("/v1/jobs/1", params={"wait": wait})
        assert r.status_code == 422, r.text


def test_a_missing_job_is_a_404_at_once(tmp_path: Path) -> None:
    with TestClient(create_app(embedded_settings(tmp_path / "home"))) as client:
        r = client.get("/v1/jobs/12345", params={"wait": MAX_JOB_WAIT_S})
        assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"


class FakeServer:
    """``Client.job`` of a server that holds answers (``holds``) or answers at once; the job ends at
    the ``ends_at``-th request. Time is the test's: a held answer advances the clock by what it held."""

    def __init__(self, holds: bool, ends_at: int) -> None:
        self.holds, self.ends_at = holds, ends_at
        self.asked: list[float] = []
        self.now = 0.0

    def job(self, id: int | str, *, wait: float = 0.0) -> Job:
        self.asked.append(wait)
        if self.holds and len(self.asked) < self.ends_at:
            self.now += wait
        status = "succeeded" if len(self.asked) >= self.ends_at else "running"
        stamp = "2026-12-05T00:00:00Z"
        return Job.model_validate(
            {"id": 7, "kind": "encode", "target": "org/m@1", "status": status, "attempts": 1,
             "progress": 1.0 if status == "succeeded" else 0.5, "error": None,
             "created_at": stamp, "updated_at": stamp}
        )  # fmt: skip


def _wait_with(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        server.now += s

    monkeypatch.setattr(jobs.time, "sleep", sleep)
    monkeypatch.setattr(jobs.time, "monotonic", lambda: server.now)
    client: Any = server
    assert jobs.wait_for_job(client, 7, timeout=None, quiet=True).status == "succeeded"
    return slept


def test_sdk_wait_long_polls_without_sleeping(monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeServer(holds=True, ends_at=4)
    assert _wait_with(server, monkeypatch) == []
    assert server.asked == [0.0, jobs.HOLD_S, jobs.HOLD_S, jobs.HOLD_S]  # the first look, then held asks


def test_sdk_wait_polls_a_server_that_answers_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeServer(holds=False, ends_at=6)
    slept = _wait_with(server, monkeypatch)
    assert len(slept) == 4 and slept == sorted(slept) and slept[-1] <= 0.5  # backing off, at most 0.5 s


def test_sdk_wait_still_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeServer(holds=True, ends_at=10**6)
    monkeypatch.setattr(jobs.time, "monotonic", lambda: server.now)
    client: Any = server
    with pytest.raises(TimeoutError, match="still running after 2.5 s"):
        jobs.wait_for_job(client, 7, timeout=2.5, quiet=True)
    assert server.asked[1:] == [jobs.HOLD_S, jobs.HOLD_S, 0.5]  # the last ask holds only what is left
