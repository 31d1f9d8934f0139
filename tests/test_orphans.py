"""The object-store audit and sweep (services/orphans.py, ``deltazoo admin audit``) on the
embedded default: what no row names is reported, and removed only once older than the grace period;
nothing a row names is ever touched, and every pull stays exact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from deltazoo.api.app import create_app
from deltazoo.registry.db import session_scope
from deltazoo.registry.objectstore import LocalObjectStore
from deltazoo.registry.settings import Settings
from deltazoo.services.orphans import audit_store
from fastapi.testclient import TestClient

from tests.services import child_env
from tests.test_api_support import base_state, checkpoint, push, sha, wait_job

DAY = 24 * 3600


def settings_for(home: Path) -> Settings:
    return Settings(home=home, database_url=None, broker_url=None, s3_endpoint=None, auth=False)


@pytest.fixture
def zoo(tmp_path: Path) -> Iterator[tuple[TestClient, Settings, dict[str, bytes]]]:
    settings = settings_for(tmp_path / "home")
    files = checkpoint(base_state(seed=70))
    with TestClient(create_app(settings)) as client:
        job = push(client, "org/base", files)["job"]
        assert wait_job(client, job["id"])["status"] == "succeeded"
        yield client, settings, files


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _leftovers(root: Path) -> dict[str, Path]:
    """One of each kind of leftover, a day old, and a young orphan blob (a write in flight)."""
    made = {
        "staging": root / "staging" / ("0" * 32),
        "blob": root / "blobs" / "ab" / ("ab" + "1" * 62),
        "tmp": root / "tmp" / "tmpinterrupted",
        "young": root / "blobs" / "cd" / ("cd" + "2" * 62),
    }
    for path in made.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"left behind")
    for kind in ("staging", "blob", "tmp"):
        _age(made[kind], DAY)
    return made


def test_audit_reports_then_repairs_only_old_unnamed_objects(
    zoo: tuple[TestClient, Settings, dict[str, bytes]],
) -> None:
    client, settings, files = zoo
    store = LocalObjectStore(settings.objects_dir)
    named = sorted(p for p in (settings.objects_dir / "blobs").rglob("*") if p.is_file())
    assert named, "the push stored no blob"
    made = _leftovers(settings.objects_dir)
    for path in named:  # old as well: age alone never removes an object a row names
        _age(path, DAY)

    with session_scope(settings) as s:
        report = audit_store(s, store, timedelta(hours=6), repair=False)
    assert report.incomplete_uploads == ["tmp/tmpinterrupted"]
    assert report.orphan_staging == [f"staging/{'0' * 32}"]
    assert report.orphan_blobs == [f"blobs/ab/ab{'1' * 62}"]
    assert report.missing_blobs == [] and report.missing_staging == []
    assert all(p.exists() for p in made.values()), "a report-only audit deleted something"

    with session_scope(settings) as s:
        audit_store(s, store, timedelta(hours=6), repair=True)
    assert [k for k, p in made.items() if p.exists()] == ["young"], "the grace period was not kept"
    assert all(p.exists() for p in named), "an object a row names was deleted"
    with session_scope(settings) as s:
        again = audit_store(s, store, timedelta(hours=6), repair=False)
    assert again.clean(), again
    for path, data in files.items():
        r = client.get(f"/v1/models/org/base/versions/1/files/{path}")
        assert r.status_code == 200 and sha(r.content) == sha(data)


def test_audit_reports_a_blob_row_whose_object_is_gone(
    zoo: tuple[TestClient, Settings, dict[str, bytes]],
) -> None:
    _, settings, _ = zoo
    victim = next(p for p in (settings.objects_dir / "blobs").rglob("*") if p.is_file())
    victim.unlink()
    with session_scope(settings) as s:
        report = audit_store(s, LocalObjectStore(settings.objects_dir), timedelta(hours=6), repair=True)
    assert report.missing_blobs == [f"blobs/{victim.parent.name}/{victim.name}"]


def test_admin_audit_command(zoo: tuple[TestClient, Settings, dict[str, bytes]], tmp_path: Path) -> None:
    _, settings, _ = zoo
    made = _leftovers(settings.objects_dir)
    env = child_env({"DELTAZOO_HOME": str(settings.home)})
    argv = [sys.executable, "-m", "deltazoo.cli", "admin", "audit"]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*argv, *extra], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
        )

    found = run()
    assert found.returncode == 1, found  # leftovers found and not removed
    assert "blob objects no blob row names, found: 1" in found.stdout and "--repair" in found.stdout
    repaired = run("--repair", "--json")
    assert repaired.returncode == 0 and "Traceback" not in repaired.stderr, repaired
    assert json.loads(repaired.stdout)["orphan_staging"] == [f"staging/{'0' * 32}"]
    assert [k for k, p in made.items() if p.exists()] == ["young"]
    young = run("--repair", "--grace-hours", "0")
    assert young.returncode == 0, young
    assert not made["young"].exists()
