"""The everyday CLI: push validation, errors in CLI terms, get / rm / cache / offline, links, progress.

Against a real embedded server (uvicorn subprocess); every command goes through ``deltazoo.cli.main``.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import httpx
import pytest

from tests.checkpoints import CheckpointPair, file_sha256
from tests.cli_support import run_cli

PROFILE = "deltadq:n=1,m=32,bits=4"


class _Boom:
    """A pickle that would create a file if anything unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_push_without_weights_is_refused_unless_allowed_and_pickles_stay_opaque(
    env: str, unique_org: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "bin-only"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    marker = tmp_path / "unpickled"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom(marker)))

    code, _, err = run_cli(capsys, "push", str(folder), "--name", f"{unique_org}/bin", "--wait")
    assert code == 2 and "no *.safetensors weights" in err and "--allow-no-weights" in err
    assert "never unpickles" in err and err.count("\n") == 1
    code, out, _ = run_cli(capsys, "ls", "--search", unique_org)
    assert f"{unique_org}/bin" not in out  # refused before anything was created

    code, out, _ = run_cli(
        capsys, "push", str(folder), "--name", f"{unique_org}/bin", "--allow-no-weights", "--wait"
    )
    assert code == 0 and "note: no safetensors weights" in out and "never unpickled" in out
    code, out, _ = run_cli(capsys, "info", f"{unique_org}/bin@1")
    assert code == 0 and "status: no safetensors weights" in out
    code, _, _ = run_cli(capsys, "pull", f"{unique_org}/bin", str(tmp_path / "back"))
    assert code == 0 and file_sha256(tmp_path / "back" / "pytorch_model.bin") == file_sha256(
        folder / "pytorch_model.bin"
    )
    assert not marker.exists()  # neither the server nor the client unpickled it


