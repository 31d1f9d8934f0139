"""How a split encode cuts a weight file into tensor ranges (services/encode_split.py): every worker
must cut a file the same way, every tensor in exactly one range, and a range part's job target must
name its range; parts are sent largest first, and the finishing run skips only files every part of
which succeeded (the workers' end-to-end behaviour is tests/test_encode_split.py)."""

from __future__ import annotations

import pytest
from deltazoo.compression.safetensors_io import TensorEntry
from deltazoo.registry.models import Job
from deltazoo.services.encode_split import encoded_files, largest_first, range_of, range_target, tensor_range


def entries(sizes: list[int]) -> list[TensorEntry]:
    out, at = [], 0
    for i, n in enumerate(sizes):
        out.append(TensorEntry(f"t{i}", "U8", (n,), at, at + n))
        at += n
    return out


@pytest.mark.parametrize(
    "sizes",
    [[300, 10, 10, 500, 180], [4096] * 600 + [3 << 20], [1 << 20], [0, 0, 0], [], [5, 0, 7, 0]],
)
@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
def test_the_ranges_of_a_file_hold_every_tensor_once_in_file_order(sizes: list[int], count: int) -> None:
    es = entries(sizes)
    ranges = [tensor_range(es, i, count) for i in range(count)]
    assert [e for r in ranges for e in r] == es


def test_ranges_are_about_equal_in_bytes_and_cut_at_tensor_boundaries() -> None:
    es = entries([1000] * 100)
    assert [len(tensor_range(es, i, 4)) for i in range(4)] == [25, 25, 25, 25]
    # a tensor bigger than a span is never cut: it goes where its middle byte falls, leaving a range empty
    big = entries([10, 1000, 10])
    assert [[e.name for e in tensor_range(big, i, 3)] for i in range(3)] == [["t0"], ["t1"], ["t2"]]
    assert [[e.name for e in tensor_range(big, i, 4)] for i in range(4)] == [["t0"], [], ["t1"], ["t2"]]


def test_a_range_part_names_its_range_and_a_whole_file_part_names_none() -> None:
    whole = "acme/ft@2:model-00001-of-00004.safetensors"
    assert range_target(whole, 0, 1) == whole and range_of(whole) is None
    named = range_target("acme/ft@2:model.safetensors", 2, 5)
    assert named == "acme/ft@2:model.safetensors [3/5]"
    assert range_of(named) == (2, 5)
    with pytest.raises(ValueError, match="names no range"):
        range_of("acme/ft@2:model.safetensors [6/5]")


def test_parts_are_sent_largest_first_and_equal_sizes_in_id_order() -> None:
    # a 300 MiB file in 3 ranges of 100, a 64 MiB file, a 128 MiB file: the small file goes last
    assert largest_first({7: 100, 8: 100, 9: 100, 10: 64, 11: 128}) == [11, 7, 8, 9, 10]
    assert largest_first({}) == []


def test_only_files_whose_every_part_succeeded_count_as_encoded() -> None:
    parts = [
        Job(kind="encode_file", target_id=1, status="succeeded"),
        Job(kind="encode_file", target_id=1, status="succeeded"),
        Job(kind="encode_file", target_id=2, status="succeeded"),
        Job(kind="encode_file", target_id=2, status="running"),
        Job(kind="encode_file", target_id=3, status="failed"),
    ]
    assert encoded_files(parts) == {1}
    assert encoded_files([]) == set()
