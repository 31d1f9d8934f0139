"""One version's encode split across Celery workers (services/encode_split.py): two real
``deltazoo worker`` processes on Redis store exactly what one stores, and a worker SIGKILLed in the middle
of a part resumes to exactly the same stored bytes; both for a checkpoint of 4 weight shards and for a
checkpoint of one weight file, split into tensor ranges.

The module runs its own stack: its own ``redis-server``, S3 server (``weed mini``), a temporary Postgres
database, the API and two workers beating every 0.5 s (a killed worker's part is sent again within
about 1.5 s). Weight files have one tensor stored in chunks (1 MiB chunks here) and many tiny ones; a
split encode cuts them into tensor ranges of about 2 MiB (``DELTAZOO_ENCODE_PART_MB``), so every file is
2 parts: the chunked tensor, and the tiny ones (in the first file more than one row write, so that
part commits rows and progress part-way). Every tensor costs the workers an object store write and the
reads a fetch, so the files hold few of them: the encode's cost is its tensor count, not its bytes.
"""

from __future__ import annotations

import re
import shutil
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import torch
from deltazoo.services.tensor_rows import ROWS_PER_WRITE
from safetensors.torch import save

from tests.servers import DeltazooWorker, log_problems, own_worker_stack, running_api_server
from tests.services import ADMIN_TOKEN
from tests.test_api_support import push, sha, wait_job

pytestmark = [
    pytest.mark.stack,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server on PATH"),
]

SHARDS = 4
PART_MB = 2
SMALL = ROWS_PER_WRITE + 144  # tiny tensors per file: a part of them commits once before it ends


class SplitStack:
    def __init__(self, url: str, database: str, workers: list[DeltazooWorker]) -> None:
        self.url, self.database, self.workers = url, database, workers
        self.engine = sa.create_engine(database)

    def part_jobs(self) -> list[tuple[int, str, float, int]]:
        """(id, status, progress, attempts) of every part job, oldest first."""
        with self.engine.connect() as c:
            query = "SELECT id, status, progress, attempts FROM job WHERE kind = 'encode_file' ORDER BY id"
            rows = c.execute(sa.text(query))
            return [(int(r[0]), str(r[1]), float(r[2]), int(r[3])) for r in rows]

    def part_way(self, job_id: int) -> bool:
        """The part job is running and some of the first shard's ``SMALL`` tiny tensors are committed in
        its file, not all: it is their part, between its two row writes."""
        query = (
            "SELECT j.status, (SELECT count(*) FROM tensor t WHERE t.file_id = j.target_id "
            "AND t.name LIKE :tiny) FROM job j WHERE j.id = :id"
        )
        with self.engine.connect() as c:
            status, tiny = c.execute(sa.text(query), {"id": job_id, "tiny": "layers.0.%"}).one()
        return status == "running" and 0 < int(tiny) < SMALL

    def ran(self, worker: DeltazooWorker, job_id: int) -> bool:
        return bool(re.search(rf"deltazoo-job-{job_id}-\w+\] received", worker.process.log_text()))

    def holds(self, worker: DeltazooWorker, job_id: int) -> bool:
        """``worker`` took a message of the job and has not finished with it. Under load a heartbeat can
        come late and the reaper send a running part again: the other worker then receives it too and
        drops it (``'running'``), so having received it does not make a worker the one running it."""
        log = worker.process.log_text()
        received = len(re.findall(rf"deltazoo-job-{job_id}-\w+\] received", log))
        finished = len(re.findall(rf"deltazoo-job-{job_id}-\w+\] (?:succeeded|raised|retry)", log))
        return received > finished


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SplitStack]:
    root = tmp_path_factory.mktemp("split")
    # every row write committed with its progress as it goes, so a part is seen part-way however fast it runs
    chunked = {
        "DELTAZOO_TENSOR_CHUNK_MB": "1",
        "DELTAZOO_ENCODE_THREADS": "2",
        "DELTAZOO_JOB_COMMIT_EVERY_S": "0",
        "DELTAZOO_ENCODE_PART_MB": str(PART_MB),
    }
    with own_worker_stack(root, chunked) as own, running_api_server(root / "home", own.settings) as api:
        split = SplitStack(api.url, own.database, own.workers)
        try:
            yield split
        finally:
            split.engine.dispose()
    workers = own.workers
    for w in workers:
        problems = log_problems(w.process.log_text())
        assert not problems, w.process.log_tail()


