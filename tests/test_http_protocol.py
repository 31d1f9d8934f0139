"""The API's uvicorn protocol (``api/http_protocol.py``): request bodies reach the app whole and in
order, without uvicorn's two copies of each piece."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from deltazoo.api.http_protocol import BodyPieces, body_pieces_protocol

from tests.services import free_port


def test_one_piece_is_handed_over_as_it_is_and_several_are_joined() -> None:
    piece = bytes(range(256)) * 1024
    pending = BodyPieces()
    pending += piece
    assert len(pending) == len(piece)
    assert bytes(pending) is piece  # no copy
    pending += b"tail"
    assert len(pending) == len(piece) + 4
    assert bytes(pending) == piece + b"tail"
    assert bytes(BodyPieces()) == b""


async def _digest_app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
    """Answers with the sha256, length and number of body messages of the request."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/late":  # pieces arrive while the app is busy: several wait for one receive
        await asyncio.sleep(0.5)
    sha, size, messages, more = hashlib.sha256(), 0, 0, True
    while more:
        message = await receive()
        assert message["type"] == "http.request", message
        assert type(message["body"]) is bytes
        sha.update(message["body"])
        size += len(message["body"])
        messages += 1
        more = message.get("more_body", False)
    body = f"{sha.hexdigest()} {size} {messages}".encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


@pytest.fixture()
def server_url() -> Iterator[str]:
    protocol = body_pieces_protocol()
    assert protocol != "auto", "httptools is installed with the server extra: the protocol must be used"
    port = free_port()
    config = uvicorn.Config(_digest_app, host="127.0.0.1", port=port, http=protocol, log_level="warning")  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def test_bodies_arrive_whole_over_one_connection(server_url: str) -> None:
    """Large and small bodies, sent in uneven pieces, back to back on one kept-alive connection (each
    request starts with uvicorn's fresh ``bytearray``, replaced again by the protocol)."""
    payload = hashlib.sha256(b"seed").digest() * (300_000 // 32)  # ~9.4 MB: many socket reads

    def pieces(data: bytes) -> Iterator[bytes]:
        step = 1
        at = 0
        while at < len(data):
            yield data[at : at + step]
            at += step
            step = step * 7 % 1_048_573 + 1  # 1 byte to ~1 MB

    with httpx.Client(base_url=server_url, timeout=60) as client:
        for data in (payload, b"", b"x", payload[:70_000]):
            answer = client.post("/", content=pieces(data), headers={"Content-Length": str(len(data))})
            answer.raise_for_status()
            digest, size, messages = answer.text.split()
            assert (digest, int(size)) == (hashlib.sha256(data).hexdigest(), len(data))
            assert int(messages) >= 1


def test_pieces_that_arrive_before_the_app_asks_are_handed_over_together(server_url: str) -> None:
    pieces = [bytes([n]) * 1000 for n in range(20)]

    def slowly() -> Iterator[bytes]:
        for piece in pieces:
            yield piece
            time.sleep(0.01)  # one socket read each

    with httpx.Client(base_url=server_url, timeout=60) as client:
        answer = client.post("/late", content=slowly(), headers={"Content-Length": "20000"})
    answer.raise_for_status()
    digest, size, messages = answer.text.split()
    assert (digest, int(size)) == (hashlib.sha256(b"".join(pieces)).hexdigest(), 20000)
    assert int(messages) < len(pieces)  # joined: the app asked fewer times than pieces arrived
