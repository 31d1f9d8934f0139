"""The streaming reader of Hub commits: any chunking gives the same operations, files decoded exactly."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator

import pytest
from deltazoo.api.hub_ndjson import read_commit
from deltazoo.registry.errors import DeltazooError
from deltazoo.services.hub_commit import CommitOperations


def payload(files: dict[str, bytes]) -> bytes:
    lines = [{"key": "header", "value": {"summary": "s", "description": ""}}]
    for path, data in files.items():
        content = base64.b64encode(data).decode()
        lines.append({"key": "file", "value": {"content": content, "path": path, "encoding": "base64"}})
    lines.append({"key": "deletedFile", "value": {"path": "old.txt"}})
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def read(body: bytes, chunk: int) -> CommitOperations:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), chunk):
            yield body[i : i + chunk]

    ops = CommitOperations()
    asyncio.run(read_commit(chunks(), ops))
    return ops


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1000, 1 << 20])
def test_any_chunking_reads_the_same_commit(chunk: int) -> None:
    files = {"a/b.bin": os.urandom(1000), "empty.txt": b"", "c.json": b'{"x": "/+="}'}
    ops = read(payload(files), chunk)
    assert ops.header["summary"] == "s" and ops.deleted_files == {"old.txt"}
    got = {path: b"".join(staged.chunks()) for path, staged in ops.added.items()}
    assert got == files and {p: s.size for p, s in ops.added.items()} == {p: len(d) for p, d in files.items()}
    ops.close()


@pytest.mark.parametrize(
    "body",
    [
        b'{"key": "file", "value": {"content": "QUJD*", "path": "a"}}\n',
        b'{"key": "file", "value": {"content": "QUJD',
        b'{"key": "file", "value": {"content": "QUJD", "encoding": "base64"}}\n',
        b'{"key": "file", "value": {"content": "QUJD", "path": "../a"}}\n',
        b"nonsense\n",
    ],
)
def test_broken_commits_are_400s(body: bytes) -> None:
    with pytest.raises(DeltazooError) as refused:
        read(body, 5)
    assert refused.value.status in (400, 422)