@pytest.fixture
def client(stack: SplitStack) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60
    ) as c:
        yield c


def shards(
    seed: int, parent: dict[str, dict[str, torch.Tensor]] | None = None, count: int = SHARDS
) -> dict[str, dict[str, torch.Tensor]]:
    """``count`` shards of one 3 MiB tensor and tiny tensors (1 KiB) each (a fine-tune of ``parent``
    when given): each cut into 2 tensor ranges, the 3 MiB tensor (3 chunks) and the tiny ones. The
    first shard has ``SMALL`` tiny tensors, which their part writes in two row writes
    (``ROWS_PER_WRITE``): it commits rows and progress part-way, and a worker killed then leaves it half
    done; the other shards have a few (every tensor costs an object store write and read)."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for s in range(count):
        path = "model.safetensors" if count == 1 else f"model-{s + 1:05d}-of-{count:05d}.safetensors"
        if parent is None:
            tiny = SMALL if s == 0 else 16
            state = {f"layers.{s}.{i}.weight": torch.randn(16, 32, generator=g) * 0.02 for i in range(tiny)}
            state[f"big.{s}.weight"] = torch.randn(1536, 1024, generator=g) * 0.02
        else:
            state = {k: v.float() + torch.randn(v.shape, generator=g) * 1e-3 for k, v in parent[path].items()}
        out[path] = {k: v.to(torch.bfloat16) for k, v in state.items()}
    return out


State = dict[str, dict[str, torch.Tensor]]
PAIRS: dict[str, tuple[State, State]] = {}  # layout -> (base, fine-tune), built when first used


def pair(layout: str) -> tuple[State, State]:
    if layout not in PAIRS:
        count, seed = (SHARDS, 1) if layout == "4 files" else (1, 3)
        base = shards(seed, count=count)
        PAIRS[layout] = (base, shards(seed + 1, base, count=count))
    return PAIRS[layout]


def parts_of(state: State) -> int:
    """Part jobs of a split encode of ``state``: ``ceil(size / PART_MB)`` tensor ranges per file."""
    return sum(-(-len(data) // (PART_MB << 20)) for data in files_of(state).values())


def files_of(state: dict[str, dict[str, torch.Tensor]]) -> dict[str, bytes]:
    return {path: save(tensors) for path, tensors in state.items()}


def stored(client: httpx.Client, model: str) -> dict[str, Any]:
    """What a version stored: per tensor its encoding, size, parent, blob and chunks (ids aside)."""
    manifest = client.get(f"/v1/models/{model}/versions/latest/manifest").json()
    detail = client.get(f"/v1/models/{model}/versions/latest").json()
    tensors = sorted(
        (f["path"], t["name"], t.get("encoding"), t["blob"], repr(t.get("chunks")))
        for f in manifest["files"]
        for t in f.get("tensors", [])
    )
    # the pair is pushed again after a delete, under new revision numbers: a parent is named without its
    rows = sorted(
        (t["name"], t["encoding"], t["stored_bytes"], re.sub(r"@\d+:", "@REV:", str(t["parent"])))
        for t in detail["tensors"]
    )
    return {"tensors": tensors, "rows": rows, "stored_bytes": detail["stored_bytes"]}


def push_pair(client: httpx.Client, layout: str) -> tuple[int, int]:
    """Push the base and its fine-tune; returns their encode jobs' ids (the fine-tune's not awaited)."""
    base, ft = pair(layout)
    pushed = push(client, "split/base", files_of(base))
    base_job, base_ref = pushed["job"], pushed["version"]["ref"]
    assert wait_job(client, base_job["id"], timeout_s=600)["status"] == "succeeded"
    return base_job["id"], push(client, "split/ft", files_of(ft), base=base_ref)["job"]["id"]


def finish_and_read(client: httpx.Client, ft_job: int, layout: str) -> dict[str, Any]:
    done = wait_job(client, ft_job, timeout_s=600)  # patience, not a threshold: the machine may be loaded
    assert done["status"] == "succeeded", done
    base, ft = pair(layout)
    for model, state in (("split/base", base), ("split/ft", ft)):
        for path, data in files_of(state).items():
            r = client.get(f"/v1/models/{model}/versions/latest/files/{path}")
            assert r.status_code == 200 and sha(r.content) == sha(data), f"{model}/{path} is not exact"
    return {"base": stored(client, "split/base"), "ft": stored(client, "split/ft")}


def delete_pair(client: httpx.Client) -> None:
    for model in ("split/ft", "split/base"):
        assert client.delete(f"/v1/models/{model}").status_code == 204


ONE_WORKER: dict[str, dict[str, Any]] = {}  # layout -> what one worker stored
LAYOUTS = ["4 files", "1 file"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_two_workers_store_exactly_what_one_worker_stores(
    stack: SplitStack, client: httpx.Client, layout: str
) -> None:
    first, second = stack.workers
    second.process.stop(grace=15.0)
    try:
        _, ft_job = push_pair(client, layout)
        ONE_WORKER[layout] = finish_and_read(client, ft_job, layout)
    finally:
        second.start()
    delete_pair(client)
    before = {p[0] for p in stack.part_jobs()}

    _, ft_job = push_pair(client, layout)
    assert finish_and_read(client, ft_job, layout) == ONE_WORKER[layout]
    parts = [p for p in stack.part_jobs() if p[0] not in before]
    base, ft = pair(layout)
    assert len(parts) == parts_of(base) + parts_of(ft) and all(p[1] == "succeeded" for p in parts)
    for worker in stack.workers:  # the parts were shared out, not run by one worker
        assert any(stack.ran(worker, p[0]) for p in parts), worker.process.log_tail()
    delete_pair(client)
    enc = {row[0]: row[1] for row in ONE_WORKER[layout]["ft"]["rows"]}
    assert enc["big.0.weight"] == "delta"  # a tiny layer may be stored as its bytes are (``plain``)
    assert enc["layers.0.0.weight"] in ("delta", "plain")


def frozen_part_way(
    stack: SplitStack, client: httpx.Client, before: set[int], ft_job: int
) -> tuple[int, DeltazooWorker]:
    """A part of the fine-tune's encode seen part-way, and the worker running it stopped (SIGSTOP) there.
    The part is looked at again once its worker is frozen: one that finished in between lets the worker
    go on (SIGCONT) and the search goes on, so the kill that follows lands mid-part whatever the timing."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        for job_id, status, _, _ in stack.part_jobs():
            if job_id in before or status != "running" or not stack.part_way(job_id):
                continue
            holders = [w for w in stack.workers if stack.holds(w, job_id)]
            if len(holders) != 1:
                continue
            holders[0].process.signal(signal.SIGSTOP)
            time.sleep(0.5)  # a commit it had sent already lands
            if stack.part_way(job_id):
                return job_id, holders[0]
            holders[0].process.signal(signal.SIGCONT)
        if client.get(f"/v1/jobs/{ft_job}").json()["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.05)
    pytest.fail("no part of the fine-tune's encode was seen part-way (its tiny tensors half committed)")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_worker_killed_mid_part_resumes_to_the_same_bytes(
    stack: SplitStack, client: httpx.Client, layout: str
) -> None:
    if layout not in ONE_WORKER:
        pytest.skip("needs the one-worker bytes of the test before")
    before = {p[0] for p in stack.part_jobs()}
    _, ft_job = push_pair(client, layout)
    job_id, worker = frozen_part_way(stack, client, before, ft_job)
    worker.process.kill()  # SIGKILL, as a crashed host: the part stays half committed
    worker.start()
    assert finish_and_read(client, ft_job, layout) == ONE_WORKER[layout]
    parts = {p[0]: p for p in stack.part_jobs() if p[0] not in before}
    assert parts[job_id][1] == "succeeded" and parts[job_id][3] >= 2, "the killed part was not run again"
    delete_pair(client)
