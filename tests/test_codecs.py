"""Exact codecs: bit-exact round trips for every dtype, golden bytes, format 4, clear errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from deltazoo.compression.codecs import CodecError, decode_tensor, encode_tensor
from deltazoo.compression.dtypes import DTYPES
from hypothesis import given, settings
from hypothesis import strategies as st

TORCH = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
FLOATS = list(TORCH)
INTS = ["I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"]


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def roundtrip(raw: bytes, dtype: str, shape, parent=None, pdtype=None, pshape=None) -> str:
    enc = encode_tensor(raw, dtype, shape, parent, pdtype, pshape)
    out = decode_tensor(enc.encoding, enc.payload, dtype, shape, parent, pdtype, pshape)
    assert sha(out) == sha(raw)
    return enc.encoding


def random_bits(dtype: str, n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, n * DTYPES[dtype].itemsize, dtype=np.uint8).tobytes()


def float_pair(dtype: str, n: int, seed: int) -> tuple[bytes, bytes]:
    """A weight-like parent and a slightly changed child, with special values sprinkled in."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g, dtype=torch.float64) * 0.05
    child = base + torch.randn(n, generator=g, dtype=torch.float64) * 1e-3
    specials = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-40, -3e-39, 65504.0])
    child[: specials.numel()] = specials.double()
    return child.to(TORCH[dtype]).view(torch.uint8).numpy().tobytes(), base.to(TORCH[dtype]).view(
        torch.uint8
    ).numpy().tobytes()


@pytest.mark.parametrize("dtype", FLOATS)
def test_float_round_trips_plain_delta_and_rows(dtype: str) -> None:
    child, parent = float_pair(dtype, 3 * 1000, seed=1)
    assert roundtrip(child, dtype, [3, 1000]) == "plain"
    assert roundtrip(child, dtype, [3, 1000], parent, dtype, [3, 1000]) == "delta"
    grown = parent[: 2 * 1000 * DTYPES[dtype].itemsize]
    assert roundtrip(child, dtype, [3, 1000], grown, dtype, [2, 1000]) == "delta-rows"


@pytest.mark.parametrize("dtype", FLOATS + INTS)
def test_random_bit_patterns_round_trip(dtype: str) -> None:
    """Every bit pattern (NaN payloads, subnormals, -0.0, inf) survives, also against a random parent."""
    child, parent = random_bits(dtype, 5000, 2), random_bits(dtype, 5000, 3)
    assert roundtrip(child, dtype, [5000]) == "plain"
    assert roundtrip(child, dtype, [5000], parent, dtype, [5000]) == "delta"


def test_nan_payloads_and_signed_zero_bf16() -> None:
    bits = np.array([0x7FC0, 0x7FC1, 0xFFFF, 0x7F81, 0x8000, 0x0000, 0x0001, 0x807F, 0x7F80, 0xFF80], "<u2")
    parent = bits[::-1].copy()
    assert roundtrip(bits.tobytes(), "BF16", [10], parent.tobytes(), "BF16", [10]) == "delta"


def test_delta_beats_plain_on_a_fine_tune() -> None:
    child, parent = float_pair("BF16", 64 * 1024, seed=4)
    plain = encode_tensor(child, "BF16", [64, 1024])
    delta = encode_tensor(child, "BF16", [64, 1024], parent, "BF16", [64, 1024])
    assert len(delta.payload) < 0.8 * len(plain.payload) < 0.8 * len(child)


def test_parent_of_another_dtype_is_cast_round_to_nearest_even() -> None:
    g = torch.Generator().manual_seed(5)
    base32 = torch.randn(4096, generator=g) * 0.02
    child = (base32 + torch.randn(4096, generator=g) * 1e-4).to(torch.bfloat16)
    raw, parent = child.view(torch.uint8).numpy().tobytes(), base32.numpy().tobytes()
    enc = encode_tensor(raw, "BF16", [4096], parent, "F32", [4096])
    assert enc.encoding == "delta"
    assert decode_tensor("delta", enc.payload, "BF16", [4096], parent, "F32", [4096]) == raw
    with pytest.raises(CodecError, match="coded against a F32 parent but a BF16 parent"):
        decode_tensor("delta", enc.payload, "BF16", [4096], raw, "BF16", [4096])


def test_int_parent_of_another_dtype_falls_back_to_plain() -> None:
    raw = np.arange(100, dtype="<i4").tobytes()
    assert roundtrip(raw, "I32", [100], np.arange(100, dtype="<i8").tobytes(), "I64", [100]) == "plain"