def test_a_refused_push_leaves_no_model_and_description_and_patterns_apply(
    env: str,
    checkpoint_pair: CheckpointPair,
    unique_org: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run_cli(
        capsys, "push", str(checkpoint_pair.base), "--name", f"{unique_org}/base", "--wait"
    )
    assert code == 0
    bad = [
        "push",
        str(checkpoint_pair.finetune),
        "--name",
        f"{unique_org}/bad",
        "--base",
        f"{unique_org}/base",
    ]
    code, _, err = run_cli(capsys, *bad, "--profile", "deltadq:n=9,m=2", "--wait")
    assert code == 1 and err.startswith("error: ")
    code, out, _ = run_cli(capsys, "ls", "--search", unique_org, "--json")
    assert [m["name"] for m in json.loads(out)["items"]] == [f"{unique_org}/base"]

    extra = tmp_path / "with-extra"
    shutil.copytree(checkpoint_pair.finetune, extra)
    (extra / "notes.txt").write_text("scratch")
    (extra / "optimizer.pt").write_bytes(b"\0" * 64)
    code, out, _ = run_cli(
        capsys,
        "push",
        str(extra),
        "--name",
        f"{unique_org}/ft",
        "--base",
        f"{unique_org}/base",
        "--description",
        "math fine-tune",
        "--exclude",
        "*.pt",
        "--exclude",
        "notes.txt",
        "--wait",
        "--json",
    )
    pushed = json.loads(out)
    assert code == 0 and pushed["status"] == "ready"
    code, out, _ = run_cli(capsys, "info", f"{unique_org}/ft", "--json")
    assert sorted(f["path"] for f in json.loads(out)["files"]) == [
        "config.json",
        "model.safetensors",
    ]
    code, out, _ = run_cli(capsys, "ls", "--search", f"{unique_org}/ft", "--json")
    assert json.loads(out)["items"][0]["description"] == "math fine-tune"
    code, _, err = run_cli(capsys, "push", str(extra), "--name", f"{unique_org}/x", "--include", "*.nothing")
    assert code == 2 and "match --include/--exclude" in err


def test_profiles_carry_over_to_new_revisions_and_can_be_requested_later(
    env: str,
    checkpoint_pair: CheckpointPair,
    unique_org: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = f"{unique_org}/base"
    assert run_cli(capsys, "push", str(checkpoint_pair.base), "--name", base, "--wait")[0] == 0
    ft = ["push", str(checkpoint_pair.finetune), "--name", f"{unique_org}/ft", "--base", base, "--wait"]
    assert run_cli(capsys, *ft, "--profile", PROFILE)[0] == 0
    code, out, _ = run_cli(capsys, *ft)  # revision 2, no --profile: the profile carries over
    assert (
        code == 0
        and f"{unique_org}/ft@2" in out
        and f"carried over from the previous revision: {PROFILE}" in out
    )
    code, out, _ = run_cli(
        capsys, "pull-delta", f"{unique_org}/ft", str(tmp_path / "d"), "--profile", PROFILE
    )
    assert code == 0  # `latest` is revision 2, which has the profile (it broke before the carry-over)
    code, out, _ = run_cli(capsys, "info", f"{unique_org}/ft@2", "--json")
    assert [a["profile"] for a in json.loads(out)["artifacts"]] == [PROFILE]

    other = "deltadq:n=2,m=32,bits=4"
    code, _, err = run_cli(
        capsys, "pull-delta", f"{unique_org}/ft@1", str(tmp_path / "e"), "--profile", other
    )
    assert code == 1 and f"`deltazoo profile add {unique_org}/ft@1 {other} --wait`" in err
    assert "POST" not in err and "/v1/" not in err
    code, out, _ = run_cli(capsys, "profile", "add", f"{unique_org}/ft@1", other, "--wait")
    assert code == 0 and "ready" in out
    code, out, _ = run_cli(
        capsys, "pull-delta", f"{unique_org}/ft@1", str(tmp_path / "e"), "--profile", other
    )
    assert code == 0
    spelled = "deltadq: bits=4, m=32, n=2"  # the same profile, spelled otherwise: the same file name
    code, out, _ = run_cli(
        capsys, "pull-delta", f"{unique_org}/ft@1", str(tmp_path / "f"), "--profile", spelled
    )
    assert code == 0 and [p.name for p in (tmp_path / "f").iterdir()] == [
        "deltadq-n=2_m=32_bits=4.safetensors"
    ]


def test_errors_speak_cli_with_a_token_hint_and_options_go_anywhere(
    env: str, unique_org: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "pull", f"{unique_org}/ghost", str(tmp_path / "g"))
    assert code == 1 and err.count("\n") == 1
    assert "POST" not in err and "/v1/" not in err
    assert f"`deltazoo push DIR --name {unique_org}/ghost`" in err and "DELTAZOO_TOKEN" in err
    code, _, err = run_cli(capsys, "--token", "dz_not_a_real_one", "info", f"{unique_org}/ghost")
    assert "your token may not read namespace" in err or "token" in err

    # --url after the command as well as before it
    code, out, _ = run_cli(capsys, "ls", "--url", env, "--search", unique_org)
    assert code == 0 and out.startswith("NAME")
    code, _, _ = run_cli(capsys, "--url", env, "ls")
    assert code == 0


def test_connection_refused_is_not_retried_before_the_server_ever_answered() -> None:
    from deltazoo.transport import Transport

    calls: list[str] = []
    state = {"up": False}

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if not state["up"]:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return httpx.Response(200, json={})

    t = Transport("http://dz.test", max_retries=5, backoff=0.0, transport=httpx.MockTransport(handler))
    with pytest.raises(ConnectionError, match="deltazoo serve"):
        t.json("GET", "/v1/stats")
    assert len(calls) == 1  # nothing listens: said at once, not after 5 backoffs

    state["up"] = True
    t.json("GET", "/v1/stats")
    answers = iter([False, True])

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if not next(answers):
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return httpx.Response(200, json={})

    t.http._transport = httpx.MockTransport(flaky)
    calls.clear()
    t.json("GET", "/v1/stats")  # once reached, a refused connection is an outage: retried
    assert len(calls) == 2


def test_user_mistakes_end_without_a_traceback(
    env: str,
    checkpoint_pair: CheckpointPair,
    unique_org: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_cli(capsys, "push", str(checkpoint_pair.base), "--name", f"{unique_org}/m", "--wait")[0] == 0
    existing = tmp_path / "a-file"
    existing.write_text("x")
    code, _, err = run_cli(capsys, "pull", f"{unique_org}/m", str(existing))
    assert code == 2 and err.startswith("error: ") and "not a folder" in err and "Traceback" not in err
    blocked = tmp_path / "blocked"
    (blocked / "config.json").mkdir(parents=True)  # a folder where a file of the model goes
    code, _, err = run_cli(capsys, "pull", f"{unique_org}/m", str(blocked))
    assert code == 2 and "is a folder" in err
    code, _, err = run_cli(capsys, "rm", f"{unique_org}/m")  # stdin is not a terminal: no prompt
    assert code == 2 and "--yes" in err


def test_get_patterns_links_cache_offline_and_rm(
    env: str,
    checkpoint_pair: CheckpointPair,
    unique_org: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from deltazoo import pull as pull_module
    from deltazoo.settings import get_settings

    name = f"{unique_org}/m"
    assert run_cli(capsys, "push", str(checkpoint_pair.base), "--name", name, "--wait")[0] == 0

    bars: list[tuple[int | None, str]] = []
    real_bar = pull_module.progress_bar

    def recording_bar(total: int | None, desc: str, **kw: object):  # type: ignore[no-untyped-def]
        bars.append((total, desc))
        return real_bar(total, desc, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(pull_module, "progress_bar", recording_bar)
    code, out, _ = run_cli(capsys, "pull", name, str(tmp_path / "all"))
    assert code == 0 and ("hardlinked" in out or "reflinked" in out)
    sizes = [(checkpoint_pair.base / f).stat().st_size for f in ("config.json", "model.safetensors")]
    assert [t for t, d in bars if d.startswith("pull ")] == [sum(sizes)]  # one bar over every file
    code, out, _ = run_cli(capsys, "pull", name, str(tmp_path / "st"), "--include", "*.safetensors")
    assert code == 0 and sorted(p.name for p in (tmp_path / "st").iterdir()) == ["model.safetensors"]
    code, out, _ = run_cli(capsys, "get", name, "config.json", "-o", str(tmp_path))
    assert code == 0 and file_sha256(tmp_path / "config.json") == file_sha256(
        checkpoint_pair.base / "config.json"
    )
    code, _, err = run_cli(capsys, "get", name, "nope.bin")
    assert code == 1 and "has no file 'nope.bin'" in err and "config.json" in err

    weights = tmp_path / "all" / "model.safetensors"
    assert file_sha256(weights) == file_sha256(checkpoint_pair.base / "model.safetensors")
    assert weights.stat().st_nlink > 1 or "reflinked" in out  # no second copy of the bytes
    if weights.stat().st_nlink > 1 and os.geteuid() != 0:
        with pytest.raises(PermissionError):  # a linked blob is read-only: the cache cannot be edited
            weights.open("r+b")
    code, out, _ = run_cli(capsys, "pull", name, str(tmp_path / "copies"), "--copy")
    assert code == 0 and "copied" in out and (tmp_path / "copies" / "model.safetensors").stat().st_nlink == 1

    code, out, _ = run_cli(capsys, "cache", "ls")
    assert code == 0 and f"{name}@1" in out and "latest" in out

    monkeypatch.setenv("DELTAZOO_URL", "http://127.0.0.1:9")  # nothing there: offline must not ask
    get_settings.cache_clear()
    code, out, _ = run_cli(capsys, "--offline", "pull", name, str(tmp_path / "off"))
    assert code == 0 and file_sha256(tmp_path / "off" / "model.safetensors") == file_sha256(weights)
    code, _, err = run_cli(capsys, "pull", f"{unique_org}/never", str(tmp_path / "n"), "--offline")
    assert code == 1 and "pull it once online" in err
    code, _, err = run_cli(capsys, "ls", "--offline")
    assert code == 3 and "offline" in err
    monkeypatch.setenv("DELTAZOO_URL", env)
    get_settings.cache_clear()

    code, out, _ = run_cli(capsys, "cache", "prune", name)
    assert code == 0 and f"forgot {name}@1" in out and "freed" in out
    assert (tmp_path / "all" / "model.safetensors").is_file()  # pulled copies outlive the cache
    code, out, _ = run_cli(capsys, "cache", "ls", "--json")
    assert json.loads(out)["versions"] == []

    code, out, _ = run_cli(capsys, "rm", name, "--yes")
    assert code == 0 and f"deleted model {name}" in out
    code, _, err = run_cli(capsys, "info", name)
    assert code == 1 and "does not exist" in err


def test_job_progress_has_no_rate_and_transfers_count_bytes() -> None:
    from tqdm import tqdm

    from deltazoo.transport import bar_options

    job = tqdm.format_meter(37, 100, 2.0, ncols=80, **bar_options("%"))
    assert "37%" in job and "/s" not in job  # was "18.50%/s"
    pull = tqdm.format_meter(3_000_000, 10_000_000, 2.0, ncols=100, **bar_options("B"))
    assert "3.00MB/10.0MB" in pull and "1.50MB/s" in pull


def test_a_delta_only_pull_shows_one_bar_over_its_files(
    env: str,
    checkpoint_pair: CheckpointPair,
    unique_org: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from deltazoo import Client, delta_pull
    from deltazoo import pull as pull_module

    with Client(env, cache_dir=tmp_path / "c") as c:
        c.push(checkpoint_pair.base, f"{unique_org}/base", quiet=True)
        c.push(checkpoint_pair.finetune, f"{unique_org}/ft", base=f"{unique_org}/base", quiet=True)
        c.pull(f"{unique_org}/base", quiet=True)  # the base in the cache: the fine-tune travels as deltas
        bars: list[str] = []

        def recording(module: object) -> object:
            real = module.progress_bar  # type: ignore[attr-defined]

            def bar(total: int | None, desc: str, **kw: object):  # type: ignore[no-untyped-def]
                bars.append(desc)
                return real(total, desc, **kw)

            return bar

        monkeypatch.setattr(pull_module, "progress_bar", recording(pull_module))
        monkeypatch.setattr(delta_pull, "progress_bar", recording(delta_pull))
        out = c.pull(f"{unique_org}/ft", tmp_path / "ft", quiet=True)
    assert file_sha256(out / "model.safetensors") == file_sha256(
        checkpoint_pair.finetune / "model.safetensors"
    )
    # config.json is the base's: one file travels, rebuilt from deltas, under the pull's one bar
    assert bars == [f"pull {unique_org}/ft@1 (1 file)"]


def test_leaderboard_cli_says_when_the_fine_tune_did_not_gain() -> None:
    from deltazoo.cli_browse import gain_text

    assert gain_text({"gain_kept": 0.9731}) == "97.3 %"
    row = {
        "gain_kept": None,
        "gain_note": "fine-tune did not gain here",
        "bpb_base": 2.0,
        "bpb_finetune": 2.45,
    }
    assert gain_text(row) == "fine-tune did not gain here (bpb base 2.000, fine-tune 2.450)"
    assert gain_text({"gain_kept": None}) == "-"  # a dense row
