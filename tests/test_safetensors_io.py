"""The safetensors validator: every malformed case is a SafetensorsError naming what is wrong."""

from __future__ import annotations

import contextlib
import json
import struct

import pytest
import torch
from deltazoo.compression.safetensors_io import (
    SafetensorsError,
    SafetensorsStreamValidator,
    is_index_file,
    iter_tensors,
    parse_header,
    read_header,
    validate_bytes,
    validate_index,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save


def make_file(header: dict, data: bytes, pad: bytes = b"") -> bytes:
    raw = json.dumps(header).encode() + pad
    return struct.pack("<Q", len(raw)) + raw + data


def good() -> bytes:
    return save(
        {
            "a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
            "b": torch.ones(4, dtype=torch.bfloat16),
            "empty": torch.zeros(0, dtype=torch.float16),
        },
        metadata={"format": "pt"},
    )


def test_valid_file_parses_and_iterates() -> None:
    data = good()
    header = validate_bytes(data)
    assert header.file_size == len(data)
    assert header.metadata == {"format": "pt"}
    read = dict((e.name, raw) for e, raw in iter_tensors(header, lambda o, n: data[o : o + n]))
    assert read["a"] == torch.arange(6, dtype=torch.float32).numpy().tobytes()
    assert read["empty"] == b""
    assert read_header(lambda o, n: data[o : o + n], len(data)) == header


def test_streaming_in_small_chunks_equals_whole() -> None:
    data = good()
    v = SafetensorsStreamValidator(expected_size=len(data))
    for i in range(0, len(data), 7):
        v.feed(data[i : i + 7])
    assert v.finish() == validate_bytes(data)


ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
_TWICE_HEADER = f'{{"w": {json.dumps(ENTRY)}, "w": {json.dumps(ENTRY)}}}'.encode()  # a dict cannot say it
TWICE = struct.pack("<Q", len(_TWICE_HEADER)) + _TWICE_HEADER + bytes(8)


@pytest.mark.parametrize(
    ("blob", "words"),
    [
        (struct.pack("<Q", 200 * 1024 * 1024) + b"{}", "larger than"),
        (
            make_file({"x": ENTRY, "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)),
            "overlap",
        ),
        (
            make_file({"x": ENTRY, "y": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}}, bytes(16)),
            "gap",
        ),
        (make_file({"x": ENTRY}, bytes(5)), "truncated"),
        (make_file({"x": ENTRY}, bytes(9)), "longer than"),
        (struct.pack("<Q", 5) + b"{nope", "not valid JSON"),
        (struct.pack("<Q", 2) + b"\xff\xfe", "not UTF-8"),
        (make_file({"x": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)), "unknown dtype"),
        (
            make_file({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
            "needs 12 bytes",
        ),
        (make_file({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8)), "negative"),
        (make_file({"x": {"dtype": "F32", "shape": [2]}}, bytes(8)), "lacks data_offsets"),
        (make_file({"__metadata__": {"k": 1}, "x": ENTRY}, bytes(8)), "__metadata__"),
        (make_file([1, 2], b""), "JSON object"),  # type: ignore[arg-type]
        (struct.pack("<Q", 50) + b"{}", "ends inside"),
        (b"\x01\x02", "8-byte length"),
        (make_file({"x" * 501: ENTRY}, bytes(8)), "at most 500 characters"),  # the registry's column
        (make_file({"a\x00b": ENTRY}, bytes(8)), "without NUL"),  # Postgres text cannot hold NUL
        (TWICE, "names 'w' twice"),
        # empty, yet torch could not even index them: the dimensions multiply past int64
        (
            make_file({"x": {"dtype": "F32", "shape": [2**62, 2**62, 0], "data_offsets": [0, 0]}}, b""),
            "too large",
        ),
        (make_file({"x": {"dtype": "F32", "shape": [10**19, 0], "data_offsets": [0, 0]}}, b""), "too large"),
    ],
)
def test_malformed_files_are_refused(blob: bytes, words: str) -> None:
    with pytest.raises(SafetensorsError, match=words):
        validate_bytes(blob)


def test_error_names_the_tensor() -> None:
    blob = make_file({"layers.3.w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 6]}}, bytes(6))
    with pytest.raises(SafetensorsError, match="layers.3.w"):
        validate_bytes(blob)


def test_declared_size_mismatch_detected_from_header() -> None:
    v = SafetensorsStreamValidator(expected_size=999)
    with pytest.raises(SafetensorsError, match="999"):
        v.feed(good())


def test_index_file() -> None:
    assert is_index_file("model.safetensors.index.json")
    assert not is_index_file("model.safetensors")
    index = {"metadata": {"total_size": 8}, "weight_map": {"a": "model-00001-of-00002.safetensors"}}
    assert validate_index(json.dumps(index).encode()) == index["weight_map"]
    with pytest.raises(SafetensorsError, match="weight_map"):
        validate_index(b'{"weight_map": {"a": 3}}')


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_safetensors_error(blob: bytes) -> None:
    with contextlib.suppress(SafetensorsError):
        validate_bytes(blob)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_valid_files_only_raise_safetensors_error(data: st.DataObject) -> None:
    blob = bytearray(good())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    try:
        parse_header(bytes(blob[:cut]))
        validate_bytes(bytes(blob[:cut]))
    except SafetensorsError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    )
)
def test_arbitrary_json_headers_only_raise_safetensors_error(doc: object) -> None:
    raw = json.dumps(doc).encode()
    with contextlib.suppress(SafetensorsError):
        validate_bytes(struct.pack("<Q", len(raw)) + raw)
