"""The full stack with no worker running: a push is committed and kept, and a client waiting on its
encode is told why nothing moves instead of watching a bar stay at 0 % without a word."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deltazoo import Client
from tests.servers import OwnRedis, full_stack_env, start_api_server
from tests.services import S3Server
from tests.test_api_support import base_state, checkpoint, write_dir

pytestmark = [
    pytest.mark.stack,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server on PATH"),
]
ADMIN = "no-worker-admin"


def test_waiting_on_a_job_no_worker_takes_says_why(
    tmp_path: Path,
    s3_server: S3Server,
    empty_postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from deltazoo import jobs

    monkeypatch.setattr(jobs, "QUEUED_NOTE_S", 0.5)
    redis = OwnRedis(tmp_path)  # a broker of its own: no worker of the suite reads it
    redis.start()
    api = start_api_server(tmp_path / "home", full_stack_env(empty_postgres_url, redis.url, s3_server, ADMIN))
    try:
        with Client(api.url, token=ADMIN, cache_dir=tmp_path / "cache") as client:
            folder = write_dir(tmp_path / "ckpt", checkpoint(base_state(seed=2)))
            with pytest.raises(TimeoutError):
                client.push(folder, "acme/stuck", wait=True, timeout=3)
            assert client.version_info("acme/stuck@1").status == "processing"  # committed, kept
    finally:
        api.stop()
        redis.stop()
    err = capsys.readouterr().err
    assert err.count("is still queued") == 1 and "deltazoo worker" in err, err