def test_unrelated_shapes_fall_back_to_plain() -> None:
    child, parent = float_pair("F32", 600, seed=6)
    assert roundtrip(child, "F32", [20, 30], parent, "F32", [30, 20]) == "plain"
    assert roundtrip(child[:1200], "F32", [10, 30], parent, "F32", [20, 30]) == "plain"  # rows shrank


def test_many_lane_tensor_round_trips() -> None:
    n = 64 * 4096 + 12345  # 64 interleaved rANS lanes, a partial last step
    child, parent = float_pair("BF16", n, seed=7)
    assert roundtrip(child, "BF16", [n], parent, "BF16", [n]) == "delta"


@pytest.mark.parametrize("shape", [[0], [0, 7], [], [1]])
def test_empty_and_scalar_tensors(shape: list[int]) -> None:
    n = int(np.prod(shape))
    raw = random_bits("F16", n, 8)
    assert roundtrip(raw, "F16", shape) == "plain"
    assert roundtrip(raw, "F16", shape, random_bits("F16", n, 9), "F16", shape) == "delta"


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from(FLOATS + INTS),
    rows=st.integers(0, 40),
    cols=st.integers(1, 9),
    grow=st.integers(0, 5),
    seed=st.integers(0, 2**32 - 1),
    flip=st.floats(0.0, 1.0),
)
def test_property_delta_and_rows_round_trip(dtype, rows, cols, grow, seed, flip) -> None:
    size = DTYPES[dtype].itemsize
    rng = np.random.default_rng(seed)
    parent = rng.integers(0, 256, rows * cols * size, dtype=np.uint8)
    tail = rng.integers(0, 256, grow * cols * size, dtype=np.uint8)
    child = parent.copy()
    mask = rng.random(child.size) < flip
    child[mask] = rng.integers(0, 256, int(mask.sum()), dtype=np.uint8)
    raw = np.concatenate([child, tail]).tobytes()
    shape = [rows + grow, cols]
    roundtrip(raw, dtype, shape, parent.tobytes(), dtype, [rows, cols])
    roundtrip(raw, dtype, shape)


# Golden bytes: a fixed F32 input and its encoded form. decode must read these forever; the encode
# comparison (format 4, written now) flags any change of the written format so that it is deliberate.
CHILD = bytes.fromhex("0000803f000020c000000000000050406f12833a0000e0c0")
PARENT = bytes.fromhex("0000803f000000c00000003f000040406f12833a0000c0c0")
GOLDEN_V4 = {
    "plain": (
        [6],
        None,
        None,
        "445a54347001ff000600000000000000000004000100000000008200aa02000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "00000000000000000000000000000000000000000000aa02000000000000000000000000000000000000aa025805aa02"
        "5a46e52d0000000090000000000000000000000000a00000000000506f12030000e05708dc2f",
    ),
    "delta": (
        [6],
        PARENT,
        [6],
        "445a543464010100060000000000000000000400050075000000010000107e00e700010000107f000000010000108000"
        "980009000008000000000000000000000000000000088100a00001000010000804000000000053000000000000000000"
        "000000380000000000f3ae6b12",
    ),
    "delta-rows": (
        [3, 2],
        PARENT[:16],
        [2, 2],
        "445a543472010100060000000000000004000000000000000000040003007e00e700010000107f000000010000108000"
        "9800090000080000000000000000000000000000000800080400000000004000000000000000000000000038000067df"
        "3402000004000100000075000d0000080000000000000000000000000000000000000000000000080010040000000000"
        "30000000000000006f12030000e0cf85b92a",
    ),
}


@pytest.mark.parametrize("encoding", list(GOLDEN_V4))
def test_golden_format_4(encoding: str) -> None:
    shape, parent, pshape, hexed = GOLDEN_V4[encoding]
    pdtype = "F32" if parent is not None else None
    assert decode_tensor(encoding, bytes.fromhex(hexed), "F32", shape, parent, pdtype, pshape) == CHILD
    enc = encode_tensor(CHILD, "F32", shape, parent, pdtype, pshape, version=5)  # 6 writes F32 as format 6
    assert (enc.encoding, enc.payload.hex()) == (encoding, hexed)


@pytest.mark.parametrize("magic", [b"DZT1", b"DZT2", b"DZT3"])
def test_formats_no_deployment_holds_are_refused_by_name(magic: bytes) -> None:
    """Formats 1-3 were written only before format 4 (2026-11-22); their decoders are gone."""
    with pytest.raises(CodecError, match=f"format {magic[3] - 48} .* no longer read"):
        decode_tensor("plain", magic + bytes(40), "F32", [6])


