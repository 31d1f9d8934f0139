"""Edges users hit (found by probing the running service): an empty file, a pulled file edited in place,
moving refs offline, a push without ``--wait`` or interrupted while waiting, ``--json`` on every transfer
command, output piped into ``head``, malformed settings, ``admin audit`` away from a server, revision order.

Against a real embedded server (uvicorn subprocess); CLI commands go through ``deltazoo.cli.main``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deltazoo import Client, DeltazooError, NotFoundError
from deltazoo.refs import Ref, ref_order
from tests.checkpoints import CheckpointPair, file_sha256
from tests.cli_support import run_cli

PROFILE = "deltadq:n=1,m=32,bits=4"


def test_an_empty_file_is_pushed_and_pulled(
    embedded_server: str, checkpoint_pair: CheckpointPair, unique_org: str, tmp_path: Path
) -> None:
    folder = tmp_path / "with-empty"
    folder.mkdir()
    for f in checkpoint_pair.base.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "added_tokens.txt").write_bytes(b"")
    with Client(embedded_server, cache_dir=tmp_path / "cache") as c:
        v = c.push(folder, f"{unique_org}/empty", quiet=True)
        out = c.pull(v.ref, tmp_path / "out", quiet=True)
    assert (out / "added_tokens.txt").stat().st_size == 0
    for f in folder.iterdir():
        assert file_sha256(out / f.name) == file_sha256(f), f.name


def test_a_pulled_file_edited_in_place_never_changes_a_later_pull(
    embedded_server: str, checkpoint_pair: CheckpointPair, unique_org: str, tmp_path: Path
) -> None:
    """Pulled files are links to the cache's read-only blobs; root (or a chmod) can still write through
    one. The next pull notices the blob moved, checks it, and fetches it again."""
    cache = tmp_path / "cache"
    original = file_sha256(checkpoint_pair.base / "model.safetensors")
    with Client(embedded_server, cache_dir=cache) as c:
        v = c.push(checkpoint_pair.base, f"{unique_org}/edited", quiet=True)
        first = c.pull(v.ref, tmp_path / "first", quiet=True) / "model.safetensors"
    first.chmod(0o644)
    with first.open("r+b") as f:  # same size, other bytes: only the hash tells
        f.seek(-10, os.SEEK_END)
        f.write(b"\xff" * 10)
    with Client(embedded_server, cache_dir=cache) as c:
        second = c.pull(v.ref, tmp_path / "second", quiet=True) / "model.safetensors"
        assert c.bytes_downloaded >= second.stat().st_size  # fetched again, not linked from the edit
    assert file_sha256(second) == original
    assert file_sha256(first) != original  # the user's edit is theirs to keep


def test_offline_answers_main_and_tags_as_they_resolved_online(
    embedded_server: str, checkpoint_pair: CheckpointPair, unique_org: str, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    name = f"{unique_org}/moving"
    with Client(embedded_server, cache_dir=cache) as c:
        v = c.push(checkpoint_pair.base, name, quiet=True)
        c.tag(v.ref, "prod")
        c.pull(f"{name}@main", tmp_path / "main", quiet=True)
        c.pull(f"{name}@prod", tmp_path / "prod", quiet=True)
    with Client("http://127.0.0.1:9", cache_dir=cache, offline=True) as off:  # nothing listens there
        for rev in ("main", "prod"):
            out = off.pull(f"{name}@{rev}", tmp_path / f"off-{rev}", quiet=True)
            assert file_sha256(out / "model.safetensors") == file_sha256(
                checkpoint_pair.base / "model.safetensors"
            )
        with pytest.raises(NotFoundError, match="pull it once online"):
            off.pull(f"{name}@other-tag", tmp_path / "never", quiet=True)


def test_a_profile_named_alone_is_one_profile(
    embedded_server: str, checkpoint_pair: CheckpointPair, unique_org: str, tmp_path: Path
) -> None:
    with Client(embedded_server, cache_dir=tmp_path / "cache") as c:
        base = c.push(checkpoint_pair.base, f"{unique_org}/b", quiet=True)
        tuned = c.push(
            checkpoint_pair.finetune, f"{unique_org}/t", base=base.ref, profiles=PROFILE, quiet=True
        )
        assert [a.profile for a in c.version_info(tuned.ref).artifacts] == [PROFILE]


def test_push_without_wait_and_json_on_every_transfer_command(
    env: str,
    checkpoint_pair: CheckpointPair,
    unique_org: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = f"{unique_org}/m"
    code, out, err = run_cli(capsys, "push", str(checkpoint_pair.base), "--name", name)
    assert code == 0 and "Traceback" not in err
    assert f"{name}@1" in out and ("encoding in the background" in out or " ready " in out)
    with Client(env) as c:
        deadline = time.monotonic() + 120
        while c.version_info(name).status == "processing":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    code, out, _ = run_cli(capsys, "pull", name, str(tmp_path / "p"), "--json")
    pulled = json.loads(out)
    assert code == 0 and pulled["path"] == str(tmp_path / "p") and pulled["downloaded_bytes"] > 0
    code, out, _ = run_cli(capsys, "get", name, "config.json", "-o", str(tmp_path), "--json")
    assert code == 0 and json.loads(out)["path"] == str(tmp_path / "config.json")
    code, out, _ = run_cli(capsys, "rm", f"{name}@1", "--yes", "--json")
    assert code == 0 and json.loads(out) == {"deleted": f"{name}@1", "kind": "version"}


def test_ctrl_c_while_a_push_waits_says_it_is_committed(
    env: str,
    checkpoint_pair: CheckpointPair,
    unique_org: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def interrupted(self: Client, *args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Client, "wait", interrupted)
    code, _, err = run_cli(capsys, "push", str(checkpoint_pair.base), "--name", f"{unique_org}/m", "--wait")
    assert code == 130 and f"{unique_org}/m@1 is committed" in err and "do not push again" in err


def test_output_piped_into_a_reader_that_stops_is_not_an_error(env: str) -> None:
    """`deltazoo ls | head -1`: the reader closes the pipe; the command ends quietly with 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "deltazoo.cli", "--url", env, "stats"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "error" not in err


