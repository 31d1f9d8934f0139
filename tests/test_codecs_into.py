"""``decode_tensor_into``: a tensor decoded into a caller's buffer (a slice of a whole file, say) holds
exactly ``decode_tensor``'s bytes, for every payload kind; the format-5 and format-6 streams are written
by their kernels straight into it (no bytes object in between), and never a byte outside it."""

from __future__ import annotations

import numpy as np
import pytest
from deltazoo.compression import exact16_delta, exact16_plain, exact32
from deltazoo.compression.codecs import CodecError, decode_tensor, decode_tensor_into, encode_tensor

GUARD = 32
FILL = 0xAB


def weights(dtype: str, n: int, seed: int) -> tuple[bytes, bytes]:
    """A parent and a fine-tune of it (every weight changed by ~2 %), as ``dtype`` bytes."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 0.02, n).astype(np.float32)
    ft = base * (1 + 0.02 * rng.normal(size=n)).astype(np.float32)

    def raw(a: np.ndarray) -> bytes:
        if dtype == "BF16":
            return (a.view(np.uint32) >> 16).astype("<u2").tobytes()
        return a.astype({"F32": "<f4", "F16": "<f2", "F64": "<f8"}[dtype]).tobytes()

    return raw(base), raw(ft)


def decode_guarded(encoded, dtype: str, shape: list[int], parent: bytes | None, shift: int) -> bytes:
    """Decoded into the middle of a filled buffer, ``shift`` bytes off its alignment; the fill around the
    tensor's bytes is checked untouched."""
    size = len(
        decode_tensor(encoded.encoding, encoded.payload, dtype, shape, *parent_args(parent, shape, dtype))
    )
    buf = bytearray([FILL]) * (size + 2 * GUARD)
    view = memoryview(buf)[GUARD + shift : GUARD + shift + size]
    decode_tensor_into(
        view, encoded.encoding, encoded.payload, dtype, shape, *parent_args(parent, shape, dtype)
    )
    assert buf[: GUARD + shift] == bytearray([FILL]) * (GUARD + shift)
    assert buf[GUARD + shift + size :] == bytearray([FILL]) * (GUARD - shift)
    return bytes(view)


def parent_args(parent: bytes | None, shape: list[int], dtype: str) -> tuple:
    return (parent, dtype, shape) if parent is not None else (None, None, None)


@pytest.mark.parametrize("dtype", ["F32", "BF16", "F16"])
@pytest.mark.parametrize("n", [1, 7, 4097, 70001])
@pytest.mark.parametrize("with_parent", [False, True])
def test_into_equals_decode_tensor(dtype: str, n: int, with_parent: bool) -> None:
    parent, child = weights(dtype, n, seed=n)
    parent = parent if with_parent else None
    encoded = encode_tensor(child, dtype, [n], *parent_args(parent, [n], dtype))
    for shift in (0, 1, 4):  # 1: off the elements' alignment, decoded apart and copied
        assert decode_guarded(encoded, dtype, [n], parent, shift) == child


def test_other_payloads_are_copied_in() -> None:
    """delta-rows (two streams), format 4 (F64), a narrowed payload (bf16 values saved as F32) and a
    tensor of a cast parent all land in ``out`` exactly."""
    parent, child = weights("F32", 6 * 100, seed=1)
    rows = encode_tensor(child, "F32", [6, 100], parent[: 4 * 400], "F32", [4, 100])
    assert rows.encoding == "delta-rows"
    buf = bytearray(len(child))
    decode_tensor_into(buf, rows.encoding, rows.payload, "F32", [6, 100], parent[: 4 * 400], "F32", [4, 100])
    assert bytes(buf) == child
    p64, c64 = weights("F64", 999, seed=2)
    for parent64 in (None, p64):
        enc = encode_tensor(c64, "F64", [999], *parent_args(parent64, [999], "F64"))
        assert decode_guarded(enc, "F64", [999], parent64, 0) == c64
    bf16_values = np.frombuffer(weights("BF16", 5000, seed=3)[1], "<u2").astype("<u4") << 16
    narrowed = encode_tensor(bf16_values.tobytes(), "F32", [5000])
    assert decode_guarded(narrowed, "F32", [5000], None, 0) == bf16_values.tobytes()
    pb, cf = weights("BF16", 3000, seed=4)[0], weights("F32", 3000, seed=4)[1]
    cast = encode_tensor(cf, "F32", [3000], pb, "BF16", [3000])
    buf = bytearray(len(cf))
    decode_tensor_into(buf, cast.encoding, cast.payload, "F32", [3000], pb, "BF16", [3000])
    assert bytes(buf) == cf


