"""A tensor rebuilt from its chain of stored steps, written once for the server and the SDK.

A stored tensor is a chain: a ``plain`` step at the bottom, then steps coded against the step below
(``delta``, ``delta-rows``). A step is one blob, or element-range chunks each coded alone (``plain``) or
against the same elements of the step below (``delta``). Decoding walks the chain upwards, each step
checked against the sha256 of its raw bytes. Where the blobs come from is the caller's: the server reads
its object store, the SDK asks ``GET /v1/blobs/{sha256}`` (``fetch``), and each may start above the
bottom with raw bytes it already holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from deltazoo.compression.codecs import CodecError, decode_tensor
from deltazoo.compression.dtypes import dtype_info

FetchBlob = Callable[[str], bytes]  # a blob's sha256 -> its stored (encoded) bytes


@dataclass(frozen=True)
class Chunk:
    """Elements ``[begin, end)`` of a chunked step, coded alone (``plain``) or against the same
    elements of the step before (``delta``)."""

    begin: int
    end: int
    encoding: str  # plain | delta
    blob: str
    sha256: str  # of the chunk's raw bytes


@dataclass(frozen=True)
class Step:
    encoding: str  # plain | delta | delta-rows
    blob: str | None  # None when the step is chunked (or when its raw bytes are already held)
    dtype: str
    shape: tuple[int, ...]
    sha256: str  # of the raw bytes this step yields
    chunks: tuple[Chunk, ...] = ()


def decode_chunk(
    fetch: FetchBlob,
    step: Step,
    chunk: Chunk,
    parent: Step | None,
    parent_part: bytes | memoryview | None,
    *,
    check: bool = True,
) -> bytes:
    """The raw bytes of one chunk (``parent_part``: the parent step's raw bytes of the same elements,
    needed for a ``delta`` chunk), checked against the chunk's sha256 unless ``check`` is false (the
    caller checks what is built on them: a parent chunk under a checked child, a file hashed whole)."""
    n = [chunk.end - chunk.begin]
    payload = fetch(chunk.blob)
    if chunk.encoding == "plain":
        raw = decode_tensor("plain", payload, step.dtype, n)
    else:
        if parent is None or parent_part is None:
            raise CodecError(f"a {chunk.encoding} chunk of tensor {step.sha256} has no parent")
        raw = decode_tensor(chunk.encoding, payload, step.dtype, n, parent_part, parent.dtype, n)
    if check and hashlib.sha256(raw).hexdigest() != chunk.sha256:
        raise CodecError(f"a chunk of tensor {step.sha256} does not match its recorded sha256")
    return raw


def _check_coverage(step: Step) -> None:
    """A chunked step's chunks must tile its elements in order: then its checked chunks are the step."""
    numel = 1
    for d in step.shape:
        numel *= int(d)
    position = 0
    for chunk in step.chunks:
        if chunk.begin != position or chunk.end <= chunk.begin:
            break
        position = chunk.end
    else:
        if position == numel:
            return
    raise CodecError(f"the chunks of tensor {step.sha256} do not cover its {numel} elements in order")


def decode_step(
    fetch: FetchBlob, step: Step, parent: Step | None, parent_raw: bytes | None, *, check: bool = True
) -> bytes:
    """One step's raw bytes given the whole parent step's (``None`` for a ``plain`` step); the step is
    not checked as a whole, its chunks are (unless ``check`` is false)."""
    if step.chunks:
        _check_coverage(step)
        pitem = dtype_info(parent.dtype).itemsize if parent else 0
        view = memoryview(parent_raw) if parent_raw is not None else None
        parts = []
        for chunk in step.chunks:
            part = view[chunk.begin * pitem : chunk.end * pitem] if view is not None else None
            parts.append(
                decode_chunk(
                    fetch, step, chunk, parent, part if chunk.encoding != "plain" else None, check=check
                )
            )
        return parts[0] if len(parts) == 1 else b"".join(parts)
    if step.blob is None:
        raise CodecError(f"tensor {step.sha256} ({step.encoding}) has no blob")
    if step.encoding != "plain" and (parent is None or parent_raw is None):
        raise CodecError(f"tensor {step.sha256} is coded {step.encoding} without a parent")
    return decode_tensor(
        step.encoding,
        fetch(step.blob),
        step.dtype,
        list(step.shape),
        parent_raw=parent_raw if parent else None,
        parent_dtype=parent.dtype if parent else None,
        parent_shape=list(parent.shape) if parent else None,
    )


def decode_chain(
    fetch: FetchBlob,
    steps: Sequence[Step],
    *,
    start: int = 0,
    raw: bytes | None = None,
    verify: bool = True,
    verify_below: bool = True,
    keep: Callable[[str, bytes], None] | None = None,
) -> bytes:
    """The raw bytes of ``steps[-1]``: ``steps[start:]`` decoded in turn, each against the one before.

    ``raw`` is the raw bytes of ``steps[start - 1]`` when ``start`` > 0 (held already: a cache, a local
    file). With ``verify`` each decoded step is checked against its sha256 (``CodecError`` when it is
    wrong) and handed to ``keep`` (sha256, raw bytes) below the top, for a cache of checked bytes.
    ``verify_below=False`` checks only the top step: its sha256 proves the bytes returned, whatever
    the steps below decoded to (nothing below the top is then kept).
    """
    if start == 0:
        raw = None
    elif raw is None:
        raise ValueError("decode_chain: start > 0 needs the raw bytes of the step below it")
    top = len(steps) - 1
    for i in range(start, len(steps)):
        step = steps[i]
        check = verify and (verify_below or i == top)
        # a chunked step's chunks are checked one by one instead of the step as a whole
        raw = decode_step(fetch, step, steps[i - 1] if i > 0 else None, raw, check=check)
        if check and not step.chunks and hashlib.sha256(raw).hexdigest() != step.sha256:
            raise CodecError(f"decoded tensor does not match its recorded sha256 {step.sha256}")
        if check and keep is not None and i < top:
            keep(step.sha256, raw)
    if raw is None:
        raise ValueError("decode_chain: no step to decode")
    return raw
