"""A request body handed to a synchronous sink off the event loop, in batches, receiving ahead.

An upload's sink hashes, validates and writes every byte (``services.transfer.UploadSink``);
run on the event loop that work would serialise every upload of the server on one thread. Here each
batch of about ``FEED_BATCH`` bytes goes to a worker thread (hashlib and file writes release the GIL)
while the loop receives the next one: at most two batches per upload are held in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

FEED_BATCH = 4 << 20


def _feed_all(feed: Callable[[bytes], None], batch: list[bytes]) -> None:
    for chunk in batch:
        feed(chunk)


async def feed_body(
    request: Request,
    feed: Callable[[bytes], None],
    *,
    limit: int | None = None,
    too_much: Callable[[], Exception] | None = None,
) -> None:
    """Pass every chunk of the body to ``feed`` in order; ``too_much()`` is raised once more than
    ``limit`` bytes arrive. When this raises, everything already handed to ``feed`` has finished."""
    pending: asyncio.Future[None] | None = None
    batch: list[bytes] = []
    size = seen = 0
    try:
        async for chunk in request.stream():
            if not chunk:
                continue
            seen += len(chunk)
            if limit is not None and seen > limit:
                assert too_much is not None
                raise too_much()
            batch.append(chunk)
            size += len(chunk)
            if size >= FEED_BATCH:
                if pending is not None:
                    previous, pending = pending, None
                    await previous
                pending = asyncio.ensure_future(run_in_threadpool(_feed_all, feed, batch))
                batch, size = [], 0
        if pending is not None:
            previous, pending = pending, None
            await previous
        if batch:
            await run_in_threadpool(_feed_all, feed, batch)
    finally:
        if pending is not None:  # the sink is settled before the caller keeps or discards it
            with contextlib.suppress(Exception):
                await pending
