"""The ``deltazoo`` command against a real embedded server: --json outputs parse, exit codes hold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from deltazoo.compression.packed import load_artifact

from deltazoo.cli import main
from tests.checkpoints import CheckpointPair, file_sha256


def _run(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, str, str]:
    code = main(["--url", url, *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def cli_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from deltazoo.settings import get_settings

    monkeypatch.setenv("DELTAZOO_CACHE", str(tmp_path / "cache"))
    get_settings.cache_clear()
    yield tmp_path / "cache"
    get_settings.cache_clear()


def test_cli_push_pull_and_json_views(
    embedded_server: str,
    checkpoint_pair: CheckpointPair,
    unique_org: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    cli_cache: Path,
) -> None:
    url = embedded_server
    code, out, _ = _run(
        capsys, url, "push", str(checkpoint_pair.base), "--name", f"{unique_org}/base", "--wait", "--json"
    )
    assert code == 0 and json.loads(out)["status"] == "ready"
    code, out, _ = _run(
        capsys,
        url,
        "push",
        str(checkpoint_pair.finetune),
        "--name",
        f"{unique_org}/ft",
        "--base",
        f"{unique_org}/base",
        "--profile",
        "deltadq:n=1,m=32,bits=4",
        "--wait",
    )
    assert code == 0 and f"{unique_org}/ft@1" in out and "ready" in out

    code, out, _ = _run(capsys, url, "pull", f"{unique_org}/ft", str(tmp_path / "ft"))
    assert code == 0
    for f in ("model.safetensors", "config.json"):
        assert file_sha256(tmp_path / "ft" / f) == file_sha256(checkpoint_pair.finetune / f)

    code, out, _ = _run(
        capsys,
        url,
        "pull-delta",
        f"{unique_org}/ft",
        str(tmp_path / "d"),
        "--profile",
        "deltadq:n=1,m=32,bits=4",
    )
    assert code == 0
    (container,) = (tmp_path / "d").iterdir()
    assert load_artifact(container).profile == "deltadq:n=1,m=32,bits=4"

    code, out, _ = _run(capsys, url, "ls", "--search", unique_org, "--json")
    listed = json.loads(out)
    assert code == 0 and {m["name"] for m in listed["items"]} == {f"{unique_org}/base", f"{unique_org}/ft"}
    assert all("logical_bytes" in m and "stored_bytes" in m for m in listed["items"])

    code, out, _ = _run(capsys, url, "lineage", f"{unique_org}/ft", "--json")
    lineage = json.loads(out)
    assert code == 0 and lineage["edges"][0]["parent"] == f"{unique_org}/base@1"

    code, out, _ = _run(capsys, url, "stats", "--json")
    assert code == 0 and json.loads(out)["stored_bytes"] > 0

    code, out, _ = _run(capsys, url, "info", f"{unique_org}/ft@1", "--json")
    detail = json.loads(out)
    assert code == 0 and {t["encoding"] for t in detail["tensors"]} >= {"same"}

    for argv in (["ls"], ["stats"], ["lineage", f"{unique_org}/ft"], ["info", f"{unique_org}/ft"]):
        code, out, _ = _run(capsys, url, *argv)
        assert code == 0 and out.strip(), argv


def test_cli_refusals_exit_1_with_one_line(
    embedded_server: str,
    checkpoint_pair: CheckpointPair,
    unique_org: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    cli_cache: Path,
) -> None:
    code, _, err = _run(capsys, embedded_server, "pull", f"{unique_org}/nothing", str(tmp_path / "x"))
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1
    code, _, err = _run(
        capsys,
        embedded_server,
        "push",
        str(checkpoint_pair.base),
        "--name",
        f"{unique_org}/w",
        "--base",
        f"{unique_org}/nope",
        "--wait",
    )
    assert code == 1 and err.startswith("error: ")


def test_cli_text_add_and_ls(
    embedded_server: str, unique_org: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"held-out-{unique_org}"
    text = tmp_path / "held_out.txt"
    text.write_text("def add(a, b):\n    return a + b\n" * 20, encoding="utf-8")
    add = ["text", "add", name, str(text), "--description", "code", "--json"]
    code, out, _ = _run(capsys, embedded_server, *add)
    assert code == 0 and json.loads(out)["bytes"] == text.stat().st_size
    code, out, _ = _run(capsys, embedded_server, "text", "ls", "--json")
    mine = [t for t in json.loads(out) if t["name"] == name]
    assert code == 0 and mine and mine[0]["description"] == "code"
    code, out, _ = _run(capsys, embedded_server, "text", "ls")
    assert code == 0 and name in out
    code, _, err = _run(capsys, embedded_server, "text", "add", name, str(text))  # the name is taken
    assert code == 1 and "already exists" in err
    code, _, err = _run(capsys, embedded_server, "text", "add", "x", str(tmp_path / "missing.txt"))
    assert code == 2 and "not a file" in err  # refused before any request
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    code, _, err = _run(capsys, embedded_server, "text", "add", f"{name}-2", str(tmp_path / "latin1.txt"))
    assert code == 1 and "UTF-8" in err


def test_console_script_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "deltazoo.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0 and "pull-delta" in done.stdout
