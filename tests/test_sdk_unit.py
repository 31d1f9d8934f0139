"""SDK pieces that need no server: names, error mapping, retry policy, cache checks, checkpoint scan."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from deltazoo import errors
from deltazoo.cache import Cache
from deltazoo.checkpoint import scan_checkpoint
from deltazoo.cli import main
from deltazoo.models import FileInfo, Job, ModelSummary, Ref, VersionInfo
from deltazoo.transport import Transport
from deltazoo.units import human_bytes


def _response(status: int, body: object = None, method: str = "GET") -> httpx.Response:
    request = httpx.Request(method, "http://dz.test/v1/models/a/b")
    if body is None:
        return httpx.Response(status, request=request)
    return httpx.Response(status, json=body, request=request)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("acme/base", Ref("acme", "base", "latest")),
        ("acme/base@3", Ref("acme", "base", "3")),
        ("a-b.c/x_y@latest", Ref("a-b.c", "x_y", "latest")),
        ("acme/base@v2", Ref("acme", "base", "v2")),  # a tag
        ("acme/base@main", Ref("acme", "base", "main")),
    ],
)
def test_ref_parse(text: str, expected: Ref) -> None:
    assert Ref.parse(text) == expected


@pytest.mark.parametrize(
    "text", ["base", "acme/", "/x", "acme/base@", "acme/base@-v2", "acme/base@v/2", "a/b/c", "acme/ba se"]
)
def test_ref_parse_rejects_with_a_value_error_saying_the_form(text: str) -> None:
    with pytest.raises(ValueError, match="ORG/NAME"):
        Ref.parse(text)


@pytest.mark.parametrize(
    ("status", "cls", "builtin"),
    [
        (400, errors.BadRequestError, ValueError),
        (422, errors.BadRequestError, ValueError),
        (401, errors.AuthenticationError, PermissionError),
        (403, errors.PermissionDenied, PermissionError),
        (404, errors.NotFoundError, FileNotFoundError),
        (409, errors.ConflictError, errors.ClientError),
        (500, errors.ServerError, errors.DeltazooError),
    ],
)
def test_raise_for_status_maps_status_to_typed_error(status: int, cls: type, builtin: type) -> None:
    body = {"error": {"code": "some_code", "message": "what is wrong; what to do"}}
    with pytest.raises(cls) as info:
        errors.raise_for_status(_response(status, body))
    assert isinstance(info.value, builtin)
    assert info.value.code == "some_code" and info.value.status == status
    assert "what is wrong; what to do" in str(info.value)


def test_raise_for_status_without_json_body_names_the_request() -> None:
    with pytest.raises(errors.NotFoundError, match="GET /v1/models/a/b answered 404"):
        errors.raise_for_status(_response(404))
    errors.raise_for_status(_response(200, {"ok": True}))


def _counting_transport(answers: list[int]) -> tuple[httpx.MockTransport, list[str]]:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        status = answers[min(len(seen) - 1, len(answers) - 1)]
        return httpx.Response(status, json={"error": {"code": "x", "message": "m"}} if status >= 400 else {})

    return httpx.MockTransport(handler), seen


def test_idempotent_requests_are_retried_on_5xx_and_429() -> None:
    mock, seen = _counting_transport([503, 429, 200])
    t = Transport("http://dz.test", max_retries=5, backoff=0.0, transport=mock)
    assert t.json("GET", "/v1/stats") == {}
    assert seen == ["GET", "GET", "GET"]


def test_retries_are_capped_then_the_typed_error_is_raised() -> None:
    mock, seen = _counting_transport([503])
    t = Transport("http://dz.test", max_retries=2, backoff=0.0, transport=mock)
    with pytest.raises(errors.ServerError):
        t.json("GET", "/v1/stats")
    assert len(seen) == 3


def test_post_is_not_resent_after_a_5xx_but_is_after_429() -> None:
    mock, seen = _counting_transport([500, 200])
    t = Transport("http://dz.test", max_retries=5, backoff=0.0, transport=mock)
    with pytest.raises(errors.ServerError):
        t.json("POST", "/v1/models/a/b/versions", json={})
    assert seen == ["POST"]
    mock, seen = _counting_transport([429, 201])
    t = Transport("http://dz.test", max_retries=5, backoff=0.0, transport=mock)
    assert t.json("POST", "/v1/models/a/b/versions", json={}) == {}
    assert seen == ["POST", "POST"]


def test_upload_body_factory_resends_the_whole_file_on_retry(tmp_path: Path) -> None:
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        return httpx.Response(503 if len(bodies) == 1 else 200, json={})

    t = Transport("http://dz.test", max_retries=3, backoff=0.0, transport=httpx.MockTransport(handler))
    t.json("PUT", "/v1/x", content=lambda: iter([b"abc", b"def"]), headers={"Content-Length": "6"})
    assert bodies == [b"abcdef", b"abcdef"]


def test_unreachable_server_says_how_to_start_it() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    t = Transport("http://dz.test", max_retries=1, backoff=0.0, transport=httpx.MockTransport(refuse))
    with pytest.raises(ConnectionError, match="deltazoo serve.*DELTAZOO_URL"):
        t.json("GET", "/v1/stats")


def test_cache_install_refuses_wrong_bytes_and_removes_them(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    data = b"x" * 100
    sha = hashlib.sha256(data).hexdigest()
    tmp = cache.incomplete_path(sha)
    tmp.parent.mkdir(parents=True)
    tmp.write_bytes(b"y" * 100)
    with pytest.raises(errors.IntegrityError, match="expected"):
        cache.install(tmp, sha, 100)
    assert not tmp.exists() and not cache.has_blob(sha)
    tmp.write_bytes(data)
    assert cache.install(tmp, sha, 100).read_bytes() == data
    assert cache.has_blob(sha, 100)


def test_scan_checkpoint_hashes_files_and_skips_hidden(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.bin").write_bytes(b"abc")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "junk").write_text("x")
    files = scan_checkpoint(tmp_path, quiet=True)
    assert [f.path for f in files] == ["config.json", "sub/a.bin"]
    assert files[1].sha256 == hashlib.sha256(b"abc").hexdigest() and files[1].size == 3
    with pytest.raises(ValueError, match="not a directory"):
        scan_checkpoint(tmp_path / "nope")


def test_answers_parse_with_the_response_contract() -> None:
    """The SDK parses the server's JSON with the models the server answers with (deltazoo/schemas.py):
    unknown keys are ignored, types are the contract's (a job id is the integer the database holds)."""
    v = VersionInfo.model_validate(
        {
            "name": "a/b",
            "revision": 2,
            "ref": "a/b@2",
            "parent": "a/base@1",
            "relation": "finetune",
            "status": "ready",
            "status_message": None,
            "logical_bytes": 100,
            "stored_bytes": 40,
            "ratio": 2.5,
            "lossy": False,
            "created_at": "2024-01-01T00:00:00Z",
            "future_field": 1,
            "files": [{"path": "model.safetensors", "size": 100, "sha256": "0" * 64, "kind": "safetensors"}],
            "tensors": [],
            "artifacts": [
                {
                    "profile": "deltadq:n=1,m=32,bits=4",
                    "status": "ready",
                    "bytes": 10,
                    "quality": {},
                    "created_at": "2024-01-01T00:00:00Z",
                }
            ],
            "chain": ["a/b@2", "a/base@1"],
        }
    )
    assert v.files == (FileInfo(path="model.safetensors", size=100, sha256="0" * 64, kind="safetensors"),)
    assert v.artifact("deltadq:n=1,m=32,bits=4") is not None and v.chain[1] == "a/base@1"
    assert "future_field" not in v.raw and v.raw["created_at"] == "2024-01-01T00:00:00Z"
    m = ModelSummary.model_validate(
        {
            "name": "a/b",
            "description": "",
            "private": False,
            "versions": 3,
            "latest_revision": 3,
            "logical_bytes": 1,
            "stored_bytes": 1,
            "ratio": None,
            "created_at": "2024-01-01T00:00:00Z",
        }
    )
    assert m.version_count == 3 and m.ratio is None
    job = Job.model_validate(
        {
            "id": 7,
            "kind": "encode_version",
            "target": "a/b@2",
            "status": "succeeded",
            "attempts": 1,
            "progress": 1.0,
            "error": None,
            "created_at": "2024-01-01T00:00:00Z",
            "updated_at": "2024-01-01T00:00:01Z",
        }
    )
    assert job.id == 7 and isinstance(job.id, int) and job.done
    with pytest.raises(ValidationError):  # a field the contract requires is missing: not silently 0
        Job.model_validate({"id": 7, "status": "queued"})


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (12, 1500, 2_500_000)] == ["12 B", "1.5 kB", "2.5 MB"]


def test_cli_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pull", "not-a-name", "dest"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "ORG/NAME" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["leaderboard"])
    assert exit_info.value.code == 2


def test_cli_unreachable_server_exits_3(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from deltazoo.settings import get_settings
    from tests.services import free_port

    monkeypatch.setenv("DELTAZOO_RETRIES", "0")
    get_settings.cache_clear()
    try:
        assert main(["--url", f"http://127.0.0.1:{free_port()}", "stats"]) == 3
    finally:
        get_settings.cache_clear()
    assert "deltazoo serve" in capsys.readouterr().err
