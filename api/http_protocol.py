"""uvicorn's httptools protocol, handing a request body's pieces to the app without two more copies.

uvicorn appends each piece the parser gives (``on_body``, up to one socket read: ~256 KB) to a
``bytearray`` and hands the app ``bytes(that bytearray)``: every uploaded byte is copied twice in
Python before the app sees it, ~7 % of the API's CPU per uploaded byte (perf, 1 GiB). Here the
pending pieces are kept as they arrived; the app gets the one piece itself (no copy), or the pieces
joined once when several arrived before it asked. Flow control, limits and every other behaviour are
uvicorn's own.
"""

from __future__ import annotations

from typing import Any

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is a dependency of the server extra
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


class BodyPieces:
    """A request's body bytes not yet handed to the app, as the pieces that arrived.

    It stands in for uvicorn's ``bytearray``: ``+=`` appends a piece, ``len`` counts the bytes (for
    the flow control's high-water mark) and ``bytes()`` gives them (the one piece as it is)."""

    __slots__ = ("pieces", "size")

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.size = 0

    def __iadd__(self, piece: bytes) -> BodyPieces:
        self.pieces.append(piece)
        self.size += len(piece)
        return self

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return b"".join(self.pieces)  # one exact ``bytes`` piece: that object, not a copy


def body_pieces_protocol() -> type | str:
    """The protocol class for ``uvicorn.run(http=...)``; ``"auto"`` (uvicorn's choice) when this
    uvicorn keeps the pending body another way than in a ``bytearray``."""
    if HttpToolsProtocol is None:
        return "auto"
    return BodyPiecesHttpToolsProtocol


if HttpToolsProtocol is not None:

    class BodyPiecesHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc,valid-type]
        def on_body(self, body: bytes) -> None:
            cycle: Any = self.cycle
            pending = getattr(cycle, "body", None)
            if type(pending) is bytearray and not pending:  # emptied by the last ``receive``
                cycle.body = BodyPieces()
            super().on_body(body)
