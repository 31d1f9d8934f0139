"""The Celery settings the full stack's recovery relies on (workers/celery_app.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from deltazoo.registry.settings import Settings
from deltazoo.workers.celery_app import make_celery
from deltazoo.workers.outbox import _TASK_ID, task_id


def test_late_acks_and_a_visibility_timeout_above_the_longest_job() -> None:
    conf = make_celery(Settings(broker_url="redis://127.0.0.1:1/0")).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    # a message is handed to a second worker only after the visibility timeout: never while the first
    # one may still legitimately run the job
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit


def test_task_ids_name_their_job_for_the_outbox_sweep() -> None:
    ids = {task_id(42) for _ in range(3)}
    assert len(ids) == 3, "each send needs its own task id"
    for tid in ids:
        assert [int(m) for m in _TASK_ID.findall(f'{{"id": "{tid}"}}'.encode())] == [42]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server on PATH")
def test_the_sweep_sees_messages_waiting_in_the_broker(tmp_path: Path) -> None:
    """A job whose message waits in the queue counts as sent (it is not sent again); an unreadable
    broker gives None (nothing is sent that round). A Redis of its own: no worker takes the messages."""
    from tests.test_faults_outbox import OwnRedis

    redis = OwnRedis(tmp_path)
    redis.start()
    try:
        _sweep_sees_messages(redis.url)
    finally:
        redis.stop()


def _sweep_sees_messages(url: str) -> None:
    from deltazoo.workers.celery_app import CeleryDispatcher
    from deltazoo.workers.outbox import live_job_ids

    app = make_celery(Settings(broker_url=url))
    for job_id in (7, 9):
        CeleryDispatcher(app).submit(job_id)
    assert live_job_ids(app) == {7, 9}
    down = make_celery(Settings(broker_url="redis://127.0.0.1:1/0"))
    CeleryDispatcher(down).submit(11)  # logged, not raised: the job row stays queued for the sweep
    assert live_job_ids(down) is None
