"""registry.staged_reads: the encode's ranged reads of a staged object give exactly its bytes, read
ahead or not, from any number of threads, around the page cache or through it."""

from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from deltazoo.registry import staged_reads
from deltazoo.registry.objectstore import LocalObjectStore, ObjectNotFound
from deltazoo.registry.staged_reads import StagedReads


@pytest.mark.parametrize("direct", [True, False])
def test_reads_in_file_order_from_several_threads_give_the_bytes(
    tmp_path: Path, direct: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(staged_reads, "AHEAD_MIN", 10_000)
    store = LocalObjectStore(tmp_path / "objects", direct_io=direct)
    data = os.urandom(3_000_000 + 17)
    store.put_bytes("staging/x", data)
    rng = random.Random(0)
    ranges, at = [], 0
    while at < len(data):  # tensors of every size, some of them in chunks, back to back
        length = min(len(data) - at, rng.choice([1, 4095, 4096, 10_000, 20_000, 65_537]))
        ranges.append((at, length))
        at += length
    ranges += [(rng.randrange(len(data)), rng.randrange(1, 50_000)) for _ in range(50)]  # and anywhere
    with StagedReads(store, "staging/x") as reads, ThreadPoolExecutor(3) as lanes:
        got = list(lanes.map(lambda r: reads.read_at(*r), ranges))
    assert got == [data[o : o + n] for o, n in ranges]


def test_a_missing_object_is_not_found(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects", direct_io=True)
    with StagedReads(store, "staging/missing") as reads, pytest.raises(ObjectNotFound):
        reads.read_at(0, 10)