def test_a_malformed_setting_is_named_without_a_traceback(
    env: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from deltazoo.registry.settings import get_settings as server_settings

    from deltazoo.settings import get_settings

    monkeypatch.setenv("DELTAZOO_OFFLINE", "garbage")
    get_settings.cache_clear()
    code, _, err = run_cli(capsys, "ls")
    assert code == 2 and "DELTAZOO_OFFLINE='garbage'" in err and "Traceback" not in err
    monkeypatch.delenv("DELTAZOO_OFFLINE")
    monkeypatch.setenv("DELTAZOO_WORKER_CONCURRENCY", "many")
    server_settings.cache_clear()
    try:
        code, _, err = run_cli(capsys, "admin", "audit")
    finally:
        server_settings.cache_clear()
    assert code == 2 and "DELTAZOO_WORKER_CONCURRENCY='many'" in err


def test_admin_audit_away_from_a_server_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from deltazoo.registry.settings import get_settings

    for var in ("DELTAZOO_HOME", "DELTAZOO_DATABASE_URL", "DELTAZOO_S3_ENDPOINT", "DELTAZOO_BROKER_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    try:
        code, _, err = run_cli(capsys, "admin", "audit")
    finally:
        get_settings.cache_clear()
    assert code == 2 and "no deltazoo server here" in err and "DELTAZOO_HOME" in err
    assert list(tmp_path.iterdir()) == []


def test_a_malformed_name_is_a_deltazoo_error(tmp_path: Path) -> None:
    with Client("http://127.0.0.1:9", cache_dir=tmp_path) as c, pytest.raises(DeltazooError) as caught:
        c.pull("not a name", tmp_path / "out")
    assert isinstance(caught.value, ValueError) and caught.value.code == "invalid_name"
    for tag in ("a/b", "..", "main"):  # refused before any request (a/b was "no such route")
        with Client("http://127.0.0.1:9", cache_dir=tmp_path) as c, pytest.raises(DeltazooError, match="tag"):
            c.tag("o/m@1", tag)


def test_revisions_sort_as_numbers() -> None:
    refs = ["o/m@10", "o/m@2", "o/a@1", "o/m@prod", "o/m@1"]
    assert sorted(refs, key=ref_order) == ["o/a@1", "o/m@1", "o/m@2", "o/m@10", "o/m@prod"]
    assert Ref.parse("o/m@9").order < Ref.parse("o/m@10").order


def test_a_fully_deduplicated_push_gets_no_base_hint(
    env: str, checkpoint_pair: CheckpointPair, unique_org: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(capsys, "push", str(checkpoint_pair.base), "--name", f"{unique_org}/a", "--wait")[0] == 0
    code, out, err = run_cli(capsys, "push", str(checkpoint_pair.base), "--name", f"{unique_org}/b", "--wait")
    assert code == 0 and "deduplicated" in out and "looks derived" not in err  # nothing a base would save


def test_two_pulls_into_one_folder_leave_no_temporary_files(
    embedded_server: str, checkpoint_pair: CheckpointPair, unique_org: str, tmp_path: Path
) -> None:
    """Two models that share a file (config.json) pulled into one folder: the second placement links
    the same cached blob over a link to it, which rename(2) leaves in place; no `.NAME.deltazoo-tmp`."""
    with Client(embedded_server, cache_dir=tmp_path / "cache") as c:
        a = c.push(checkpoint_pair.base, f"{unique_org}/a", quiet=True)
        b = c.push(checkpoint_pair.finetune, f"{unique_org}/b", quiet=True)
        out = c.pull(a.ref, tmp_path / "out", quiet=True)
        c.pull(b.ref, out, quiet=True)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".deltazoo-tmp")]
    for f in checkpoint_pair.finetune.iterdir():
        assert file_sha256(out / f.name) == file_sha256(f), f.name


def test_profile_add_takes_any_spelling_and_a_failure_says_why(
    env: str,
    checkpoint_pair: CheckpointPair,
    unique_org: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``profile add`` of a profile spelled in another order waited on nothing and printed no size; a
    profile that failed to build said "see the server log", which a user of a remote server cannot read."""
    from safetensors.torch import save_file

    with Client(env) as c:
        base = c.push(checkpoint_pair.base, f"{unique_org}/base", quiet=True)
        c.push(checkpoint_pair.finetune, f"{unique_org}/ft", base=base.ref, quiet=True)
        f32 = tmp_path / "ft32"
        f32.mkdir()
        save_file(
            {k: v.float() for k, v in checkpoint_pair.finetune_tensors.items()},
            str(f32 / "model.safetensors"),
        )
        c.push(f32, f"{unique_org}/ft32", base=base.ref, quiet=True)
    code, out, _ = run_cli(
        capsys, "profile", "add", f"{unique_org}/ft@1", "deltadq:bits=4,m=32,n=1", "--wait", "-q"
    )
    assert code == 0 and "deltadq:n=1,m=32,bits=4  ready" in out and "  -" not in out, out
    code, _, err = run_cli(
        capsys, "profile", "add", f"{unique_org}/ft32@1", "deltadq:n=1,m=32,bits=4", "--wait", "-q"
    )
    assert code != 0 and "packs no layer" in err, err


def test_a_server_url_without_scheme_or_with_v1_says_what_to_write(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DELTAZOO_URL", raising=False)
    code, _, err = run_cli(capsys, "--url", "localhost:8831", "ls")
    assert code == 2 and "http://localhost:8831" in err, err
    code, _, err = run_cli(capsys, "--url", "http://127.0.0.1:8831/v1/", "ls")
    assert code == 2 and "give the server's root, http://127.0.0.1:8831" in err, err
