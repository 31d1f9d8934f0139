"""``services.encode_pipeline`` on its own, without a database: what its lanes and its loop do."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from deltazoo.compression.codecs import decode_tensor
from deltazoo.compression.safetensors_io import TensorEntry
from deltazoo.services.encode_pipeline import FilePipeline, Slot, hash_in_chunks, update_both

CHUNK = 1 << 16  # bytes: a 96 KiB tensor is coded in two chunks


class Blobs:
    """A sink that keeps what the lanes write (the pipeline's only use of the store here: no parent)."""

    def __init__(self) -> None:
        self.written: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def put_bytes(self, key: str, data: bytes, cold: bool = False) -> None:
        with self.lock:
            self.written[key] = bytes(data)


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 3 * 65536 + 5])
def test_update_both_gives_the_digests_of_two_whole_passes(size: int) -> None:
    data = np.random.default_rng(size).bytes(size)
    first, second = hashlib.sha256(b"before"), hashlib.sha256()
    update_both(first, second, data)
    assert first.hexdigest() == hashlib.sha256(b"before" + data).hexdigest()
    assert second.hexdigest() == hashlib.sha256(data).hexdigest()


def test_hash_in_chunks_hashes_the_tensor_and_each_chunk() -> None:
    raw = np.random.default_rng(1).bytes(5 * CHUNK + 6)  # bf16: an odd element count per chunk is fine
    entry = TensorEntry("w", "BF16", (len(raw) // 2,), 0, len(raw))
    digest = hash_in_chunks(lambda at, n: raw[at : at + n], 0, entry, CHUNK, keep=True)
    assert digest.sha256 == hashlib.sha256(raw).hexdigest()
    assert b"".join(p.raw for p in digest.pieces) == raw
    for piece in digest.pieces:
        assert piece.sha256 == hashlib.sha256(raw[piece.begin * 2 : piece.end * 2]).hexdigest()


def test_the_loop_waits_while_a_later_digest_is_hashed(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the first tensor hashed and the second still reading, the caller's loop blocks until that
    read is done: it used to return without waiting and spin on the GIL (thousands of passes while one
    read took a fraction of a second)."""
    rng = np.random.default_rng(2)
    tensors = [rng.bytes(3 * CHUNK // 2) for _ in range(4)]  # each chunked: hashed by a lane
    data = b"".join(tensors)
    entries = [
        TensorEntry(f"t{i}", "BF16", (len(t) // 2,), i * len(t), (i + 1) * len(t))
        for i, t in enumerate(tensors)
    ]
    slow = threading.Event()

    def read_at(at: int, n: int) -> bytes:
        if entries[1].begin <= at < entries[1].end:
            slow.wait(0.3)  # the second tensor reads slowly (a cold page, a busy disk)
        return data[at : at + n]

    passes = 0
    wait_for_progress = FilePipeline._wait_for_progress

    def counted(self: FilePipeline, slots: Any) -> None:
        nonlocal passes
        passes += 1
        wait_for_progress(self, slots)

    monkeypatch.setattr(FilePipeline, "_wait_for_progress", counted)
    recorded: list[Slot] = []
    sink = Blobs()
    with ThreadPoolExecutor(2) as pool:
        pipeline = FilePipeline(pool, 2, sink, "f.safetensors", read_at, 0, CHUNK, sink=sink)  # type: ignore[arg-type]
        pipeline.run(entries, lambda batch: None, recorded.append)
    assert [s.entry.name for s in recorded] == ["t0", "t1", "t2", "t3"]
    assert passes < 50, f"{passes} passes of the loop for 4 tensors"
    for slot, raw in zip(recorded, tensors, strict=True):
        assert slot.sha256 == hashlib.sha256(raw).hexdigest()
        chunks = slot.chunks()
        decoded = b"".join(
            decode_tensor("plain", sink.written[f"blobs/{c.blob[:2]}/{c.blob}"], "BF16", [c.end - c.begin])
            for c in chunks
        )
        assert decoded == raw