def test_kernels_write_into_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain and delta streams of F32, BF16 and F16 (a narrowed F16 delta included) hand back the caller's
    buffer itself, or elements viewing it: nothing decoded elsewhere and copied."""
    handed: list[str] = []
    spied = (
        (exact32, "decode_stream_bytes", 5),
        (exact16_plain, "decode", 5),
        (exact16_delta, "decode_stream", 7),
        (exact16_delta, "decode_stream_f16", 4),
    )
    for module, name, out_at in spied:
        real = getattr(module, name)

        def spy(*args, _real=real, _name=name, _at=out_at, **kwargs):
            got = _real(*args, **kwargs)
            out = kwargs.get("out", args[_at] if len(args) > _at else None)
            elements = got[0] if isinstance(got[0], np.ndarray) else None
            viewing = elements is not None and np.shares_memory(elements, np.frombuffer(out, np.uint8))
            if out is not None and (got[0] is out or viewing):
                handed.append(_name)
            return got

        monkeypatch.setattr(module, name, spy)
    cases = [("F32", False), ("F32", True), ("BF16", False), ("BF16", True), ("F16", True)]
    for dtype, with_parent in cases:
        parent, child = weights(dtype, 4096, seed=5)
        if dtype == "F16":  # values a BF16 holds: coded narrowed, decoded to F16 in one pass
            parent, child = (
                np.frombuffer(weights("BF16", 4096, seed=5)[i], "<u2").astype("<u4") << 16 for i in (0, 1)
            )
            parent, child = (a.view("<f4").astype("<f2").tobytes() for a in (parent, child))
        args = parent_args(parent if with_parent else None, [4096], dtype)
        encoded = encode_tensor(child, dtype, [4096], *args)
        buf = bytearray(len(child))
        decode_tensor_into(buf, encoded.encoding, encoded.payload, dtype, [4096], *args)
        assert bytes(buf) == child
    assert handed == [
        "decode_stream_bytes",
        "decode_stream_bytes",
        "decode",
        "decode_stream",
        "decode_stream_f16",
    ]


@pytest.mark.parametrize("dtype", ["F32", "BF16"])
def test_numpy_fallback_into(dtype: str) -> None:
    """The numpy decoders (no C kernel) fill ``out`` with the same bytes."""
    parent, child = weights(dtype, 3000, seed=6)
    n = 3000
    if dtype == "F32":
        stream = exact32.encode_stream(np.frombuffer(child, "<u4"), np.frombuffer(parent, "<u4"))
        out = memoryview(bytearray(4 * n))
        got, _ = exact32.decode_stream_bytes(
            memoryview(stream), 0, n, np.frombuffer(parent, "<u4"), "numpy", out
        )
    else:
        stream = exact16_plain.encode(np.frombuffer(child, "<u2"), dtype)
        out = memoryview(bytearray(2 * n))
        got, _ = exact16_plain.decode(memoryview(stream), 0, n, dtype, "numpy", out)
    assert got is out and bytes(out) == child


def test_bad_out_and_corrupt_payload() -> None:
    _, child = weights("F32", 1000, seed=7)
    encoded = encode_tensor(child, "F32", [1000])
    with pytest.raises(ValueError, match="needs 4000"):
        decode_tensor_into(bytearray(3999), encoded.encoding, encoded.payload, "F32", [1000])
    with pytest.raises(ValueError, match="writable"):
        decode_tensor_into(bytes(4000), encoded.encoding, encoded.payload, "F32", [1000])
    with pytest.raises(CodecError, match="unsupported dtype"):
        decode_tensor_into(bytearray(4000), encoded.encoding, encoded.payload, "Q8", [1000])
    broken = bytearray(encoded.payload)
    broken[len(broken) // 2] ^= 0x5A
    with pytest.raises(CodecError):
        decode_tensor_into(bytearray(4000), encoded.encoding, bytes(broken), "F32", [1000])
