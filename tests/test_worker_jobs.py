"""Jobs: idempotent re-runs, resuming jobs left queued by a stopped server, chain re-anchoring."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from deltazoo.api.app import create_app
from deltazoo.registry.objectstore import LocalObjectStore
from deltazoo.workers.jobs import JobContext, run_job
from fastapi.testclient import TestClient

from tests.test_api_roundtrip import embedded_settings
from tests.test_api_support import base_state, checkpoint, finetune_state, push, sha, wait_job


def test_running_a_finished_job_again_changes_nothing(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path / "home")
    with TestClient(create_app(settings)) as client:
        job = push(client, "org/base", checkpoint(base_state()))["job"]
        assert wait_job(client, job["id"])["status"] == "succeeded"
        before = client.get("/v1/stats").json()
        ctx = JobContext(settings, LocalObjectStore(settings.objects_dir), lambda _id: None)
        assert run_job(job["id"], ctx) == "succeeded"
        assert client.get("/v1/stats").json() == before
        assert run_job(10_000, ctx) == "missing"


def test_jobs_left_queued_are_run_at_next_start(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path / "home")
    files = checkpoint(base_state())
    sent: list[int] = []
    with TestClient(create_app(settings)) as client:
        client.app.state.dispatcher.stop()  # type: ignore[attr-defined]
        client.app.state.dispatcher = type("Recorder", (), {"submit": staticmethod(sent.append)})()  # type: ignore[attr-defined]
        job = push(client, "org/base", files)["job"]
        assert sent == [job["id"]]
        assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    with TestClient(create_app(settings)) as client:  # a new process: the runner picks the job up
        assert wait_job(client, job["id"])["status"] == "succeeded"
        data = client.get("/v1/models/org/base/versions/1/files/model.safetensors").content
        assert sha(data) == sha(files["model.safetensors"])


def test_deep_chains_are_re_anchored(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path / "home").model_copy(update={"max_chain_depth": 1})
    with TestClient(create_app(settings)) as client:
        # tensors large enough that a delta takes less than their bytes (a tiny one is stored as it is)
        s0 = {k: v.repeat(8, 1) if v.dim() == 2 else v for k, v in base_state().items()}
        s1 = finetune_state(s0, seed=1)
        s1["lm_head.weight"] = s1["lm_head.weight"].repeat(8, 1)  # new in s1: plain, depth 0
        s2 = finetune_state(s1, seed=2)
        s2["embed.weight"] = s2["embed.weight"][: s1["embed.weight"].shape[0]]
        g = torch.Generator().manual_seed(3)
        s2["lm_head.weight"] = (
            s1["lm_head.weight"].float() + torch.randn(416, 32, generator=g) * 1e-3
        ).bfloat16()
        parent = None
        for i, state in enumerate((s0, s1, s2)):
            answer = push(client, f"org/m{i}", checkpoint(state), base=parent)
            assert wait_job(client, answer["job"]["id"])["status"] == "succeeded"
            parent = f"org/m{i}@1"
        enc1 = {
            t["name"]: t["encoding"] for t in client.get("/v1/models/org/m1/versions/1").json()["tensors"]
        }
        enc2 = {
            t["name"]: t["encoding"] for t in client.get("/v1/models/org/m2/versions/1").json()["tensors"]
        }
        assert enc1["layers.0.q.weight"] == "delta"
        assert enc2["layers.0.q.weight"] == "plain"  # its parent is already one delta deep
        assert enc2["lm_head.weight"] == "delta"  # the parent's lm_head is plain: depth 0
        r = client.get("/v1/models/org/m2/versions/1/files/model.safetensors")
        assert sha(r.content) == sha(checkpoint(s2)["model.safetensors"])


class FlakyStore(LocalObjectStore):
    """Drops the connection on the n-th ranged read (a transient error), then works."""

    def __init__(self, root: Path, fail_at: int) -> None:
        super().__init__(root)
        self.reads, self.fail_at = 0, fail_at

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        self.reads += 1
        if self.reads == self.fail_at:
            raise ConnectionError("object store connection dropped")
        return super().get_range(key, offset, length)


def test_interrupted_encode_resumes_where_it_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import deltazoo.workers.jobs  # noqa: F401 (loads workers.jobs)

    # one lane: the read that fails then comes after some tensors are committed (several lanes read
    # ahead; tests/test_encode_parallel.py crashes those mid-file)
    # and a commit after every tensor
    update = {"encode_threads": 1, "job_commit_every_s": 0.0}
    settings = embedded_settings(tmp_path / "home").model_copy(update=update)
    base = base_state()
    files = {"base": checkpoint(base), "ft": checkpoint(finetune_state(base))}
    with TestClient(create_app(settings)) as client:
        assert wait_job(client, push(client, "org/base", files["base"])["job"]["id"])["status"] == "succeeded"
        client.app.state.dispatcher.stop()  # type: ignore[attr-defined]
        client.app.state.dispatcher = type("Recorder", (), {"submit": staticmethod(lambda _id: None)})()  # type: ignore[attr-defined]
        job = push(client, "org/ft", files["ft"], base="org/base@1")["job"]
        flaky = FlakyStore(settings.objects_dir, fail_at=6)  # header reads, then a few tensors
        ctx = JobContext(settings, flaky, lambda _id: None)
        with pytest.raises(ConnectionError):
            run_job(job["id"], ctx)
        partial = client.get("/v1/models/org/ft/versions/1").json()
        assert partial["status"] == "processing" and 0 < len(partial["tensors"]) < 6
        assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
        assert run_job(job["id"], ctx) == "succeeded"
        detail = client.get("/v1/models/org/ft/versions/1").json()
        assert detail["status"] == "ready" and len(detail["tensors"]) == 6
        base_stored = client.get("/v1/models/org/base/versions/1").json()["stored_bytes"]
        assert base_stored + detail["stored_bytes"] == client.get("/v1/stats").json()["stored_bytes"]
        for path, data in files["ft"].items():
            assert sha(client.get(f"/v1/models/org/ft/versions/1/files/{path}").content) == sha(data)


def test_runner_marks_a_job_failed_when_transient_errors_persist(tmp_path: Path) -> None:
    from deltazoo.workers.runner import InProcessRunner

    settings = embedded_settings(tmp_path / "home")
    with TestClient(create_app(settings)) as client:
        client.app.state.dispatcher.stop()  # type: ignore[attr-defined]
        client.app.state.dispatcher = type("Recorder", (), {"submit": staticmethod(lambda _id: None)})()  # type: ignore[attr-defined]
        job = push(client, "org/base", checkpoint(base_state()))["job"]
        dead = FlakyStore(settings.objects_dir, fail_at=0)
        dead.get_range = lambda *_a: (_ for _ in ()).throw(ConnectionError("store is down"))  # type: ignore[method-assign]
        runner = InProcessRunner(JobContext(settings, dead, lambda _id: None), retries=1, backoff_s=0.0)
        runner.submit(job["id"])
        done = wait_job(client, job["id"])
        runner.stop(wait=True)
        assert done["status"] == "failed" and "transient" in done["error"]
        version = client.get("/v1/models/org/base/versions/1").json()
        assert version["status"] == "failed" and version["status_message"] == done["error"]


def test_an_encode_never_waits_behind_evaluations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Embedded default: registering a text queues an evaluation of every ready version (minutes of
    work), and a push behind them waited minutes. Evaluations run in a lane of their own: here one is
    held running while a push is encoded to the end."""
    import threading

    from deltazoo.workers import jobs

    release, started = threading.Event(), threading.Event()

    def held_evaluation(session: object, job: object, ctx: object) -> None:
        started.set()
        release.wait(600)

    monkeypatch.setitem(jobs.HANDLERS, "evaluate", held_evaluation)
    with TestClient(create_app(embedded_settings(tmp_path / "home"))) as client:
        first = push(client, "org/base", checkpoint(base_state(seed=1)))["job"]
        assert wait_job(client, first["id"])["status"] == "succeeded"
        text = b"some held-out text " * 20
        assert client.post("/v1/texts", params={"name": "t"}, content=text).status_code == 201
        assert started.wait(30), "no evaluation started"
        try:
            later = push(client, "org/later", checkpoint(base_state(seed=2)))["job"]
            assert wait_job(client, later["id"], timeout_s=30)["status"] == "succeeded"
        finally:
            release.set()
