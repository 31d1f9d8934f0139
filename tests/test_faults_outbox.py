"""The full stack when its broker, API or database go away (issue 19): nothing is stranded.

The module runs a stack of its own: its own ``redis-server`` on a free port (stopped and started again
here, never the machine's shared Redis), its own S3 server (``weed mini``), a temporary Postgres
database, the API and two ``deltazoo worker`` processes. Workers beat every 0.5 s, so a job whose
message was lost is sent again about 1.5 s after the broker answers (workers/outbox.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import save_file

from tests.servers import (
    ApiServer,
    DeltazooWorker,
    OwnRedis,
    log_problems,
    own_worker_stack,
    start_api_server,
)
from tests.services import (
    ADMIN_TOKEN,
    S3Server,
    child_env,
    wait_until,
)
from tests.test_api_support import base_state, checkpoint, sha, wait_job

pytestmark = [
    pytest.mark.stack,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server on PATH"),
]

READY_BOUND_S = 120  # all versions ready within this many seconds of the broker's return


class OutboxStack:
    def __init__(
        self,
        redis: OwnRedis,
        s3: S3Server,
        api: ApiServer,
        workers: list[DeltazooWorker],
        settings: dict[str, str],
    ) -> None:
        self.redis, self.s3, self.api, self.workers, self.settings = redis, s3, api, workers, settings

    def restart_api(self) -> None:
        """A new API process on the same home (its part files) and database, after the old one died
        (its log goes on in the same file)."""
        self.api = start_api_server(self.api.home, self.settings)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OutboxStack]:
    root = tmp_path_factory.mktemp("outbox")
    with own_worker_stack(root) as own:
        stack = OutboxStack(
            own.redis, own.s3, start_api_server(root / "home", own.settings), own.workers, own.settings
        )
        try:
            yield stack
        finally:
            stack.api.stop()
    workers = own.workers
    problems = [p for p in log_problems(stack.api.process.log_text()) if '" 503' not in p]
    assert not problems, "\n\n".join(problems[:5])
    for w in workers:
        text = w.process.log_text()
        assert "UniqueViolation" not in text and "IntegrityError" not in text, w.process.log_tail()


@pytest.fixture
def client(stack: OutboxStack) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=stack.api.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60
    ) as c:
        yield c


def upload_all(client: httpx.Client, model: str, files: dict[str, bytes]) -> int:
    """Create the model and a version and upload its files; returns the revision (not committed)."""
    assert client.post("/v1/models", json={"name": model, "exist_ok": True}).status_code in (200, 201)
    body = {"files": [{"path": p, "size": len(d), "sha256": sha(d)} for p, d in files.items()]}
    r = client.post(f"/v1/models/{model}/versions", json=body)
    assert r.status_code == 201, r.text
    rev = int(r.json()["version"]["revision"])
    for up in r.json()["uploads"]:
        if up["needed"]:
            r = client.put(f"/v1/models/{model}/versions/{rev}/files/{up['path']}", content=files[up["path"]])
            assert r.status_code == 200, r.text
    return rev


def assert_exact(client: httpx.Client, model: str, files: dict[str, bytes], rev: int = 1) -> None:
    for path, data in files.items():
        r = client.get(f"/v1/models/{model}/versions/{rev}/files/{path}")
        assert r.status_code == 200, r.text
        assert sha(r.content) == sha(data), f"{model}@{rev}/{path} is not bit-exact"


def test_broker_down_while_three_pushes_commit(
    stack: OutboxStack, client: httpx.Client, unique_org: str
) -> None:
    pushes = {f"{unique_org}/b{i}": checkpoint(base_state(seed=40 + i)) for i in range(3)}
    revs = {m: upload_all(client, m, f) for m, f in pushes.items()}
    stack.redis.stop()
    down_at = time.monotonic()
    answers: dict[str, httpx.Response] = {}
    try:
        for model, rev in revs.items():  # one after another while the broker is away
            answers[model] = client.post(f"/v1/models/{model}/versions/{rev}/commit")
        assert [r.status_code for r in answers.values()] == [202, 202, 202], [
            r.text for r in answers.values()
        ]
        time.sleep(max(0.0, 15.0 - (time.monotonic() - down_at)))  # the broker stays away ~15 s
        for model in pushes:  # nothing could run: the versions wait, they do not fail
            assert client.get(f"/v1/models/{model}/versions/1").json()["status"] == "processing"
    finally:
        stack.redis.start()
    back_at = time.monotonic()
    for model, answer in answers.items():
        left = READY_BOUND_S - (time.monotonic() - back_at)
        job = wait_job(client, answer.json()["job"]["id"], timeout_s=max(1.0, left))
        print(f"{model} ready {time.monotonic() - back_at:.1f} s after the broker came back")
        assert job["status"] == "succeeded", (
            f"{model} not ready {READY_BOUND_S} s after the broker came back: {job}"
        )
    for model, files in pushes.items():
        assert client.get(f"/v1/models/{model}/versions/1").json()["status"] == "ready"
        assert_exact(client, model, files)


def test_a_stuck_version_can_be_deleted(stack: OutboxStack, client: httpx.Client, unique_org: str) -> None:
    """A committed version nobody works on (workers stopped) is cancelled by DELETE, not refused."""
    files = checkpoint(base_state(seed=50))
    model = f"{unique_org}/stuck"
    rev = upload_all(client, model, files)
    for w in stack.workers:
        w.process.stop(grace=15.0)
    try:
        r = client.post(f"/v1/models/{model}/versions/{rev}/commit")
        assert r.status_code == 202, r.text
        job_id = r.json()["job"]["id"]
        r = client.delete(f"/v1/models/{model}/versions/{rev}")
        assert r.status_code == 204, r.text
        assert client.get(f"/v1/models/{model}/versions/{rev}").status_code == 404
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "failed" and "cancelled" in job["error"], job
    finally:
        for w in stack.workers:
            w.start()
    # the same files pushed again become a ready version (nothing of the cancelled one is in the way)
    rev = upload_all(client, model, files)
    r = client.post(f"/v1/models/{model}/versions/{rev}/commit")
    assert r.status_code == 202, r.text
    assert wait_job(client, r.json()["job"]["id"])["status"] == "succeeded"
    assert_exact(client, model, files, rev)


GIVE_UP_SOON = {"DELTAZOO_RETRIES": "1", "DELTAZOO_OUTAGE_WAIT_S": "0"}  # a push that fails on the fault


def _push(stack: OutboxStack, folder: Path, model: str, cache: Path, **extra: str) -> subprocess.Popen[str]:
    """``deltazoo push FOLDER --name MODEL --wait`` as a user runs it, against the current API."""
    env = child_env(
        {
            "DELTAZOO_URL": stack.api.url,
            "DELTAZOO_TOKEN": ADMIN_TOKEN,
            "DELTAZOO_CACHE": str(cache),
            "DELTAZOO_UPLOAD_PART_MB": "1",
            **extra,
        }
    )
    argv = [sys.executable, "-m", "deltazoo.cli", "push", str(folder), "--name", model, "--wait", "--quiet"]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_api_killed_mid_upload_then_the_same_push_resumes(
    stack: OutboxStack, client: httpx.Client, unique_org: str, tmp_path: Path
) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    g = torch.Generator().manual_seed(60)
    save_file(
        {"w": torch.randn(4096, 6144, generator=g).to(torch.bfloat16)}, str(folder / "model.safetensors")
    )
    data = (folder / "model.safetensors").read_bytes()
    model = f"{unique_org}/resumed"
    parts = stack.api.home / "uploads"

    first = _push(stack, folder, model, tmp_path / "cache", **GIVE_UP_SOON)
    held = 0

    def part_growing() -> bool:
        nonlocal held
        assert first.poll() is None, f"the push ended before the fault: {first.communicate()}"
        held = max((p.stat().st_size for p in parts.glob("*.part")), default=0)
        return held >= 4 << 20

    wait_until(part_growing, timeout=120, what="4 MiB of the upload on the API's disk", interval=0.002)
    os.kill(first.pid, signal.SIGSTOP)  # hold the client still while the API dies under it
    try:
        stack.api.process.kill()
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out, err = first.communicate(timeout=120)
    assert first.returncode != 0, f"the push did not notice the API going away: {out} {err}"
    assert "Traceback" not in err, err

    stack.restart_api()
    with httpx.Client(base_url=stack.api.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as c:
        received = c.get(f"/v1/models/{model}/versions/1/uploads/model.safetensors").json()["received"]
        assert 0 < received < len(data), received
        pending = [p for p in c.get("/v1/pending").json()["items"] if p["name"] == model]
        assert [(p["revision"], p["held_bytes"]) for p in pending] == [(1, received)]

        second = _push(stack, folder, model, tmp_path / "cache")
        out, err = second.communicate(timeout=300)
        assert second.returncode == 0, f"{out}\n{err}"
        sent = re.search(r"resumed \S+@1: sent (\d+) bytes", err)
        assert sent is not None, err
        assert int(sent.group(1)) == len(data) - received, "bytes the server held were sent again"

        versions = c.get(f"/v1/models/{model}").json()["versions"]
        assert [(v["revision"], v["status"]) for v in versions] == [(1, "ready")]
        assert not [p for p in c.get("/v1/pending").json()["items"] if p["name"] == model]
        assert_exact(c, model, {"model.safetensors": data})


def test_incomplete_multipart_uploads_and_unnamed_objects_are_swept(
    stack: OutboxStack, client: httpx.Client, unique_org: str, tmp_path: Path
) -> None:
    """What an S3 outage mid-upload leaves (a multipart upload the client could not abort, an object no
    row names) is listed by ``deltazoo admin audit`` and removed by ``--repair``; the rest is untouched."""
    import io

    files = checkpoint(base_state(seed=80))
    model = f"{unique_org}/kept"
    rev = upload_all(client, model, files)
    r = client.post(f"/v1/models/{model}/versions/{rev}/commit")
    assert r.status_code == 202, r.text
    assert wait_job(client, r.json()["job"]["id"])["status"] == "succeeded"

    s3, bucket = stack.s3.client(), stack.s3.bucket
    abandoned = "staging/" + "f" * 32
    upload_id = s3._create_multipart_upload(bucket, abandoned, {"Content-Type": "application/octet-stream"})
    s3._upload_part(bucket, abandoned, b"x" * (5 << 20), None, upload_id, 1)
    stray = "blobs/ee/" + "e" * 64
    s3.put_object(bucket, stray, io.BytesIO(b"no row names me"), length=15)

    env = child_env({**stack.settings, "DELTAZOO_HOME": str(tmp_path / "home")})
    argv = [sys.executable, "-m", "deltazoo.cli", "admin", "audit", "--grace-hours", "0", "--json"]
    found = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert found.returncode == 1 and "Traceback" not in found.stderr, found
    report = json.loads(found.stdout)
    assert abandoned in report["incomplete_uploads"] and stray in report["orphan_blobs"], report
    assert report["missing_blobs"] == [] and report["missing_staging"] == [], report

    fixed = subprocess.run(
        [*argv, "--repair"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert fixed.returncode == 0, fixed
    assert not s3._list_multipart_uploads(bucket).uploads, "an incomplete multipart upload is left"
    assert not any(
        o.object_name == stray for o in s3.list_objects(bucket, prefix="blobs/ee/", recursive=True)
    )
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert again.returncode == 0, again
    assert_exact(client, model, files, rev)


def test_s3_down_longer_than_the_sdk_retries_then_the_same_push_resumes(
    stack: OutboxStack, client: httpx.Client, unique_org: str, tmp_path: Path
) -> None:
    """The store is away when the last part arrives: the upload is kept on the API's disk, the push
    gives up (one retry), and once the store is back the same push sends only the last part again."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    g = torch.Generator().manual_seed(90)
    save_file(
        {"w": torch.randn(1024, 3072, generator=g).to(torch.bfloat16)}, str(folder / "model.safetensors")
    )
    data = (folder / "model.safetensors").read_bytes()
    model = f"{unique_org}/s3away"
    s3 = stack.s3
    s3.process.stop(grace=5.0)
    try:
        first = _push(stack, folder, model, tmp_path / "cache", **GIVE_UP_SOON)
        out, err = first.communicate(timeout=300)
        assert first.returncode != 0 and "Traceback" not in err, f"{out}\n{err}"
        received = client.get(f"/v1/models/{model}/versions/1/uploads/model.safetensors").json()["received"]
        assert 0 < received < len(data), received
    finally:
        s3.process.start()
        wait_until(lambda: _bucket_answers(s3), timeout=60, what="the S3 server answering again")
    second = _push(stack, folder, model, tmp_path / "cache")
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, f"{out}\n{err}"
    sent = re.search(r"resumed \S+@1: sent (\d+) bytes", err)
    assert sent is not None and int(sent.group(1)) == len(data) - received, err
    assert [v["status"] for v in client.get(f"/v1/models/{model}").json()["versions"]] == ["ready"]
    assert_exact(client, model, {"model.safetensors": data})
    env = child_env({**stack.settings, "DELTAZOO_HOME": str(tmp_path / "home")})
    argv = [
        sys.executable,
        "-m",
        "deltazoo.cli",
        "admin",
        "audit",
        "--grace-hours",
        "0",
        "--repair",
        "--json",
    ]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done
    assert not s3.client()._list_multipart_uploads(s3.bucket).uploads


def _bucket_answers(s3: S3Server) -> bool:
    try:
        return bool(s3.client().bucket_exists(s3.bucket))
    except Exception:  # noqa: BLE001 - not up yet
        return False