def test_unsupported_dtype_is_named() -> None:
    with pytest.raises(CodecError, match="unsupported tensor dtype 'F4'"):
        encode_tensor(b"\0", "F4", [1])
    with pytest.raises(CodecError, match="unsupported dtype 'C64'"):
        decode_tensor("plain", GOLDEN_V4["plain"][3], "C64", [6])


def test_wrong_byte_length_is_named() -> None:
    with pytest.raises(CodecError, match="tensor has 5 bytes but shape \\[3\\] of F16 needs 6"):
        encode_tensor(b"\0" * 5, "F16", [3])
    with pytest.raises(CodecError, match="parent tensor has 4 bytes but shape \\[3\\] of F16 needs 6"):
        encode_tensor(b"\0" * 6, "F16", [3], b"\0" * 4, "F16", [3])


@pytest.mark.parametrize("golden", [GOLDEN_V4])
def test_decode_checks_what_it_is_asked(golden: dict) -> None:
    payload = bytes.fromhex(golden["delta"][3])
    with pytest.raises(CodecError, match="needs its parent tensor"):
        decode_tensor("delta", payload, "F32", [6])
    with pytest.raises(CodecError, match="payload is 'delta' but was asked to decode as 'plain'"):
        decode_tensor("plain", payload, "F32", [6], PARENT, "F32", [6])
    with pytest.raises(CodecError, match="holds a F32 tensor but I32 was asked"):
        decode_tensor("delta", payload, "I32", [6], PARENT, "I32", [6])
    with pytest.raises(CodecError, match="holds 6 elements but the shape asks for 4"):
        decode_tensor("delta", payload, "F32", [4], PARENT[:16], "F32", [4])


@pytest.mark.parametrize("golden", [GOLDEN_V4])
def test_corrupt_payloads_raise_codec_error(golden: dict) -> None:
    payload = bytearray(bytes.fromhex(golden["delta"][3]))
    args = ("F32", [6], PARENT, "F32", [6])
    with pytest.raises(CodecError, match="not a deltazoo tensor payload"):
        decode_tensor("delta", b"XXXX" + bytes(payload[4:]), *args)
    with pytest.raises(CodecError, match="shorter than the"):
        decode_tensor("delta", bytes(payload[:10]), *args)
    with pytest.raises(CodecError, match="truncated"):
        decode_tensor("delta", bytes(payload[:-5]), *args)
    with pytest.raises(CodecError, match="unexpected bytes after the last frame"):
        decode_tensor("delta", bytes(payload) + b"\0", *args)
    flipped = bytearray(payload)
    flipped[-6] ^= 0x40  # the stream's crc32 notices
    with pytest.raises(CodecError, match="corrupt payload"):
        decode_tensor("delta", bytes(flipped), *args)
    bad_id = bytearray(payload)
    bad_id[4] = ord("z")
    with pytest.raises(CodecError, match="unknown codec id"):
        decode_tensor("delta", bytes(bad_id), *args)


def test_a_tensor_whose_stream_outweighs_it_is_stored_as_it_is() -> None:
    """``smaller_as_is``: a scalar's coded stream (tables, segment sizes, crc) is hundreds of bytes; the
    service stores its 4 bytes behind an 8-byte ``DZTR`` header instead, which needs no parent to read."""
    from deltazoo.compression.codecs import smaller_as_is

    raw = np.array([0.025], "<f4").tobytes()
    parent = np.array([0.02], "<f4").tobytes()
    coded = encode_tensor(raw, "F32", [1], parent, "F32", [1])
    assert coded.encoding == "delta" and len(coded.payload) > 12
    stored = smaller_as_is(coded, raw, "F32")
    assert (stored.encoding, stored.payload.hex()) == ("plain", "445a545201000000cdcccc3c")
    assert decode_tensor("plain", stored.payload, "F32", [1]) == raw
    big = np.random.default_rng(0).standard_normal(4096).astype("<f4").tobytes()
    kept = encode_tensor(big, "F32", [4096])
    assert smaller_as_is(kept, big, "F32") is kept  # coding pays: the coded payload stays
    for payload, encoding, dtype, words in (
        (stored.payload, "delta", "F32", "is plain"),
        (stored.payload, "plain", "I32", "I32 was asked"),
        (stored.payload[:-1], "plain", "F32", "holds 3 bytes"),
        (stored.payload[:6], "plain", "F32", "truncated"),
    ):
        with pytest.raises(CodecError, match=words):
            decode_tensor(encoding, payload, dtype, [1])
