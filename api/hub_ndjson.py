"""Reading a Hub commit (``application/x-ndjson``) as it streams in, in bounded memory.

huggingface_hub (``_commit_api._prepare_commit_payload``) writes one JSON object a line; a file sent
inline is ``{"key": "file", "value": {"content": "<base64>", "path": ..., "encoding": "base64"}}`` with
the content first, so its base64 is decoded chunk by chunk into a spool as it arrives, never held whole.
Other lines are small and parsed whole (at most ``MAX_LINE_BYTES``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import tempfile
from collections.abc import AsyncIterator
from typing import IO

from deltazoo.registry.errors import BadRequest, DeltazooError
from deltazoo.services.hub_commit import CommitOperations
from deltazoo.services.hub_lfs import MAX_FILE_BYTES, is_file_size

FILE_PREFIX = b'{"key": "file", "value": {"content": "'
SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")
MAX_LINE_BYTES = 16 << 20


class _Stream:
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self.chunks = chunks.__aiter__()
        self.buffer = bytearray()
        self.ended = False

    async def more(self) -> bool:
        if self.ended:
            return False
        try:
            self.buffer += await self.chunks.__anext__()
        except StopAsyncIteration:
            self.ended = True
            return False
        return True

    async def line(self) -> bytes:
        """The rest of the current line (without its newline)."""
        start = 0
        while (end := self.buffer.find(b"\n", start)) < 0:
            start = len(self.buffer)
            if start > MAX_LINE_BYTES:
                raise DeltazooError(
                    f"a commit line other than a file's content is over {MAX_LINE_BYTES >> 20} MiB",
                    code="too_large",
                    status=413,
                )
            if not await self.more():
                end = len(self.buffer)
                break
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 1]
        return line


async def read_commit(chunks: AsyncIterator[bytes], ops: CommitOperations) -> None:
    stream = _Stream(chunks)
    while True:
        while stream.buffer[:1] in (b"\n", b"\r", b" ", b"\t"):
            del stream.buffer[:1]
        if not stream.buffer:
            if not await stream.more():
                return
            continue
        short = len(stream.buffer) < len(FILE_PREFIX) and FILE_PREFIX.startswith(bytes(stream.buffer))
        if short and await stream.more():
            continue
        if stream.buffer.startswith(FILE_PREFIX):
            del stream.buffer[: len(FILE_PREFIX)]
            spool, size = await _decode_content(stream)
            rest = await stream.line()
            try:
                item = json.loads(FILE_PREFIX + b'"' + rest)
                value = item["value"]
                path = value["path"]
            except (ValueError, KeyError, TypeError):
                spool.close()
                raise BadRequest(
                    "a 'file' commit line is not valid JSON with a 'path'", code="invalid_commit"
                ) from None
            if not isinstance(path, str) or value.get("encoding", "base64") != "base64":
                spool.close()
                raise BadRequest("file content must be base64 text with a 'path'", code="invalid_commit")
            ops.add_spooled(path, spool, size)
        else:
            apply_line(ops, await stream.line())


async def _decode_content(stream: _Stream) -> tuple[IO[bytes], int]:
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=8 << 20)  # type: ignore[assignment]  # noqa: SIM115
    size = 0
    pending = b""
    try:
        while True:
            quote = stream.buffer.find(b'"')
            text = bytes(stream.buffer[:quote] if quote >= 0 else stream.buffer)
            del stream.buffer[: quote + 1 if quote >= 0 else len(stream.buffer)]
            text = pending + text
            cut = len(text) - len(text) % 4 if quote < 0 else len(text)
            pending = text[cut:]
            if cut:
                data = base64.b64decode(text[:cut], validate=True)
                spool.write(data)
                size += len(data)
            if quote >= 0:
                return spool, size
            if not await stream.more():
                raise BadRequest("the commit ended inside a file's content", code="invalid_commit")
    except binascii.Error:
        spool.close()
        raise BadRequest("a file's content is not valid base64", code="invalid_commit") from None
    except BaseException:
        spool.close()
        raise


def apply_line(ops: CommitOperations, line: bytes) -> None:
    """One NDJSON operation other than an inline file's streamed content."""
    try:
        item = json.loads(line)
        key, value = item["key"], item["value"]
    except (ValueError, KeyError, TypeError):
        raise BadRequest(
            "each commit line must be a JSON object with 'key' and 'value'", code="invalid_commit"
        ) from None
    if not isinstance(value, dict):
        raise BadRequest(f"commit operation {key!r} needs an object value", code="invalid_commit")
    path = value.get("path")
    if key == "header":
        ops.header = value
    elif key == "file" and isinstance(path, str):
        if value.get("encoding", "base64") != "base64" or not isinstance(value.get("content"), str):
            raise BadRequest(f"{path}: file content must be base64 text", code="invalid_commit")
        try:
            data = base64.b64decode(value["content"], validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"{path}: file content is not valid base64", code="invalid_commit") from None
        ops.add(path, data)
    elif key == "deletedFile" and isinstance(path, str):
        ops.deleted_files.add(path)
    elif key == "deletedFolder" and isinstance(path, str):
        ops.deleted_folders.add(path.rstrip("/"))
    elif key == "lfsFile":  # without 'size': a copy of a file of main (CommitOperationCopy)
        oid, size = value.get("oid"), value.get("size")
        if (
            not isinstance(path, str)
            or value.get("algo", "sha256") != "sha256"
            or not isinstance(oid, str)
            or not SHA256_RE.match(oid)
            or not (size is None or is_file_size(size))
        ):
            raise BadRequest(
                "an 'lfsFile' operation needs 'path', 'algo': 'sha256', 'oid' (64 lowercase hex) and 'size'"
                f" (0 to {MAX_FILE_BYTES})",
                code="invalid_commit",
            )
        ops.add_lfs(path, oid, size)
    else:
        raise BadRequest(f"unsupported commit operation {key!r}", code="invalid_commit")
